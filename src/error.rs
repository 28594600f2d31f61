//! What every error type of the library shares. Each engine has its own `thiserror` enum with
//! typed variants (`store::Error`, `place::Error`, `git::Error`, `http::Error`,
//! `python::Error`, `lockfile::Error`); the pipelines' `crate::Error` wraps them unchanged, so a
//! message reads the same whichever layer passes it on. Every variant names the path or id it is
//! about, so a message on its own tells the user what to look at.

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
