//! What `git` says about a checkout: its commit, origin, dirtiness and the files it would check
//! out.

use super::{process, reason};
use crate::git::error::{Error, Result};
use crate::store::{is_cache_path, CACHE_NAMES, CACHE_SUFFIXES};
use std::path::Path;

/// A git work tree as `lock` records it.
#[derive(Clone, Debug)]
pub struct GitState {
    /// HEAD's commit id.
    pub commit: String,
    /// The `origin` remote (else the first remote), credentials removed.
    pub repo: Option<String>,
    /// Uncommitted changes to tracked files (anywhere), or untracked, non-ignored files
    /// outside `excludes`.
    pub dirty: bool,
    /// Every tracked file, plus untracked, non-ignored ones outside `excludes` (relative,
    /// `/`-separated): exactly what a checkout of `commit` holds when the tree is clean. Under
    /// `excludes` it lists tracked files only.
    pub files: Vec<String>,
    /// Ignored files (not in `files`, so not locked), without caches like `__pycache__`.
    pub ignored: Vec<String>,
}

/// Run `git -C dir ARGS`; its stdout.
fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    process(dir)
        .args(args)
        .run()
        .map_err(|e| Error::bad_input(dir, reason(e, &args.join(" "), "lock a repo")))
}

fn split_z(bytes: &[u8], dir: &Path) -> Result<Vec<String>> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            String::from_utf8(s.to_vec())
                .map_err(|_| Error::bad_input(dir, "git lists a file name that is not UTF-8"))
        })
        .collect()
}

/// Pathspecs that leave `excludes` (relative paths, with everything beneath) and caches out.
fn pathspecs(excludes: &[&str]) -> Vec<String> {
    let mut v = vec![".".to_string()];
    v.extend(excludes.iter().map(|e| format!(":(exclude,literal){e}")));
    for name in CACHE_NAMES {
        v.push(format!(":(exclude,glob)**/{name}"));
        v.push(format!(":(exclude,glob)**/{name}/**"));
    }
    v.extend(
        CACHE_SUFFIXES
            .iter()
            .map(|s| format!(":(exclude,glob)**/*{s}")),
    );
    v
}

/// Whether `dir` is the top of its own git work tree (not just inside another repo).
pub fn is_repo_root(dir: &Path) -> bool {
    dir.join(".git").exists()
}

/// Inspect the repo at `dir`. The repo decides what belongs to it: tracked files count wherever
/// they are, and `excludes` (relative paths: data folders, venvs, comfystore's outputs) only
/// keep untracked and ignored files out. `None` when `dir` is not a repo root, or is one
/// without any commit.
pub fn inspect(dir: &Path, excludes: &[&str]) -> Result<Option<GitState>> {
    if !is_repo_root(dir) {
        return Ok(None);
    }
    let Ok(out) = git(dir, &["rev-parse", "--verify", "-q", "HEAD^{commit}"]) else {
        tracing::warn!(
            "{}: a git repo without commits; locking it as a plain folder",
            dir.display()
        );
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&out).trim().to_string();
    let repo = origin(dir)?;
    let everywhere = pathspecs(&[]);
    let outside = pathspecs(excludes);
    let changed = ["status", "--porcelain=v1", "-z", "--untracked-files=no"];
    let changed = git_over(dir, &changed, &everywhere)?;
    let untracked = ["ls-files", "-z", "--others", "--exclude-standard"];
    let untracked = split_z(&git_over(dir, &untracked, &outside)?, dir)?;
    let dirty = !changed.is_empty() || !untracked.is_empty();
    let mut files = split_z(
        &git_over(dir, &["ls-files", "-z", "--cached"], &everywhere)?,
        dir,
    )?;
    files.extend(untracked);
    files.sort();
    files.dedup();
    let ignored = ignored_files(dir, excludes, &outside)?;
    Ok(Some(GitState {
        commit: head,
        repo,
        dirty,
        files,
        ignored,
    }))
}

/// The `origin` remote's URL (else the first remote's), credentials removed.
fn origin(dir: &Path) -> Result<Option<String>> {
    let remotes = String::from_utf8_lossy(&git(dir, &["remote"])?).into_owned();
    let remote = remotes
        .lines()
        .find(|r| *r == "origin")
        .or_else(|| remotes.lines().next());
    let Some(r) = remote else {
        return Ok(None);
    };
    let url = git(dir, &["remote", "get-url", r])?;
    Ok(Some(crate::secret::redact_url(
        String::from_utf8_lossy(&url).trim(),
    )))
}

/// Ignored files outside `excludes`, caches left out.
fn ignored_files(dir: &Path, excludes: &[&str], specs: &[String]) -> Result<Vec<String>> {
    let args = [
        "ls-files",
        "-z",
        "--others",
        "--ignored",
        "--exclude-standard",
        "--directory",
    ];
    // `--directory` reports whole ignored folders even where a pathspec excludes them.
    Ok(split_z(&git_over(dir, &args, specs)?, dir)?
        .into_iter()
        .filter(|p| !is_cache_path(p) && !is_under(p, excludes))
        .collect())
}

/// Whether `path` is one of `excludes` or lies beneath one.
fn is_under(path: &str, excludes: &[&str]) -> bool {
    let path = path.trim_end_matches('/');
    excludes.iter().any(|e| {
        path.strip_prefix(e.trim_end_matches('/'))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// `git ARGS -- SPECS`.
fn git_over(dir: &Path, args: &[&str], specs: &[String]) -> Result<Vec<u8>> {
    let mut all = args.to_vec();
    all.push("--");
    all.extend(specs.iter().map(String::as_str));
    git(dir, &all)
}
