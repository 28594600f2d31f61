//! The pipelines' error: their own failures (bad input, I/O, a part not in the store) and every
//! engine's error, passed on unchanged.

use std::io;
use std::path::PathBuf;

/// The error type of the pipelines and the worker.
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
    /// Input from the user or from disk that we refuse.
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    /// Something a lock or a command names that is not there.
    #[error("{0} is not in the store")]
    NotFound(String),
    /// A Python interpreter, resolver or installer, or the worker's runtime, failed.
    #[error("python {what}: {reason}")]
    Python { what: String, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Place(#[from] crate::place::Error),
    #[error(transparent)]
    Git(#[from] crate::git::Error),
    #[error(transparent)]
    Http(#[from] crate::http::Error),
    #[error(transparent)]
    PythonEnv(#[from] crate::python::Error),
    #[error(transparent)]
    Lockfile(#[from] crate::lockfile::Error),
}

crate::error::error_support!(Error);

impl Error {
    /// A `Python` error about `what`.
    pub fn python(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Python {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
