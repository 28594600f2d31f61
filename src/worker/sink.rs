//! Where a job's output files go. The answer carries each file as a [`super::job::OutputFile`];
//! a sink decides what its `type` and `data` are: the bytes themselves (`base64`, the
//! worker-comfyui default), only their hash (`sha256`, for comparing runs) or, in sinks to
//! come (GCS), a URL to them.

use super::job::OutputFile;

/// One output file, as the worker got it from ComfyUI.
pub struct Produced<'a> {
    pub job_id: &'a str,
    pub filename: &'a str,
    /// The node output key (`images`, `videos`, …) and the node.
    pub output: &'a str,
    pub node: &'a str,
    pub bytes: &'a [u8],
    /// Hex SHA-256 of `bytes`.
    pub sha256: &'a str,
}

/// Why a sink could not deliver a file: any error of the sink's own (storage clients differ).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Delivers output files. Errors are per file: they become the answer's `errors`.
pub trait Sink: Send {
    fn deliver(&self, file: &Produced) -> Result<OutputFile, SinkError>;
}

/// The file's bytes in the answer, base64-encoded (`type: "base64"`).
pub struct Base64;

impl Sink for Base64 {
    fn deliver(&self, f: &Produced) -> Result<OutputFile, SinkError> {
        use base64::Engine;
        Ok(OutputFile {
            filename: f.filename.to_string(),
            kind: "base64".into(),
            data: base64::engine::general_purpose::STANDARD.encode(f.bytes),
            sha256: f.sha256.to_string(),
            output: f.output.to_string(),
            node: f.node.to_string(),
        })
    }
}

/// Only the file's hash (`type: "sha256"`, empty `data`): for comparing runs (`repro run`),
/// which read nothing else; the bytes are in the store when the worker has one.
pub struct HashOnly;

impl Sink for HashOnly {
    fn deliver(&self, f: &Produced) -> Result<OutputFile, SinkError> {
        Ok(OutputFile {
            filename: f.filename.to_string(),
            kind: "sha256".into(),
            data: String::new(),
            sha256: f.sha256.to_string(),
            output: f.output.to_string(),
            node: f.node.to_string(),
        })
    }
}
