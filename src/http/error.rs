//! The download engine's errors.

use std::io;
use std::path::PathBuf;

/// What can go wrong downloading into the store.
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
    /// A source or option we refuse.
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    /// A download that failed for good (after retries, on every source).
    #[error("download {what}: {reason}")]
    Download { what: String, reason: String },
    /// Storing (and checking) the bytes failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
