//! The placing engine's errors.

use std::io;
use std::path::PathBuf;

/// What can go wrong placing a tree at a path.
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
    /// A destination, marker or tree we refuse to place (not empty, escapes DEST, …).
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    /// The store failed, or lacks what the tree names.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
