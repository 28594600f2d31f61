//! Why a job failed, and the answer that gives: worker-comfyui's `{"error", "details"}`.
//!
//! The steps of a job return a [`JobError`]; it becomes JSON once, at the edge, by
//! [`JobError::answer`].

use super::job::{error_answer, InputError};
use super::sink::SinkError;
use serde_json::Value;

/// Why a job failed. Its text is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The input was refused before ComfyUI saw it.
    #[error(transparent)]
    Input(#[from] InputError),
    /// ComfyUI could not be started, or did not answer, before the job.
    #[error("ComfyUI is not reachable")]
    Unreachable(#[source] crate::comfy::Error),
    /// ComfyUI refused the workflow, or ran it and reported errors: its own words.
    #[error("{error}")]
    Reported { error: String, details: Vec<String> },
    /// Something went wrong around ComfyUI; `log` is its last lines at that moment.
    #[error("{what}")]
    Logged {
        what: Trouble,
        details: Vec<String>,
        log: Vec<String>,
    },
    /// The answer could not be written as JSON.
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
}

/// What went wrong around ComfyUI during a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Trouble {
    #[error("Failed to upload one or more input images")]
    Upload,
    #[error("HTTP communication error with ComfyUI")]
    Submit,
    #[error("ComfyUI crashed while running the job")]
    Crashed,
    #[error("ComfyUI stopped answering during the job")]
    Hung,
    #[error("The job timed out")]
    TimedOut,
}

impl JobError {
    /// The failed job's answer: `{"error": …, "details": […]}`, ComfyUI's log last.
    pub fn answer(&self) -> Value {
        let details = match self {
            JobError::Input(_) | JobError::Encode(_) => Vec::new(),
            JobError::Unreachable(e) => vec![e.to_string()],
            JobError::Reported { details, .. } => details.clone(),
            JobError::Logged { details, log, .. } => {
                let mut d = details.clone();
                if !log.is_empty() {
                    d.push(format!("ComfyUI log (last lines):\n{}", log.join("\n")));
                }
                d
            }
        };
        error_answer(&self.to_string(), &details)
    }
}

/// Why one output file is missing from the answer (the job goes on; it is listed in `errors`).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Fetch(#[from] crate::comfy::Error),
    #[error(transparent)]
    Sink(SinkError),
    /// ComfyUI named a place outside its folders.
    #[error(transparent)]
    Refused(#[from] crate::comfy::Refused),
}
