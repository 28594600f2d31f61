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
    /// Switching DEST to another version would replace files the user edited (or put where
    /// the new version has a file); nothing was changed.
    #[error("{}: switching versions would replace {} file(s) that differ from what the previous version placed (your edits), so nothing was changed: {}; save them, or give --force to keep each beside the new one as NAME.comfystore-kept-<time>", dest.display(), paths.len(), paths.join(", "))]
    Edited {
        dest: std::path::PathBuf,
        paths: Vec<String>,
    },
    /// DEST's marker file is not a marker at all (not JSON of the schema): no field of it is
    /// used.
    #[error("{}: invalid materialize marker: {reason}", path.display())]
    BadMarker {
        path: std::path::PathBuf,
        reason: String,
    },
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
