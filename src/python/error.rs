//! The python engine's errors.

/// What can go wrong finding an interpreter, pinning or installing an environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// A requirements file, venv or interpreter we refuse.
    #[error(transparent)]
    BadInput(#[from] crate::error::BadInput),
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
