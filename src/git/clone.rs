//! Cloning a repo and moving a checkout between refs: what `init` needs to get ComfyUI.

use super::error::{Error, Result};
use super::process;
use crate::process::{Process, ProcessError};
use std::path::Path;

/// Run `p`; a failure names `at` as git's subject: `git <at>: <why>`.
fn run(p: &mut Process, at: &Path) -> Result<()> {
    p.run().map(drop).map_err(|e| Error::Git {
        what: at.display().to_string(),
        reason: match e {
            ProcessError::Spawn { source, .. } => format!("cannot run git: {source}"),
            ProcessError::Failed { stderr, .. } => stderr,
            e @ ProcessError::TimedOut { .. } => e.to_string(),
        },
    })
}

/// `git clone repo path` (quietly), from `path`'s parent.
pub fn clone(repo: &str, path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    run(
        process(parent)
            .args(["clone", "--quiet", repo])
            .arg(path)
            .timeout(super::network_timeout()),
        path,
    )
}

/// Fetch every branch and tag of `origin` into the checkout at `path`.
pub fn fetch_origin(path: &Path) -> Result<()> {
    run(
        process(path)
            .args(["fetch", "--quiet", "--tags", "origin"])
            .timeout(super::network_timeout()),
        path,
    )
}

/// Check out `commit` (detached) in the checkout at `path`.
pub fn checkout(path: &Path, commit: &str) -> Result<()> {
    run(
        process(path).args([
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            commit,
        ]),
        path,
    )
}

/// The commit `r` (a branch, tag, commit or `HEAD`) names in the repo at `dir`, if any.
pub fn resolve(dir: &Path, r: &str) -> Option<String> {
    let out = process(dir)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{r}^{{commit}}"),
        ])
        .run()
        .ok()?;
    let s = String::from_utf8_lossy(&out).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The commit the tag or branch `r` names in the remote `repo` (`git ls-remote`): an annotated
/// tag's commit, else the tag's, else the branch's. `None` when the remote has no such ref.
pub fn ls_remote(repo: &str, r: &str) -> Result<Option<String>> {
    let out = process(Path::new("/"))
        // The peeled pattern too: a pattern alone does not list an annotated tag's commit.
        .args(["ls-remote", repo, r, &format!("{r}^{{}}")])
        .timeout(super::network_timeout())
        .run()
        .map_err(|e| Error::Git {
            what: format!("ls-remote {repo}"),
            reason: match e {
                ProcessError::Spawn { source, .. } => format!("cannot run git: {source}"),
                ProcessError::Failed { stderr, .. } => stderr,
                e @ ProcessError::TimedOut { .. } => e.to_string(),
            },
        })?;
    let text = String::from_utf8_lossy(&out);
    let refs: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, name)| (id.trim(), name.trim()))
        .collect();
    let find = |want: String| {
        refs.iter()
            .find(|(id, name)| *name == want && crate::ident::is_commit(id))
            .map(|(id, _)| id.to_string())
    };
    Ok(find(format!("refs/tags/{r}^{{}}"))
        .or_else(|| find(format!("refs/tags/{r}")))
        .or_else(|| find(format!("refs/heads/{r}"))))
}
