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
    /// A store object was changed through a hardlink in DEST: nothing is placed from it.
    #[error("object {id} was modified in place through {}; run `comfystore fsck --repair` to quarantine it, then add or fetch it again", path.display())]
    ObjectChanged {
        id: crate::store::ObjectId,
        path: std::path::PathBuf,
    },
    /// The store failed, or lacks what the tree names.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

crate::error::error_support!(Error);
