//! Why the worker could not be set up or could not serve. A job's own failure is not one of
//! these: it is an answer ([`super::failure::JobError`]).

/// The worker's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The async runtime the worker, the RunPod loop and the local API share.
    #[error("worker: runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The HTTP client to RunPod could not be built.
    #[error("runpod: http client: {0}")]
    RunPodClient(#[source] reqwest::Error),
    /// `RUNPOD_AI_API_KEY` cannot be sent as a header (the key itself is never shown).
    #[error("runpod: RUNPOD_AI_API_KEY is not a valid header value")]
    ApiKey,
    /// The local API's address could not be bound.
    #[error("local api: bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The local API's server failed.
    #[error("local api: {0}")]
    Serve(#[source] std::io::Error),
    /// ComfyUI (its client could not be built, or it would not start).
    #[error(transparent)]
    Comfy(#[from] crate::comfy::Error),
}
