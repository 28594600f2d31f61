//! The lockfile format's errors.

/// What can go wrong reading or writing a lockfile or a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// A file that is not a valid lock or snapshot: the field and the problem are named.
    #[error(transparent)]
    BadInput(#[from] crate::error::BadInput),
    /// Writing the lock went through the store's durable write.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
