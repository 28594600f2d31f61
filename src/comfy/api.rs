//! ComfyUI's HTTP answers, read leniently: the shapes differ between ComfyUI versions
//! (`error` a string or an object, `node_errors` a list or a map), and a worker must turn
//! every one of them into a clear job error rather than fail to parse it.
//!
//! Only parsing lives here; the recorded answers of a real ComfyUI 0.3.26 in
//! `tests/fixtures/comfyui/` are its tests.

use serde_json::Value;

/// What `POST /prompt` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued under this id.
    Queued { prompt_id: String },
    /// Refused: a message and one line per node problem.
    Refused { error: String, details: Vec<String> },
}

/// Read a `POST /prompt` answer (`status`, JSON `body`).
pub fn read_submit(status: u16, body: &Value) -> Submitted {
    if (200..300).contains(&status) {
        if let Some(id) = body.get("prompt_id").and_then(Value::as_str) {
            return Submitted::Queued {
                prompt_id: id.to_string(),
            };
        }
    }
    let error = match body.get("error") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(e)) => {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("error");
            match e
                .get("details")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                Some(d) => format!("{msg}: {d}"),
                None => msg.to_string(),
            }
        }
        _ => format!("ComfyUI answered {status} without a prompt id"),
    };
    let details = node_errors(body.get("node_errors"));
    Submitted::Refused {
        error: validation_message(&error, &details),
        details,
    }
}

/// The one message a client that shows only `error` needs, as worker-comfyui writes it: every
/// node's problem on a line of its own and, when a model or file the workflow names is not
/// there, what to do about it.
fn validation_message(error: &str, details: &[String]) -> String {
    let mut msg = format!("Workflow validation failed: {error}");
    for d in details {
        msg.push_str("\n• ");
        msg.push_str(d);
    }
    if details.iter().any(|d| d.contains("not in list")) {
        msg.push_str(
            "\nA file the workflow names (a model, a LoRA, an input image) is not in this \
             version: add it to the lock (or upload the input with the job), or fix the name.",
        );
    }
    msg
}

/// `node_errors` as lines `Node 5 (LoadImage): image - Invalid image file: nope.png`,
/// from a map (node id → {errors, class_type}) or a list (old builds' early exits).
pub fn node_errors(v: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let mut one = |id: &str, node: &Value| {
        let class = node
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let errors = node.get("errors").and_then(Value::as_array);
        for e in errors.into_iter().flatten() {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            let details = e.get("details").and_then(Value::as_str).unwrap_or("");
            let text = if details.is_empty() {
                msg.to_string()
            } else {
                format!("{msg}: {details}")
            };
            out.push(format!("Node {id} ({class}): {text}"));
        }
    };
    match v {
        Some(Value::Object(m)) => {
            let mut ids: Vec<&String> = m.keys().collect();
            ids.sort();
            for id in ids {
                one(id, &m[id]);
            }
        }
        Some(Value::Array(list)) => {
            for (i, node) in list.iter().enumerate() {
                let id = node
                    .get("node_id")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| i.to_string());
                one(&id, node);
            }
        }
        _ => {}
    }
    out
}

/// A file a node produced, as `/history` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Produced {
    pub node: String,
    /// The output key: `images`, `gifs`, `videos`, `audio`, …
    pub output: String,
    pub filename: String,
    pub subfolder: String,
    /// `output` or `temp` (previews) or `input`.
    pub kind: String,
}

/// How a prompt ended, from its `/history/{id}` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Not in the history yet (still queued or running).
    Pending,
    Success {
        files: Vec<Produced>,
    },
    Failed {
        error: String,
        details: Vec<String>,
        files: Vec<Produced>,
    },
}

/// Read `GET /history/{prompt_id}` for `prompt_id`. Every output key that lists files is kept
/// (video, audio, not only images), previews (`temp`) too: the caller answers without them
/// but deletes them.
pub fn read_history(body: &Value, prompt_id: &str) -> Finished {
    let Some(entry) = body.get(prompt_id) else {
        return Finished::Pending;
    };
    let files = produced_files(entry);
    let status_str = entry
        .get("status")
        .and_then(|s| s.get("status_str"))
        .and_then(Value::as_str)
        .unwrap_or("success");
    let details = status_messages(entry);
    let interrupted = details
        .iter()
        .any(|d| d.starts_with("Workflow interrupted"));
    if status_str == "error" || !details.is_empty() {
        Finished::Failed {
            error: if interrupted {
                "Job interrupted".into()
            } else {
                "Job processing failed".into()
            },
            details,
            files,
        }
    } else {
        Finished::Success { files }
    }
}

/// The files an entry's `outputs` list, in ComfyUI's own order (nodes as it finished them,
/// as worker-comfyui answers them; serde_json keeps the order it received).
fn produced_files(entry: &Value) -> Vec<Produced> {
    let mut files = Vec::new();
    let Some(outputs) = entry.get("outputs").and_then(Value::as_object) else {
        return files;
    };
    for (node, out) in outputs {
        let Some(keys) = out.as_object() else {
            continue;
        };
        for (key, list) in keys {
            for f in list.as_array().into_iter().flatten() {
                let (Some(filename), kind) = (
                    f.get("filename").and_then(Value::as_str),
                    f.get("type").and_then(Value::as_str).unwrap_or("output"),
                ) else {
                    continue;
                };
                files.push(Produced {
                    node: node.clone(),
                    output: key.clone(),
                    filename: filename.to_string(),
                    subfolder: f
                        .get("subfolder")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    kind: kind.to_string(),
                });
            }
        }
    }
    files
}

/// One line per execution error or interruption in an entry's `status.messages`.
fn status_messages(entry: &Value) -> Vec<String> {
    let messages = entry
        .get("status")
        .and_then(|s| s.get("messages"))
        .and_then(Value::as_array);
    let mut details = Vec::new();
    for m in messages.into_iter().flatten() {
        let (Some(kind), Some(data)) = (m.get(0).and_then(Value::as_str), m.get(1)) else {
            continue;
        };
        let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("?");
        match kind {
            "execution_error" => details.push(format!(
                "Workflow execution error: Node Type: {}, Node ID: {}, Message: {}",
                field("node_type"),
                field("node_id"),
                field("exception_message").trim()
            )),
            "execution_interrupted" => details.push(format!(
                "Workflow interrupted at node {} ({})",
                field("node_id"),
                field("node_type")
            )),
            _ => {}
        }
    }
    details
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded `{status, body}` answer of ComfyUI 0.3.26.
    fn recorded(text: &str) -> (u16, Value) {
        let v: Value = serde_json::from_str(text).unwrap();
        let status = v["status"].as_u64().unwrap_or(200) as u16;
        (status, v["body"].clone())
    }

    #[test]
    fn prompt_answers_of_every_shape() {
        let (s, b) = recorded(include_str!(
            "../../tests/fixtures/comfyui/post_prompt_ok.json"
        ));
        assert!(matches!(read_submit(s, &b), Submitted::Queued { .. }));
        let (s, b) = recorded(include_str!(
            "../../tests/fixtures/comfyui/post_prompt_missing_node.json"
        ));
        let Submitted::Refused { error, .. } = read_submit(s, &b) else {
            panic!()
        };
        assert!(error.contains("NoSuchNode"), "{error}");
        let (s, b) = recorded(include_str!(
            "../../tests/fixtures/comfyui/post_prompt_bad_values.json"
        ));
        let Submitted::Refused { details, error } = read_submit(s, &b) else {
            panic!()
        };
        assert!(
            details
                .iter()
                .any(|d| d.starts_with("Node 5 (LoadImage)") && d.contains("nope.png")),
            "{details:?}"
        );
        // The one message names the node and the file too (clients that show only `error`).
        assert!(
            error.contains("\n• Node 5 (LoadImage)") && error.contains("nope.png"),
            "{error}"
        );
        let (s, b) = recorded(include_str!(
            "../../tests/fixtures/comfyui/post_prompt_no_prompt.json"
        ));
        assert_eq!(
            read_submit(s, &b),
            Submitted::Refused {
                error: "Workflow validation failed: no prompt".into(),
                details: vec![]
            }
        );
    }

    #[test]
    fn a_missing_model_is_named_in_the_one_message_with_what_to_do() {
        let body = serde_json::json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""},
            "node_errors": {"4": {"class_type": "CheckpointLoaderSimple", "errors": [{
                "type": "value_not_in_list", "message": "Value not in list",
                "details": "ckpt_name: 'sdxl.safetensors' not in ['v1-5.safetensors']"}]}}
        });
        let Submitted::Refused { error, .. } = read_submit(400, &body) else {
            panic!()
        };
        assert!(
            error.contains("Node 4 (CheckpointLoaderSimple)")
                && error.contains("sdxl.safetensors")
                && error.contains("add it to the lock"),
            "{error}"
        );
    }

    #[test]
    fn outputs_keep_comfyuis_order() {
        let entry: Value = serde_json::from_str(
            r#"{"outputs": {
                "9": {"images": [{"filename": "a.png", "type": "output"}]},
                "10": {"videos": [{"filename": "b.mp4", "type": "output"}],
                       "images": [{"filename": "c.png", "type": "output"}]},
                "2": {"images": [{"filename": "d.png", "type": "output"}]}}}"#,
        )
        .unwrap();
        let names: Vec<String> = produced_files(&entry)
            .into_iter()
            .map(|f| f.filename)
            .collect();
        assert_eq!(names, ["a.png", "b.mp4", "c.png", "d.png"]);
    }

    #[test]
    fn history_outputs_and_errors() {
        let ok: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/comfyui/history_success.json"
        ))
        .unwrap();
        let id = ok.as_object().unwrap().keys().next().unwrap().clone();
        let Finished::Success { files } = read_history(&ok, &id) else {
            panic!()
        };
        assert!(!files.is_empty());
        // Previews are listed (the worker deletes them) but are the only temp files.
        let (temp, saved): (Vec<&Produced>, Vec<&Produced>) =
            files.iter().partition(|f| f.kind == "temp");
        assert_eq!(temp.len(), 1, "{files:?}");
        assert_eq!(saved.len(), 2, "{files:?}");
        assert!(saved
            .iter()
            .all(|f| f.node == "4" && f.subfolder == "probe"));
        assert_eq!(read_history(&ok, "other"), Finished::Pending);
        let err: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/comfyui/history_exec_error.json"
        ))
        .unwrap();
        let id = err.as_object().unwrap().keys().next().unwrap().clone();
        let Finished::Failed { details, .. } = read_history(&err, &id) else {
            panic!()
        };
        assert!(
            details[0].contains("SaveImage") && details[0].contains("outside the output folder")
        );
    }
}
