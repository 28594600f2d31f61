//! The git engine: inspect a checkout, store it as a tree, and rebuild a tree from a repo and
//! commit. We shell out to `git` rather than re-implement it, always through [`process`].

pub mod error;

pub use error::{Error, Result};
mod checkout;
mod clone;
mod fetch;
mod inspect;

pub use checkout::{checkout_tree_id, store_checkout};
pub use clone::{checkout, clone, fetch_origin, resolve};
pub use fetch::{fetch_tree, GitCredentials, GitSource};
pub use inspect::{inspect, is_repo_root, GitState};

use crate::process::{Process, ProcessError};
use std::path::Path;

/// `git -C dir` with the settings every comfystore git call needs, as a [`Process`].
pub fn process(dir: &Path) -> Process {
    let mut p = Process::new("git");
    p.arg("-C")
        .arg(dir)
        // Repos that may belong to another user (a volume, a container).
        .args(["-c", "safe.directory=*", "-c", "core.quotePath=false"])
        .env("GIT_OPTIONAL_LOCKS", "0")
        // A GIT_DIR from the caller's environment would point every call at another repo.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("LC_ALL", "C");
    p
}

/// Why a git run failed, in the words every git message uses: `shown` is the command as the
/// message names it, `purpose` what git was needed for.
fn reason(e: ProcessError, shown: &str, purpose: &str) -> String {
    match e {
        ProcessError::Spawn { source, .. } => {
            format!("cannot run git ({source}); git must be on the PATH to {purpose}")
        }
        ProcessError::Failed { stderr, .. } => format!("git {shown} failed: {stderr}"),
        e @ ProcessError::TimedOut { .. } => e.to_string(),
    }
}
