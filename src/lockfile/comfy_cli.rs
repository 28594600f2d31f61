//! comfy-cli's workspace lock, `comfy.lock.yaml` (README: "format of comfy-lock.yaml", beta):
//!
//! ```yaml
//! basics: {name: …, updated_at: …}      # README writes `basic:`
//! models:
//!   - model: name
//!     url: https://…
//!     paths: [{path: models/checkpoints/x.safetensors}]
//!     hash: …                          # what comfy-cli's save_yaml writes
//!     hashes: [{hash: …, type: SHA256}] # what the README documents (AutoV1, AutoV2, SHA256, CRC32, Blake3)
//!     type: checkpoint
//! custom_nodes:                        # ComfyUI-Manager's YAML snapshot (comfy-cli writes [] today)
//!   comfyui: <commit>
//!   git_custom_nodes: {<url>: {hash: <commit>, disabled: false}}
//!   file_custom_nodes: [{filename: x.py, disabled: false}]
//! ```

use super::formats;
use super::snapshot::{self, Snapshot};
use super::{redact_url, Lockfile};
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyLock {
    pub basics: Option<Basics>,
    /// The README's spelling of `basics`.
    pub basic: Option<Basics>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub models: Vec<LockModel>,
    /// A Manager snapshot (mapping), or the empty list comfy-cli writes.
    #[serde(default)]
    pub custom_nodes: serde_json::Value,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basics {
    pub name: Option<String>,
    pub updated_at: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockModel {
    pub model: Option<String>,
    pub url: Option<String>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub paths: Vec<ModelPath>,
    pub hash: Option<String>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub hashes: Vec<ModelHash>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPath {
    pub path: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelHash {
    pub hash: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl LockModel {
    /// The sha256 the entry records: a `hashes` entry of type SHA256, or a bare `hash` that
    /// has a sha256's form.
    fn sha256(&self) -> Option<String> {
        self.hashes
            .iter()
            .filter(|h| {
                h.kind
                    .as_deref()
                    .is_some_and(|k| k.eq_ignore_ascii_case("sha256"))
            })
            .find_map(|h| formats::sha256_hex(&h.hash))
            .or_else(|| self.hash.as_deref().and_then(formats::sha256_hex))
    }
}

/// A comfy-cli lock as a lockfile; `Err` names a field that is not what comfy-cli writes.
pub fn import(
    l: &ComfyLock,
    tag: &str,
    comfyui_repo: Option<&str>,
    warnings: &mut Vec<String>,
) -> std::result::Result<Lockfile, String> {
    let snap = match &l.custom_nodes {
        serde_json::Value::Null => Snapshot::default(),
        serde_json::Value::Array(a) => {
            if !a.is_empty() {
                warnings.push(format!(
                    "custom_nodes: {} list entr(y/ies) in a form comfy-cli does not define; not imported",
                    a.len()
                ));
            }
            Snapshot::default()
        }
        v @ serde_json::Value::Object(_) => serde_json::from_value::<Snapshot>(v.clone())
            .map_err(|e| format!("custom_nodes (a ComfyUI-Manager snapshot): {e}"))?,
        other => {
            return Err(format!(
                "custom_nodes: expected a ComfyUI-Manager snapshot (a mapping), found {other}"
            ))
        }
    };
    let mut lock = snapshot::import(&snap, tag, comfyui_repo, warnings);
    for (i, m) in l.models.iter().enumerate() {
        let sources: Vec<String> = m
            .url
            .iter()
            .filter(|u| super::check_url(u).is_ok())
            .map(|u| redact_url(u))
            .collect();
        let sha = m.sha256();
        let name = m.model.clone().unwrap_or_else(|| format!("models[{i}]"));
        if m.paths.is_empty() {
            warnings.push(format!("model {name:?}: no paths; not imported"));
        }
        for p in &m.paths {
            // comfy-cli records no size, which a lock needs to check a download.
            formats::push_model(
                &mut lock,
                &p.path,
                None,
                sha.as_deref(),
                sources.clone(),
                warnings,
            );
        }
    }
    lock.canonicalize();
    Ok(lock)
}
