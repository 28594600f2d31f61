//! comfy-pack (bentoml/comfy-pack) packages: a `.cpack.zip` holding `snapshot.json`,
//! `requirements.txt`, the workflow (`workflow.json`, `workflow_api.json`), `input/` files and
//! comfy-pack's own service code; or the `snapshot.json` alone.
//!
//! Two generations of `snapshot.json` exist, and both are read:
//! - before 0.4: `{python, comfyui, models, custom_nodes: [{url, commit_hash, disabled, path}]}`
//!   beside a `pip freeze` in `requirements.txt`;
//! - from 0.4: ComfyUI-Manager's snapshot (`comfyui`, `git_custom_nodes`, `cnr_custom_nodes`,
//!   `file_custom_nodes`, `pips`) plus `python` and `models`.
//!
//! A model is `{filename, size, sha256, disabled, source, atime, ctime, model_tag?,
//! refered?}`, where `source` is `{}` when unknown, or what comfy-pack found for the sha256:
//! a Hugging Face file pinned to a commit (`{source: "huggingface", repo, commit, path,
//! download_url, url}`) or a Civitai version (`{source: "civitai", download_url, url, repo,
//! commit, repo_name, version_name}`).

use super::formats::{self, Format};
use super::snapshot::{self, FileNode, GitNode, Snapshot};
use super::{redact_url, CustomNode, Lockfile, Python};
use crate::lockfile::error::{Error, IoContext, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The most of one zip member comfystore reads (a snapshot or requirements file is kilobytes;
/// a zip bomb stops here).
const MAX_MEMBER: u64 = 16 << 20;

/// comfy-pack's `snapshot.json`, either generation. Any other key is refused by name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpackSnapshot {
    /// ComfyUI's commit.
    pub comfyui: Option<String>,
    /// The Python it was packed with, `major.minor`.
    pub python: Option<String>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub models: Vec<CpackModel>,
    /// Before 0.4: the node repos.
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub custom_nodes: Vec<CpackNode>,
    /// From 0.4: ComfyUI-Manager's snapshot fields.
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub git_custom_nodes: BTreeMap<String, GitNode>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub cnr_custom_nodes: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub file_custom_nodes: Vec<FileNode>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub pips: BTreeMap<String, String>,
}

/// A node before 0.4.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpackNode {
    pub url: String,
    pub commit_hash: String,
    #[serde(default)]
    pub disabled: bool,
    /// The folder under `custom_nodes/` (with `.disabled` when disabled).
    pub path: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpackModel {
    /// Relative to the ComfyUI folder (`models/checkpoints/x.safetensors`).
    pub filename: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub source: Option<CpackSource>,
    pub atime: Option<f64>,
    pub ctime: Option<f64>,
    /// The BentoML model holding the file, when packed with the models.
    pub model_tag: Option<String>,
    /// Whether the workflow names it.
    pub refered: Option<bool>,
}

/// Where comfy-pack found a model (every field may be missing: `{}` is "not found").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpackSource {
    /// `huggingface` or `civitai`.
    pub source: Option<String>,
    pub download_url: Option<String>,
    pub url: Option<String>,
    /// Hugging Face repo id, or Civitai's numeric model id.
    pub repo: Option<serde_json::Value>,
    /// Hugging Face commit, or Civitai's numeric version id.
    pub commit: Option<serde_json::Value>,
    /// The file's path in the Hugging Face repo.
    pub path: Option<String>,
    pub repo_name: Option<String>,
    pub version_name: Option<String>,
}

fn as_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

impl CpackSource {
    /// The URLs the file can be downloaded from, best first: a pinned Hugging Face file by
    /// repo, commit and path; else the `download_url` when it is an http(s) URL.
    pub fn urls(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.source.as_deref() == Some("huggingface") {
            if let (Some(repo), Some(commit), Some(path)) =
                (as_text(&self.repo), as_text(&self.commit), &self.path)
            {
                out.extend(formats::huggingface_url(&repo, &commit, path));
            }
        }
        if let Some(u) = &self.download_url {
            let lower = u.to_ascii_lowercase();
            if (lower.starts_with("https://") || lower.starts_with("http://"))
                && super::check_url(u).is_ok()
                && !u.contains(' ')
            {
                out.push(redact_url(u));
            }
        }
        out.dedup();
        out
    }
}

/// Read a `.cpack.zip`: its `snapshot.json`, and `requirements.txt` when the snapshot has no
/// pips. Nothing is extracted; every other member is named in a warning.
pub fn import_zip(
    path: &Path,
    tag: &str,
    comfyui_repo: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Lockfile> {
    let bad = |m: String| Error::bad_input(path, m);
    let file = std::fs::File::open(path).ctx("open", path)?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a readable zip: {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("not a readable zip: {e}")))?;
    let mut read_member = |name: &str| -> Result<Option<String>> {
        let mut f = match zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(bad(format!("{name}: {e}"))),
        };
        let mut buf = Vec::new();
        (&mut f)
            .take(MAX_MEMBER + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if buf.len() as u64 > MAX_MEMBER {
            return Err(bad(format!("{name}: larger than {MAX_MEMBER} bytes")));
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| bad(format!("{name}: not UTF-8")))
    };
    let Some(text) = read_member("snapshot.json")? else {
        return Err(bad(
            "a comfy-pack package holds snapshot.json at its top; this zip has none".into(),
        ));
    };
    let requirements = read_member("requirements.txt")?;
    let member = Path::new("snapshot.json");
    let snap: CpackSnapshot = formats::parse_text(&text, member, Format::CpackSnapshot)
        .map_err(|e| bad(format!("{e}")))?;
    let mut lock = import(&snap, requirements.as_deref(), tag, comfyui_repo, warnings);
    for n in &names {
        match n.as_str() {
            "snapshot.json" | "requirements.txt" => {}
            "workflow.json" | "workflow_api.json" => warnings.push(format!(
                "{n}: a workflow, not part of a lock; not imported (keep it beside the lock)"
            )),
            _ if n.starts_with("input/") && !n.ends_with('/') => warnings.push(format!(
                "{n:?}: an input file, not part of a lock; not imported"
            )),
            _ => {}
        }
    }
    let other = names
        .iter()
        .filter(|n| {
            !n.ends_with('/')
                && !n.starts_with("input/")
                && ![
                    "snapshot.json",
                    "requirements.txt",
                    "workflow.json",
                    "workflow_api.json",
                ]
                .contains(&n.as_str())
        })
        .count();
    if other > 0 {
        warnings.push(format!(
            "{other} other file(s) in the package (comfy-pack's own service code) not imported"
        ));
    }
    lock.canonicalize();
    Ok(lock)
}

/// A comfy-pack snapshot (with the package's `requirements.txt`, if any) as a lock.
pub fn import(
    snap: &CpackSnapshot,
    requirements: Option<&str>,
    tag: &str,
    comfyui_repo: Option<&str>,
    warnings: &mut Vec<String>,
) -> Lockfile {
    // The Manager part goes through the snapshot importer.
    let manager = Snapshot {
        comfyui: snap.comfyui.clone(),
        git_custom_nodes: snap.git_custom_nodes.clone(),
        cnr_custom_nodes: snap.cnr_custom_nodes.clone(),
        file_custom_nodes: snap.file_custom_nodes.clone(),
        pips: snap.pips.clone(),
    };
    let mut lock = snapshot::import(&manager, tag, comfyui_repo, warnings);
    for n in &snap.custom_nodes {
        let name = n
            .path
            .as_deref()
            .map(|p| p.strip_suffix(".disabled").unwrap_or(p).to_string())
            .unwrap_or_else(|| snapshot::repo_dir_name(&n.url));
        if !super::is_commit(&n.commit_hash) {
            warnings.push(format!(
                "custom node {name:?}: commit {:?} is not a commit id; not imported",
                n.commit_hash
            ));
            continue;
        }
        if super::check_node_name(&name).is_err() || super::check_repo(&n.url).is_err() {
            warnings.push(format!(
                "custom node {name:?} from {:?}: not a usable folder name or git URL; not imported",
                redact_url(&n.url)
            ));
            continue;
        }
        if lock.custom_nodes.iter().any(|c| c.name == name) {
            warnings.push(format!("{name}: listed twice; the first entry is kept"));
            continue;
        }
        lock.custom_nodes.push(CustomNode {
            name,
            disabled: n.disabled || n.path.as_deref().is_some_and(|p| p.ends_with(".disabled")),
            repo: Some(redact_url(&n.url)),
            commit: Some(n.commit_hash.clone()),
            ..Default::default()
        });
    }
    if let Some(req) = requirements {
        if snap.pips.is_empty() {
            let packages = formats::freeze_packages(req, "requirements.txt", warnings);
            if !packages.is_empty() {
                lock.python.get_or_insert_with(Python::default).packages = packages;
            }
        } else {
            warnings.push(
                "requirements.txt: not read; the snapshot's pips (the same environment) are used"
                    .into(),
            );
        }
    }
    if let Some(v) = snap.python.as_deref().filter(|v| !v.trim().is_empty()) {
        lock.python.get_or_insert_with(Python::default).version = Some(v.trim().to_string());
    }
    for m in &snap.models {
        let urls = m.source.as_ref().map(CpackSource::urls).unwrap_or_default();
        if m.disabled {
            warnings.push(format!(
                "model {:?}: not selected for the package (disabled: comfy-pack does not install it by default); not imported",
                m.filename
            ));
            continue;
        }
        formats::push_model(
            &mut lock,
            &m.filename,
            m.size,
            m.sha256.as_deref(),
            urls,
            warnings,
        );
    }
    lock.canonicalize();
    lock
}
