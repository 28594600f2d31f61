//! The python engine's errors.

use std::io;
use std::path::PathBuf;

/// What can go wrong finding an interpreter, pinning or installing an environment.
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
    /// A requirements file, venv or interpreter we refuse.
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    /// A Python interpreter, resolver (uv, pip) or installer was missing or failed.
    #[error("python {what}: {reason}")]
    Python { what: String, reason: String },
    /// The store failed, or lacks a wheel or an environment.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// A wheel download failed.
    #[error(transparent)]
    Http(#[from] crate::http::Error),
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
