//! What every error type of the library shares. Each engine has its own `thiserror` enum with
//! typed variants (`store::Error`, `place::Error`, `git::Error`, `http::Error`,
//! `python::Error`, `lockfile::Error`); the pipelines' `crate::Error` wraps them unchanged, so a
//! message reads the same whichever layer passes it on. Every variant names the path or id it is
//! about, so a message on its own tells the user what to look at.

use std::path::PathBuf;

/// A filesystem call that failed: every layer's `Io` variant wraps one.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Input from the user or from disk that we refuse: every layer's `BadInput` variant wraps one.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct BadInput {
    pub path: PathBuf,
    pub reason: String,
}

/// Gives an error enum with `Io(IoError)` and `BadInput(BadInput)` variants
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
                self.map_err(|source| $error::io(op, path, source))
            }
        }

        impl $error {
            /// An `Io` error: `op` on `path` failed.
            pub fn io(
                op: &'static str,
                path: impl Into<std::path::PathBuf>,
                source: std::io::Error,
            ) -> Self {
                $error::Io($crate::error::IoError {
                    op,
                    path: path.into(),
                    source,
                })
            }

            /// A `BadInput` error for `path`.
            pub fn bad_input(
                path: impl Into<std::path::PathBuf>,
                reason: impl Into<String>,
            ) -> Self {
                $error::BadInput($crate::error::BadInput {
                    path: path.into(),
                    reason: reason.into(),
                })
            }
        }
    };
}
pub(crate) use error_support;
