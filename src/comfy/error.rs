//! Why the ComfyUI engine failed: the process would not start or answer, or a request to it
//! failed. A job's own failures (refused workflow, node errors) are answers, not errors.

use std::path::PathBuf;
use std::time::Duration;

/// The ComfyUI engine's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interpreter could not be run.
    #[error("{}: cannot start ComfyUI: {source}", python.display())]
    Start {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// ComfyUI exited before it answered; `log` is its last lines.
    #[error("comfyui: ComfyUI exited while starting; last log lines:\n  {}", log.join("\n  "))]
    Exited { log: Vec<String> },
    /// ComfyUI ran but did not answer within `timeout`.
    #[error(
        "comfyui: ComfyUI did not answer on {url} within {timeout:?}; last log lines:\n  {}",
        log.join("\n  ")
    )]
    NotReady {
        url: String,
        timeout: Duration,
        log: Vec<String>,
    },
    /// The HTTP client could not be built.
    #[error("comfyui: http client: {0}")]
    Client(#[source] reqwest::Error),
    /// A request to ComfyUI failed (reqwest's words, which name the URL).
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// Result alias of the ComfyUI engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
