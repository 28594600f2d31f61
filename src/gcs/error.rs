//! Why the GCS engine failed. No message carries a token, a key or a signed URL: requests are
//! named by bucket and object, reqwest's errors lose their URL (a resumable session's URL
//! authorises its upload), and the credentials file is named by its path only.

use std::path::PathBuf;

/// The GCS engine's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The credentials file could not be read or is not one.
    #[error("gcs: credentials {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    /// A setting is out of range or missing.
    #[error("gcs: {0}")]
    Config(String),
    /// No access token: the token server refused the credentials or could not be reached, or
    /// no credentials were found (application default credentials).
    #[error("gcs: access token from {from}: {reason}")]
    Token { from: String, reason: String },
    /// A request failed without an answer (connection, timeout), after every retry.
    #[error("gcs: {what} gs://{bucket}/{object}: {reason} (after {attempts} attempts)")]
    Transport {
        what: &'static str,
        bucket: String,
        object: String,
        attempts: u32,
        reason: String,
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
    /// A file being uploaded could not be read.
    #[error("gcs: upload of gs://{bucket}/{object}: reading {}: {source}", path.display())]
    Read {
        bucket: String,
        object: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's bytes no longer have the BLAKE3 it was uploaded under: it changed while it was
    /// read, and the upload was abandoned before GCS could finish the object.
    #[error("gcs: gs://{bucket}/{object} not uploaded: {} has BLAKE3 {actual}, not {expected} (it changed while it was read)", path.display())]
    Changed {
        bucket: String,
        object: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A V4 signed URL could not be made.
    #[error("gcs: signed URL of gs://{bucket}/{object}: {reason}")]
    Sign {
        bucket: String,
        object: String,
        reason: String,
    },
}

/// Result alias of the GCS engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
