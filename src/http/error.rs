//! The download engine's errors.

/// What can go wrong downloading into the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// A source or option we refuse.
    #[error(transparent)]
    BadInput(#[from] crate::error::BadInput),
    /// A download that failed for good (after retries, on every source).
    #[error("download {what}: {reason}")]
    Download { what: String, reason: String },
    /// Storing (and checking) the bytes failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
