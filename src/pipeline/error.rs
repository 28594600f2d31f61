//! The pipelines' error: their own failures (bad input, I/O, a part not in the store) and every
//! engine's error, passed on unchanged.

/// The error type of the pipelines and the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// Input from the user or from disk that we refuse.
    #[error(transparent)]
    BadInput(#[from] crate::error::BadInput),
    /// Something a lock or a command names that is not there.
    #[error("{0} is not in the store")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Place(#[from] crate::place::Error),
    #[error(transparent)]
    Git(#[from] crate::git::Error),
    #[error(transparent)]
    Http(#[from] crate::http::Error),
    #[error(transparent)]
    Python(#[from] crate::python::Error),
    #[error(transparent)]
    Lockfile(#[from] crate::lockfile::Error),
    #[error(transparent)]
    Gcs(#[from] crate::gcs::Error),
}

crate::error::error_support!(Error);
