//! Where a job's output files go. The answer carries each file as a [`super::job::OutputFile`];
//! a sink decides what its `type` and `data` are: the bytes themselves (`base64`, the
//! worker-comfyui default), only their hash (`sha256`, for comparing runs) or a URL to an
//! object in Google Cloud Storage (`gcs_url`, [`Gcs`]).

use super::job::OutputFile;
use crate::gcs;
use std::sync::Arc;
use std::time::Duration;

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
    /// Whether the bytes are in the worker's store (`comfystore cat sha256:…` gives them).
    pub stored: bool,
}

/// Why a sink could not deliver a file: any error of the sink's own (storage clients differ).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// A delivered file, and a problem to list in the answer's `errors` when the file went
/// another way than asked (a failed upload answered as base64).
pub struct Delivered {
    pub file: OutputFile,
    pub note: Option<String>,
}

impl From<OutputFile> for Delivered {
    fn from(file: OutputFile) -> Delivered {
        Delivered { file, note: None }
    }
}

/// Delivers output files. Errors are per file: they become the answer's `errors`.
pub trait Sink: Send {
    fn deliver(&self, file: &Produced) -> Result<Delivered, SinkError>;
}

/// The file's bytes in the answer, base64-encoded (`type: "base64"`).
pub struct Base64;

fn base64_file(f: &Produced) -> OutputFile {
    use base64::Engine;
    OutputFile {
        filename: f.filename.to_string(),
        kind: "base64".into(),
        data: base64::engine::general_purpose::STANDARD.encode(f.bytes),
        sha256: f.sha256.to_string(),
        output: f.output.to_string(),
        node: f.node.to_string(),
        gs_uri: None,
    }
}

impl Sink for Base64 {
    fn deliver(&self, f: &Produced) -> Result<Delivered, SinkError> {
        Ok(base64_file(f).into())
    }
}

/// Only the file's hash (`type: "sha256"`, empty `data`): for comparing runs (`repro run`),
/// which read nothing else; the bytes are in the store when the worker has one.
pub struct HashOnly;

impl Sink for HashOnly {
    fn deliver(&self, f: &Produced) -> Result<Delivered, SinkError> {
        Ok(OutputFile {
            filename: f.filename.to_string(),
            kind: "sha256".into(),
            data: String::new(),
            sha256: f.sha256.to_string(),
            output: f.output.to_string(),
            node: f.node.to_string(),
            gs_uri: None,
        }
        .into())
    }
}

/// The URL a GCS output is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcsUrl {
    /// `https://storage.googleapis.com/BUCKET/OBJECT` (the bucket must be readable by it).
    Public,
    /// A V4 signed GET URL valid this long (at most 7 days).
    Signed(Duration),
}

/// How output files go to GCS.
#[derive(Clone, Debug)]
pub struct GcsOptions {
    /// Object names are `{prefix}/{job_id}/{filename}` (no leading or trailing `/`).
    pub prefix: String,
    pub url: GcsUrl,
    /// A file whose upload failed is answered as base64 (with the failure in `errors`) when
    /// it is at most this many bytes; larger ones are only listed in `errors`. 0: never.
    pub fallback_max: usize,
}

/// Each output file uploaded to `gs://BUCKET/{prefix}/{job_id}/{filename}`, answered as
/// `{"type": "gcs_url", "data": URL, "gs_uri": "gs://…"}`. Uploads never replace an object
/// with other content; a failed one leaves the file in the store, says so, and falls back to
/// base64 for small files.
pub struct Gcs {
    client: Arc<gcs::Client>,
    rt: tokio::runtime::Handle,
    opts: GcsOptions,
}

impl Gcs {
    /// `rt` runs the uploads (the worker's runtime; `deliver` is called outside it).
    pub fn new(client: Arc<gcs::Client>, rt: tokio::runtime::Handle, opts: GcsOptions) -> Gcs {
        let mut opts = opts;
        opts.prefix = opts.prefix.trim_matches('/').to_string();
        Gcs { client, rt, opts }
    }

    /// The object of a job's file. The job id is made one plain path segment (RunPod's ids
    /// already are); the file name is one already (the worker refuses others).
    pub fn object_name(&self, job_id: &str, filename: &str) -> String {
        let mut job: String = job_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if job.is_empty() || job.chars().all(|c| c == '.') {
            job = job.replace('.', "_") + "_";
        }
        if self.opts.prefix.is_empty() {
            format!("{job}/{filename}")
        } else {
            format!("{}/{job}/{filename}", self.opts.prefix)
        }
    }

    async fn url(&self, object: &str) -> Result<String, gcs::Error> {
        match self.opts.url {
            GcsUrl::Public => Ok(self.client.public_url(object)),
            GcsUrl::Signed(ttl) => self.client.signed_url(object, ttl).await,
        }
    }
}

impl Sink for Gcs {
    fn deliver(&self, f: &Produced) -> Result<Delivered, SinkError> {
        let object = self.object_name(f.job_id, f.filename);
        let uploaded = self.rt.block_on(async {
            self.client
                .put(&object, f.bytes, gcs::content_type(f.filename), f.sha256)
                .await?;
            self.url(&object).await
        });
        let failed = match uploaded {
            Ok(url) => {
                return Ok(OutputFile {
                    filename: f.filename.to_string(),
                    kind: "gcs_url".into(),
                    data: url,
                    sha256: f.sha256.to_string(),
                    output: f.output.to_string(),
                    node: f.node.to_string(),
                    gs_uri: Some(self.client.gs_uri(&object)),
                }
                .into())
            }
            Err(e) => e,
        };
        let kept = if f.stored {
            format!("kept in the worker's store as sha256:{}", f.sha256)
        } else {
            "not kept: the worker has no store".to_string()
        };
        let mut msg = format!("not uploaded ({failed}); {kept}");
        tracing::warn!("job {}: {}: {msg}", f.job_id, f.filename);
        if f.bytes.len() <= self.opts.fallback_max {
            msg.push_str("; answered as base64 instead");
            return Ok(Delivered {
                file: base64_file(f),
                note: Some(format!("{}: {msg}", f.filename)),
            });
        }
        Err(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(prefix: &str) -> Gcs {
        let mut o = gcs::Options::new("bucket-x");
        o.emulator = Some("127.0.0.1:9".into());
        let client = Arc::new(gcs::Client::new(o).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Gcs::new(
            client,
            rt.handle().clone(),
            GcsOptions {
                prefix: prefix.into(),
                url: GcsUrl::Public,
                fallback_max: 0,
            },
        )
    }

    #[test]
    fn object_names_are_prefix_job_and_file_name() {
        let s = sink("/comfy/outputs/");
        assert_eq!(
            s.object_name("sync-1a2b", "a_00001_.png"),
            "comfy/outputs/sync-1a2b/a_00001_.png"
        );
        assert_eq!(
            s.object_name("../x/y", "f.png"),
            "comfy/outputs/.._x_y/f.png"
        );
        assert_eq!(s.object_name("..", "f.png"), "comfy/outputs/___/f.png");
        assert_eq!(s.object_name("", "f.png"), "comfy/outputs/_/f.png");
        assert_eq!(sink("").object_name("j", "f.png"), "j/f.png");
    }
}
