//! The placing engine's errors.

/// What can go wrong placing a tree at a path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// A destination, marker or tree we refuse to place (not empty, escapes DEST, …).
    #[error(transparent)]
    BadInput(#[from] crate::error::BadInput),
    /// The store failed, or lacks what the tree names.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
