//! The worker: runs jobs on a materialized version through the ComfyUI engine. The job
//! contract shared with runpod-workers/worker-comfyui ([`job`]), why a job failed and the
//! answer that gives ([`failure`]), one job's run ([`runner`]), where outputs go ([`sink`]),
//! RunPod's serverless protocol ([`runpod`]) and the local API ([`local_api`]). The worker's
//! own errors are in [`Error`].

mod error;
pub mod failure;
pub mod job;
pub mod local_api;
pub mod runner;
pub mod runpod;
pub mod sink;

pub use error::Error;
pub use runner::{Answer, Worker, WorkerOptions};
