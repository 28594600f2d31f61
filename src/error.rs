//! Errors. Each engine has its own `thiserror` enum with typed variants (`store::Error`,
//! `place::Error`, `git::Error`, `http::Error`, `python::Error`, `lockfile::Error`); [`Error`]
//! is the pipelines' and the worker's, and wraps them unchanged, so a message reads the same
//! whichever layer passes it on. Every variant names the path or id it is about, so a message on
//! its own tells the user what to look at.

use std::io;
use std::path::PathBuf;

/// Gives an error enum with `Io { op, path, source }` and `BadInput { path, reason }` variants
/// what every layer uses with it: a `Result` alias, `IoContext` (attach an operation and a
/// path to an `io::Error`) and `bad_input`. One definition, so every layer words I/O errors
/// the same way.
macro_rules! error_support {
    ($error:ident) => {
        /// Result alias for this layer.
        pub type Result<T, E = $error> = std::result::Result<T, E>;

        /// Attach an operation name and a path to an `io::Error`.
        pub trait IoContext<T> {
            fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
        }

        impl<T> IoContext<T> for std::io::Result<T> {
            fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
                self.map_err(|source| $error::Io {
                    op,
                    path: path.to_path_buf(),
                    source,
                })
            }
        }

        impl $error {
            /// A `BadInput` error for `path`.
            pub fn bad_input(
                path: impl Into<std::path::PathBuf>,
                reason: impl Into<String>,
            ) -> Self {
                $error::BadInput {
                    path: path.into(),
                    reason: reason.into(),
                }
            }
        }
    };
}
pub(crate) use error_support;

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

error_support!(Error);

impl Error {
    /// A `Python` error about `what`.
    pub fn python(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Python {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
