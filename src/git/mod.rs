//! The git engine: inspect a checkout, store it as a tree, and rebuild a tree from a repo and
//! commit. We shell out to `git` rather than re-implement it.

pub mod error;

pub use error::{Error, Result};
mod checkout;
mod fetch;
mod inspect;

pub use checkout::store_checkout;
pub use fetch::{fetch_tree, GitSource};
pub use inspect::{inspect, is_repo_root, GitState};

use std::path::Path;
use std::process::Command;

/// `git -C dir` with the settings every comfystore git call needs.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        // Repos that may belong to another user (a volume, a container).
        .args(["-c", "safe.directory=*", "-c", "core.quotePath=false"])
        .env("GIT_OPTIONAL_LOCKS", "0")
        // A GIT_DIR from the caller's environment would point every call at another repo.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("LC_ALL", "C");
    cmd
}
