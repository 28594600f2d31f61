//! The git engine's errors.

/// What can go wrong inspecting a checkout or rebuilding a tree from git.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// A checkout git cannot read (git missing, not UTF-8 names, a failed command).
    #[error(transparent)]
    BadInput(#[from] crate::error::BadInput),
    /// A git fetch or checkout failed, or gave another tree than the lock's.
    #[error("git {what}: {reason}")]
    Git { what: String, reason: String },
    /// Storing the checkout failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
