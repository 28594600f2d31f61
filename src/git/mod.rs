//! The git engine: inspect a checkout, store it as a tree, and rebuild a tree from a repo and
//! commit. We shell out to `git` rather than re-implement it, always through [`process`].

pub mod error;

pub use error::{Error, Result};
mod checkout;
mod clone;
mod fetch;
mod inspect;

pub use checkout::{checkout_tree_id, store_checkout};
pub use clone::{checkout, clone, fetch_origin, ls_remote, resolve};
pub use fetch::{fetch_tree, GitCredentials, GitSource};
pub use inspect::{inspect, is_repo_root, GitState};

use crate::process::{Process, ProcessError};
use std::path::Path;
use std::time::Duration;

/// The transports git may use: `GIT_ALLOW_PROTOCOL` of every git comfystore runs. `file`
/// covers local paths and `file://` (a lock's author may name a local repo); remote helpers
/// (`fd::`, `ext::`, `<transport>::…`) and any other scheme are refused by git itself, besides
/// the lock's own check.
pub const ALLOWED_PROTOCOLS: &str = "https:http:ssh:git:file";

/// The time limit of one git run that may touch the network (fetch, clone, submodules):
/// `COMFYSTORE_GIT_TIMEOUT` (e.g. `45m`), else 30 minutes. A stalled transfer ends sooner:
/// below 1000 bytes/s for 60 s (`GIT_HTTP_LOW_SPEED_LIMIT`/`_TIME`, when not set already).
pub fn network_timeout() -> Duration {
    const DEFAULT: Duration = Duration::from_secs(30 * 60);
    match std::env::var("COMFYSTORE_GIT_TIMEOUT") {
        Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim()).unwrap_or_else(|e| {
            tracing::warn!("COMFYSTORE_GIT_TIMEOUT={v:?}: {e}; using {DEFAULT:?}");
            DEFAULT
        }),
        _ => DEFAULT,
    }
}

/// `git -C dir` with the settings every comfystore git call needs, as a [`Process`].
pub fn process(dir: &Path) -> Process {
    let mut p = Process::new("git");
    // Its remote helpers (git-remote-http, ssh) die with comfystore too.
    p.group_dies_with_parent();
    p.arg("-C")
        .arg(dir)
        // Repos that may belong to another user (a volume, a container).
        .args(["-c", "safe.directory=*", "-c", "core.quotePath=false"])
        .env("GIT_OPTIONAL_LOCKS", "0")
        // A GIT_DIR from the caller's environment would point every call at another repo.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        // Never wait for a password on a terminal nobody watches.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    for (k, v) in [
        ("GIT_HTTP_LOW_SPEED_LIMIT", "1000"),
        ("GIT_HTTP_LOW_SPEED_TIME", "60"),
    ] {
        if std::env::var_os(k).is_none() {
            p.env(k, v);
        }
    }
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
