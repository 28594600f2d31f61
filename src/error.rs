//! Library errors. Every variant names the path or id it is about, so a message on its own
//! tells the user what to look at.

use std::io;
use std::path::{Path, PathBuf};

/// The error type of the comfystore library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    /// Bytes whose hash is not the one they were promised to have.
    #[error("{what}: checksum mismatch: expected {expected}, got {actual}")]
    Mismatch {
        what: String,
        expected: String,
        actual: String,
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
    /// A download that failed for good (after retries, on every source).
    #[error("download {what}: {reason}")]
    Download { what: String, reason: String },
    /// A git fetch or checkout failed, or gave another tree than the lock's.
    #[error("git {what}: {reason}")]
    Git { what: String, reason: String },
    /// A Python interpreter, resolver (uv, pip) or installer was missing or failed.
    #[error("python {what}: {reason}")]
    Python { what: String, reason: String },
    /// The store directory is not usable as a store.
    #[error("store {}: {reason}", path.display())]
    Store { path: PathBuf, reason: String },
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach an operation name and a path to an `io::Error`.
pub trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Error {
    /// A `Python` error about `what`.
    pub fn python(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Python {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A `BadInput` error for `path`.
    pub fn bad_input(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
