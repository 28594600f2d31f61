//! Why the GCS engine failed. No message carries a token, a key or a signed URL: requests are
//! named by bucket and object, reqwest's errors lose their URL, and the credentials file is
//! named by its path only.

use std::path::PathBuf;

/// The GCS engine's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service-account file could not be read or is not one.
    #[error("gcs: credentials {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    /// The service account's private key cannot sign.
    #[error("gcs: credentials: private key: {0}")]
    Key(String),
    /// A setting is out of range or missing.
    #[error("gcs: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("gcs: http client: {0}")]
    Client(#[source] reqwest::Error),
    /// The token server refused the service account, or could not be reached.
    #[error("gcs: access token from {token_uri}: {reason}")]
    Token { token_uri: String, reason: String },
    /// A request failed without an answer (connection, timeout), after every retry.
    #[error("gcs: {what} gs://{bucket}/{object}: {source} (after {attempts} attempts)")]
    Transport {
        what: &'static str,
        bucket: String,
        object: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    /// GCS answered with an error status, after every retry when it was a retryable one.
    #[error(
        "gcs: {what} gs://{bucket}/{object}: HTTP {status}: {message} (after {attempts} attempts)"
    )]
    Status {
        what: &'static str,
        bucket: String,
        object: String,
        status: u16,
        message: String,
        attempts: u32,
    },
    /// The object exists with other content: it is never overwritten.
    #[error("gcs: gs://{bucket}/{object} already exists with other content (sha256 {theirs}); not overwritten")]
    Exists {
        bucket: String,
        object: String,
        theirs: String,
    },
    /// The credentials lack permissions on the bucket.
    #[error("gcs: missing permission {} on bucket {bucket} (testIamPermissions)", missing.join(", "))]
    Permission {
        bucket: String,
        missing: Vec<String>,
    },
}

/// Result alias of the GCS engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
