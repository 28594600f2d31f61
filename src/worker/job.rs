//! The job contract, compatible with runpod-workers/worker-comfyui: what a job's `input` may
//! hold, checked before anything reaches ComfyUI, and the shape of an answer.
//!
//! Every rule here exists so that one bad job gets a clear error and the worker goes on: a
//! missing or malformed workflow, images that are not base64, names that could leave the
//! input folder, and payloads over the limits RunPod itself enforces (10 MB for `/run`,
//! 20 MB for `/runsync`).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// Size limits of one job, in bytes.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The whole `input`, as JSON.
    pub input_bytes: usize,
    /// One decoded image.
    pub image_bytes: usize,
    /// Number of images.
    pub images: usize,
    /// Longest `timeout_s` a job may ask for.
    pub max_timeout: Duration,
}

impl Default for Limits {
    /// RunPod's `/runsync` payload limit is 20 MB (base64 included), so nothing larger can
    /// arrive through RunPod; the local API applies the same.
    fn default() -> Self {
        Limits {
            input_bytes: 20 * 1000 * 1000,
            image_bytes: 15 * 1000 * 1000,
            images: 64,
            max_timeout: Duration::from_secs(3600),
        }
    }
}

/// A job's input, checked.
#[derive(Clone, Debug)]
pub struct JobInput {
    /// The ComfyUI API-format graph: node id → `{class_type, inputs}`, in the client's key
    /// order (serde_json's `preserve_order`): ComfyUI embeds the prompt in every PNG, so the
    /// order is part of the output's bytes.
    pub workflow: Map<String, Value>,
    pub images: Vec<InputImage>,
    /// `input.timeout_s`: how long the job may run in ComfyUI.
    pub timeout: Option<Duration>,
    /// `input.comfy_org_api_key`, passed to ComfyUI as `extra_data.api_key_comfy_org`.
    pub comfy_org_api_key: Option<String>,
}

/// An input image to upload before the workflow runs.
#[derive(Clone, Debug)]
pub struct InputImage {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Why a job's input was refused. The message is what the client reads.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("Please provide input")]
    NoInput,
    #[error("Invalid JSON format in input: {0}")]
    InvalidJson(String),
    #[error("Missing 'workflow' parameter")]
    MissingWorkflow,
    #[error("'workflow' must be an API-format graph (an object of node id -> {{class_type, inputs}}): {0}")]
    BadWorkflow(String),
    #[error("'images' must be a list of objects with 'name' and 'image' keys")]
    BadImages,
    #[error("image {name:?}: {reason}")]
    BadImageName { name: String, reason: &'static str },
    #[error("image {name:?}: invalid base64: {reason}")]
    BadBase64 { name: String, reason: String },
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("'timeout_s' must be a positive number of seconds up to {max}")]
    BadTimeout { max: u64 },
}

/// Check a job's `input` (an object, or the same as a JSON string).
pub fn parse_input(input: &Value, limits: &Limits) -> Result<JobInput, InputError> {
    let owned;
    let input = match input {
        Value::Null => return Err(InputError::NoInput),
        Value::String(s) => {
            check_size("input", s.len(), limits.input_bytes)?;
            owned = serde_json::from_str::<Value>(s)
                .map_err(|e| InputError::InvalidJson(e.to_string()))?;
            &owned
        }
        v => v,
    };
    let Value::Object(obj) = input else {
        return Err(InputError::InvalidJson("input is not an object".into()));
    };
    check_size(
        "input",
        serde_json::to_vec(obj).map(|v| v.len()).unwrap_or(0),
        limits.input_bytes,
    )?;
    let workflow = workflow_of(obj)?;
    check_workflow(&workflow)?;
    let images = images_of(obj, limits)?;
    let timeout = timeout_of(obj, limits)?;
    let comfy_org_api_key = obj
        .get("comfy_org_api_key")
        .and_then(Value::as_str)
        .map(String::from);
    Ok(JobInput {
        workflow,
        images,
        timeout,
        comfy_org_api_key,
    })
}

/// The `input` of a job file: a worker-comfyui job (`{"input": {…}}`, the SDK's
/// test_input.json), an input alone (`{"workflow": …}`), or a bare API-format workflow (node
/// id → `{class_type, inputs}`, what ComfyUI's Export (API) writes), which becomes
/// `{"workflow": …}` with its key order kept. Anything else is returned as it is, for
/// [`parse_input`] to refuse.
pub fn input_of(doc: Value) -> Value {
    let Value::Object(mut m) = doc else {
        return doc;
    };
    let is_node = |v: &Value| v.get("class_type").is_some();
    if m.get("input").is_some_and(|v| !is_node(v)) {
        return m.remove("input").unwrap_or(Value::Null);
    }
    if m.get("workflow").is_some_and(|v| !is_node(v)) {
        return Value::Object(m);
    }
    let mut input = Map::new();
    input.insert("workflow".into(), Value::Object(m));
    Value::Object(input)
}

/// `workflow`: an object, or the same as a JSON string.
fn workflow_of(obj: &Map<String, Value>) -> Result<Map<String, Value>, InputError> {
    match obj.get("workflow") {
        None | Some(Value::Null) => Err(InputError::MissingWorkflow),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(InputError::BadWorkflow("not an object".into())),
            Err(e) => Err(InputError::BadWorkflow(e.to_string())),
        },
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(InputError::BadWorkflow("not an object".into())),
    }
}

/// `images`: none, or a list within the limits.
fn images_of(obj: &Map<String, Value>, limits: &Limits) -> Result<Vec<InputImage>, InputError> {
    match obj.get("images") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => {
            if list.len() > limits.images {
                return Err(InputError::TooLarge {
                    what: "the image list".into(),
                    size: list.len(),
                    limit: limits.images,
                });
            }
            list.iter().map(|v| parse_image(v, limits)).collect()
        }
        Some(_) => Err(InputError::BadImages),
    }
}

/// `timeout_s`: none, or a positive number of seconds up to the limit.
fn timeout_of(obj: &Map<String, Value>, limits: &Limits) -> Result<Option<Duration>, InputError> {
    let max = limits.max_timeout.as_secs();
    match obj.get("timeout_s") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= max as f64 => Ok(Some(Duration::from_secs_f64(s))),
            _ => Err(InputError::BadTimeout { max }),
        },
    }
}

fn check_size(what: &str, size: usize, limit: usize) -> Result<(), InputError> {
    if size > limit {
        return Err(InputError::TooLarge {
            what: what.into(),
            size,
            limit,
        });
    }
    Ok(())
}

/// Every node must be an object with a string `class_type`; ComfyUI checks the rest.
fn check_workflow(w: &Map<String, Value>) -> Result<(), InputError> {
    if w.is_empty() {
        return Err(InputError::BadWorkflow("it has no nodes".into()));
    }
    for (id, node) in w {
        let ok = node
            .get("class_type")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty());
        if !ok {
            return Err(InputError::BadWorkflow(format!(
                "node {id:?} has no class_type (was the workflow exported with Export (API)?)"
            )));
        }
    }
    Ok(())
}

fn parse_image(v: &Value, limits: &Limits) -> Result<InputImage, InputError> {
    let (Some(name), Some(data)) = (
        v.get("name").and_then(Value::as_str),
        v.get("image").and_then(Value::as_str),
    ) else {
        return Err(InputError::BadImages);
    };
    check_image_name(name)?;
    // A data URI (`data:image/png;base64,…`) carries its prefix up to the first comma.
    let b64 = match data.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, b)| b).unwrap_or(""),
        None => data,
    };
    // Decoded size is 3/4 of the text: refuse before decoding.
    check_size(
        &format!("image {name:?}"),
        b64.len() / 4 * 3,
        limits.image_bytes,
    )?;
    let cleaned: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cleaned.trim_end_matches('='))
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.trim_end_matches('='))
        })
        .map_err(|e| InputError::BadBase64 {
            name: name.into(),
            reason: e.to_string(),
        })?;
    if bytes.is_empty() {
        return Err(InputError::BadBase64 {
            name: name.into(),
            reason: "no data".into(),
        });
    }
    Ok(InputImage {
        name: name.into(),
        bytes,
    })
}

/// An input image name is one plain file name: it lands in ComfyUI's input folder.
pub fn check_image_name(name: &str) -> Result<(), InputError> {
    let bad = |reason| {
        Err(InputError::BadImageName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if name.contains('\0') {
        return bad("contains a NUL byte");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("must be a file name, not a path");
    }
    if name == "." || name == ".." || name.starts_with('.') {
        return bad("must not start with a dot");
    }
    if name.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}

/// One output file of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputFile {
    pub filename: String,
    /// `base64` (the file is in `data`), or the kind of link a sink returned.
    #[serde(rename = "type")]
    pub kind: String,
    pub data: String,
    /// Of the file's bytes, so two runs can be compared by hash.
    pub sha256: String,
    /// The node output key it came under: `images`, `gifs`, `videos`, `audio`, …
    pub output: String,
    pub node: String,
    /// `gs://bucket/object`, when the file went to GCS (`type: "gcs_url"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gs_uri: Option<String>,
}

/// A successful job's `output`. Images are under `images` (what worker-comfyui's clients
/// decode as pictures); videos, audio and other files under keys of their own, so a client
/// that decodes every `images[].data` as a picture never meets an mp4 or a latent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobOutput {
    /// `success_no_images` when the job produced no image, as worker-comfyui says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub images: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub videos: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audio: Vec<OutputFile>,
    /// Anything else (`.latent`, `.json`, meshes, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OutputFile>,
    /// Non-fatal problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl JobOutput {
    /// File `f` under the key its kind belongs to (by its extension).
    pub fn push(&mut self, f: OutputFile) {
        let ext = f
            .filename
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        let list = match ext.as_str() {
            "png" | "jpg" | "jpeg" | "webp" | "gif" | "bmp" | "tif" | "tiff" | "avif" => {
                &mut self.images
            }
            "mp4" | "webm" | "mov" | "mkv" | "avi" | "m4v" => &mut self.videos,
            "wav" | "flac" | "mp3" | "ogg" | "opus" | "m4a" | "aac" => &mut self.audio,
            _ => &mut self.files,
        };
        list.push(f);
    }

    /// Every output file, whatever its kind: images, videos, audio, then the rest.
    pub fn all(&self) -> impl Iterator<Item = &OutputFile> {
        self.images
            .iter()
            .chain(&self.videos)
            .chain(&self.audio)
            .chain(&self.files)
    }

    /// Whether the job produced any file.
    pub fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }

    /// Say `success_no_images` when there is no image, as worker-comfyui does.
    pub fn finish(mut self) -> JobOutput {
        if self.images.is_empty() {
            self.status = Some("success_no_images".into());
        }
        self
    }
}

/// A failed job's answer: `{"error": …, "details": […]}`.
pub fn error_answer(error: &str, details: &[String]) -> Value {
    serde_json::json!({ "error": error, "details": details })
}

/// A failed job's answer split as RunPod reports it: its `error` (popped to the top), and the
/// rest as the output.
pub fn pop_error(mut answer: Value) -> (Option<Value>, Value) {
    let error = answer.as_object_mut().and_then(|o| o.remove("error"));
    (error, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wf() -> Value {
        json!({"1": {"class_type": "EmptyImage", "inputs": {}}})
    }

    #[test]
    fn workflow_as_object_or_string() {
        let l = Limits::default();
        assert!(parse_input(&json!({"workflow": wf()}), &l).is_ok());
        let s = serde_json::to_string(&wf()).unwrap();
        assert!(parse_input(&json!({"workflow": s}), &l).is_ok());
        let whole = serde_json::to_string(&json!({"workflow": wf()})).unwrap();
        assert!(parse_input(&Value::String(whole), &l).is_ok());
        assert_eq!(
            parse_input(&json!({}), &l).unwrap_err(),
            InputError::MissingWorkflow
        );
        assert_eq!(
            parse_input(&Value::Null, &l).unwrap_err(),
            InputError::NoInput
        );
        assert!(matches!(
            parse_input(&Value::String("{oops".into()), &l).unwrap_err(),
            InputError::InvalidJson(_)
        ));
        assert!(matches!(
            parse_input(&json!({"workflow": {"1": {"inputs": {}}}}), &l).unwrap_err(),
            InputError::BadWorkflow(_)
        ));
    }

    #[test]
    fn images_are_checked() {
        let l = Limits::default();
        let job = |name: &str, image: &str| {
            parse_input(
                &json!({"workflow": wf(), "images": [{"name": name, "image": image}]}),
                &l,
            )
        };
        let ok = job("in.png", "data:image/png;base64,aGVsbG8=").unwrap();
        assert_eq!(ok.images[0].bytes, b"hello");
        assert_eq!(job("in.png", "aGVsbG8").unwrap().images[0].bytes, b"hello");
        for bad in ["../x.png", "a/b.png", "x\0.png", "..", ".hidden", ""] {
            assert!(
                matches!(
                    job(bad, "aGVsbG8=").unwrap_err(),
                    InputError::BadImageName { .. }
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            job("x.png", "!!!").unwrap_err(),
            InputError::BadBase64 { .. }
        ));
        let small = Limits {
            image_bytes: 3,
            ..Limits::default()
        };
        let r = parse_input(
            &json!({"workflow": wf(), "images": [{"name": "x.png", "image": "aGVsbG8gd29ybGQ="}]}),
            &small,
        );
        assert!(matches!(r.unwrap_err(), InputError::TooLarge { .. }));
        assert_eq!(
            parse_input(&json!({"workflow": wf(), "images": {"a": 1}}), &l).unwrap_err(),
            InputError::BadImages
        );
    }

    #[test]
    fn the_reference_workflow_is_a_valid_job() {
        let wf: Value = serde_json::from_str(include_str!("../../workflows/minimal.json")).unwrap();
        let job = parse_input(&json!({ "workflow": wf }), &Limits::default()).unwrap();
        assert_eq!(job.workflow.len(), 3);
    }

    #[test]
    fn the_workflow_keeps_the_clients_key_order() {
        let text = r#"{"5":{"inputs":{"width":8,"batch_size":1},"class_type":"EmptyImage"},"10":{"class_type":"X"}}"#;
        let l = Limits::default();
        let as_object: Value = serde_json::from_str(text).unwrap();
        for input in [
            json!({ "workflow": as_object }),
            json!({ "workflow": text }),
        ] {
            let job = parse_input(&input, &l).unwrap();
            assert_eq!(serde_json::to_string(&job.workflow).unwrap(), text);
        }
    }

    #[test]
    fn a_job_file_is_a_job_an_input_or_a_bare_workflow() {
        let l = Limits::default();
        let text = r#"{"9":{"class_type":"SaveImage","inputs":{}},"1":{"class_type":"EmptyImage","inputs":{}}}"#;
        let bare: Value = serde_json::from_str(text).unwrap();
        for doc in [
            json!({ "input": { "workflow": bare.clone() } }),
            json!({ "workflow": bare.clone() }),
            bare.clone(),
        ] {
            let job = parse_input(&input_of(doc), &l).unwrap();
            assert_eq!(serde_json::to_string(&job.workflow).unwrap(), text);
        }
        // A node may be called "input": a bare workflow still.
        let odd = json!({"input": {"class_type": "EmptyImage", "inputs": {}}});
        assert_eq!(input_of(odd.clone()), json!({ "workflow": odd }));
        assert!(parse_input(&input_of(json!([1])), &l).is_err());
        assert!(parse_input(&input_of(json!({})), &l).is_err());
    }

    #[test]
    fn timeouts() {
        let l = Limits::default();
        let t = parse_input(&json!({"workflow": wf(), "timeout_s": 2.5}), &l).unwrap();
        assert_eq!(t.timeout, Some(Duration::from_millis(2500)));
        assert!(parse_input(&json!({"workflow": wf(), "timeout_s": -1}), &l).is_err());
        assert!(parse_input(&json!({"workflow": wf(), "timeout_s": "x"}), &l).is_err());
    }
}
