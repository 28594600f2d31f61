//! A source folder into the store, exactly as git would check it out.

use super::inspect::{inspect, GitState};
use crate::git::error::{IoContext, Result};
use crate::store::{AddOptions, AddReport, ObjectId, Store, CACHE_NAMES, CACHE_SUFFIXES};
use std::path::Path;

/// Store a source folder: a git work tree by what git would check out, anything else by a walk.
/// Caches (`__pycache__`, `*.pyc`) and `.git` are never part of it. `excludes` (relative
/// paths) leave out only what the repo does not track: a tracked file is the repo's wherever
/// it is; in a folder that is not a repo they leave out everything beneath, but the files
/// `also` names. `fetch` stores fresh checkouts through this too, so a clean repo's locked tree
/// and the tree of a checkout of its commit are the same.
///
/// `also` names files inside excluded folders that belong to the tree all the same (a
/// materialized copy of a checkout has no git to say which); it matters only outside a repo.
pub fn store_checkout(
    store: &Store,
    dir: &Path,
    excludes: &[String],
    also: &[String],
) -> Result<(Option<GitState>, AddReport)> {
    let (state, opts) = checkout_options(dir, excludes, also)?;
    let add = store.add_tree(dir, &opts)?;
    Ok((state, add))
}

/// The tree id [`store_checkout`] would give `dir`, with nothing written to the store: how
/// `verify` compares a folder with a lock whose trees the store lacks. The stat cache vouches
/// for unchanged files unless `rehash`.
pub fn checkout_tree_id(
    store: &Store,
    dir: &Path,
    excludes: &[String],
    also: &[String],
    rehash: bool,
) -> Result<ObjectId> {
    let (_, opts) = checkout_options(dir, excludes, also)?;
    Ok(store.hash_tree(dir, &opts, rehash)?)
}

/// The names at the top of `dir`, but those in `excludes`.
fn top_level_except(dir: &Path, excludes: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        if let Some(name) = entry.file_name().to_str() {
            if !excludes.iter().any(|e| e == name) {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// What git says of `dir` (if it is a checkout), and the options that make its tree.
fn checkout_options(
    dir: &Path,
    excludes: &[String],
    also: &[String],
) -> Result<(Option<GitState>, AddOptions)> {
    let ex: Vec<&str> = excludes.iter().map(String::as_str).collect();
    let state = inspect(dir, &ex)?;
    let mut exclude_names: Vec<String> = CACHE_NAMES.iter().map(|s| s.to_string()).collect();
    exclude_names.push(".git".into());
    let mut opts = AddOptions {
        // In a repo, git's list already leaves out what `excludes` should.
        exclude: if state.is_some() {
            Vec::new()
        } else {
            excludes.to_vec()
        },
        exclude_names,
        exclude_suffixes: CACHE_SUFFIXES.iter().map(|s| s.to_string()).collect(),
        select: state.as_ref().map(|g| g.files.clone()),
        ..Default::default()
    };
    if state.is_none() && !also.is_empty() {
        // The top level but the excluded names, and the `also` files beneath those; an
        // exclude above an `also` file would hide it.
        let mut select = top_level_except(dir, excludes)?;
        select.extend(also.iter().cloned());
        opts.select = Some(select);
        let above = |e: &String| {
            also.iter()
                .any(|a| a == e || a.starts_with(&format!("{}/", e.trim_end_matches('/'))))
        };
        opts.exclude.retain(|e| !above(e));
    }
    Ok((state, opts))
}
