//! Running workflows on a materialized version (the RunPod worker, issue 7; in progress): the
//! job contract shared with runpod-workers/worker-comfyui ([`job`]) and ComfyUI's answers read
//! across its versions ([`comfy_api`]). The server loop, the ComfyUI supervisor and the output
//! sinks build on these.

pub mod comfy_api;
pub mod job;
pub mod local_api;
pub mod runpod;
pub mod sink;
pub mod supervisor;
pub mod worker;
