//! The lockfile format's errors.

use std::io;
use std::path::PathBuf;

/// What can go wrong reading or writing a lockfile or a snapshot.
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
    /// A file that is not a valid lock or snapshot: the field and the problem are named.
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    /// Writing the lock went through the store's durable write.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
