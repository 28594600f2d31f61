//! The store engine's errors.

use std::path::PathBuf;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// A string that should be an object id is not one.
    #[error("invalid id {0:?}: expected b3:<64 hex>, sha256:<64 hex> or 64 hex digits")]
    InvalidId(String),
    /// The id is well formed but the store does not hold it.
    #[error("{0} is not in the store")]
    NotFound(String),
    /// A tree manifest that cannot be parsed or breaks a rule.
    #[error("tree {id}: invalid manifest: {reason}")]
    BadManifest { id: String, reason: String },
    /// Input from the user or from disk that we refuse (bad paths, unsupported file types…).
    #[error(transparent)]
    BadInput(#[from] crate::error::BadInput),
    /// Bytes whose hash is not the one they were promised to have.
    #[error("{what}: checksum mismatch: expected {expected}, got {actual}")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// A published object whose bytes changed (a write through a hardlink, a disk error): it
    /// was moved to quarantine so that nothing copies, links or prints the wrong bytes.
    #[error("object {id} ({}) changed on disk: its bytes hash to {actual}; moved it to {}; fetch or add it again (`comfystore fsck` checks the rest)", path.display(), quarantined.display())]
    Corrupt {
        id: String,
        path: PathBuf,
        actual: String,
        quarantined: PathBuf,
    },
    /// The redb index failed. The index is only an accelerator: `index rebuild` recreates it.
    #[error("index {}: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
    /// A GC root name that could escape `roots/` or is otherwise unusable.
    #[error("invalid root name {0:?}: use letters, digits and . _ - + @ =, with / between parts")]
    RootName(String),
    /// A bundle that is malformed, truncated or tampered with.
    #[error("bundle {}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
    /// This process may not read, or may not write, the store: the reason names the store,
    /// the user, the owner and the mode; `path` is what it was about to read or write.
    /// `source` is an `io::Error` of kind `PermissionDenied`, so the CLI's exit code (and any
    /// caller walking the chain) sees a missing permission whichever layer passed it on.
    #[error("{reason} (needed for {})", path.display())]
    Permission {
        path: PathBuf,
        reason: String,
        #[source]
        source: std::io::Error,
    },
    /// The store directory is not usable as a store.
    #[error("store {}: {reason}", path.display())]
    Store { path: PathBuf, reason: String },
}

crate::error::error_support!(Error);
