//! ComfyUI-Manager snapshots, both ways, so users of `cm-cli restore-snapshot` and comfy-cli
//! can move to and from lockfiles.
//!
//! A snapshot knows commits, node repos, registry packs and `pip freeze`; it has no trees, no
//! hashes and no models, so an imported lock names what to fetch rather than what the store
//! holds. See `../shared/reference/comfy_runpod.md` §3 for the format.

use super::{
    normalize_package_name, redact_url, ComfyUi, CustomNode, Lockfile, Package, Python, Registry,
};
use crate::lockfile::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Where ComfyUI comes from when a snapshot does not say (it never does).
pub const COMFYUI_REPO: &str = "https://github.com/comfyanonymous/ComfyUI";

/// The snapshot as ComfyUI-Manager writes it (`get_current_snapshot`). Every field Manager
/// writes may be missing or `null` (it writes `"pips": null` when it saved no pips); any other
/// key is refused by name, since a misspelled one would drop its nodes without a word.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub comfyui: Option<String>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub git_custom_nodes: BTreeMap<String, GitNode>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub cnr_custom_nodes: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub file_custom_nodes: Vec<FileNode>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub pips: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitNode {
    pub hash: String,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNode {
    pub filename: String,
    #[serde(default)]
    pub disabled: bool,
}

/// The YAML form wraps the same dict under `custom_nodes` (Manager's `save_snapshot` for a
/// `.yaml` path, and what its restore reads).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlSnapshot<S> {
    custom_nodes: S,
}

impl Snapshot {
    /// Read a snapshot file, JSON or YAML.
    pub fn read(path: &Path) -> Result<Snapshot> {
        let text = std::fs::read_to_string(path).ctx("read", path)?;
        Snapshot::parse(&text, path)
    }

    /// Parse a snapshot's text, JSON or YAML; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Snapshot> {
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text)
                .map_err(|e| Error::bad_input(path, format!("not a ComfyUI-Manager snapshot: {e}")))
        } else {
            serde_saphyr::from_str::<YamlSnapshot<Snapshot>>(text)
                .map(|y| y.custom_nodes)
                .map_err(|e| Error::bad_input(path, format!("not a ComfyUI-Manager snapshot: {e}")))
        }
    }

    /// JSON as ComfyUI-Manager writes it (4-space indentation), with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        // Maps of strings cannot fail to serialise.
        let _ = self.serialize(&mut ser);
        out.push(b'\n');
        out
    }

    /// YAML as Manager's loader reads it: the snapshot under `custom_nodes:`.
    pub fn to_yaml(&self) -> Vec<u8> {
        let doc = YamlSnapshot { custom_nodes: self };
        // Maps of strings cannot fail to serialise.
        serde_saphyr::to_string(&doc)
            .unwrap_or_default()
            .into_bytes()
    }
}

/// The folder name git would clone `url` into.
pub(super) fn repo_dir_name(url: &str) -> String {
    let tail = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or(url);
    tail.strip_suffix(".git").unwrap_or(tail).to_string()
}

/// A snapshot as a lockfile: what it knows, with a warning for what it cannot say.
/// `comfyui_repo` is where its ComfyUI commit is (a snapshot does not say): upstream if
/// `None`, with a warning, since a fork's commit is not there.
pub fn import(
    snap: &Snapshot,
    tag: &str,
    comfyui_repo: Option<&str>,
    warnings: &mut Vec<String>,
) -> Lockfile {
    let mut lock = Lockfile::new(tag);
    lock.comfyui = ComfyUi {
        repo: Some(redact_url(comfyui_repo.unwrap_or(COMFYUI_REPO))),
        commit: snap.comfyui.clone().filter(|c| super::is_commit(c)),
        ..Default::default()
    };
    if lock.comfyui.commit.is_none() {
        lock.comfyui.repo = None;
        warnings.push("the snapshot names no ComfyUI commit".into());
    } else if comfyui_repo.is_none() {
        warnings.push(format!(
            "a snapshot does not say where ComfyUI came from: its commit is taken from {COMFYUI_REPO} (give --comfyui-repo for a fork)"
        ));
    }
    for (url, node) in &snap.git_custom_nodes {
        let name = repo_dir_name(url);
        if !super::is_commit(&node.hash) {
            warnings.push(format!(
                "{name}: commit {:?} is unknown; not imported",
                node.hash
            ));
            continue;
        }
        lock.custom_nodes.push(CustomNode {
            name,
            disabled: node.disabled,
            repo: Some(redact_url(url)),
            commit: Some(node.hash.clone()),
            ..Default::default()
        });
    }
    for (id, version) in &snap.cnr_custom_nodes {
        lock.custom_nodes.push(CustomNode {
            name: id.clone(),
            registry: Some(Registry {
                id: id.clone(),
                version: version.clone(),
            }),
            ..Default::default()
        });
    }
    for f in &snap.file_custom_nodes {
        warnings.push(format!(
            "{}: a single-file node; a snapshot holds no content for it, so it is not imported",
            f.filename
        ));
    }
    let mut packages = Vec::new();
    for (spec, url) in &snap.pips {
        if let Some((name, version)) = spec.split_once("==") {
            packages.push(Package {
                name: normalize_package_name(name.trim()),
                version: version.trim().to_string(),
                ..Default::default()
            });
        } else if !url.is_empty() && !spec.contains([' ', '<', '>', '=', '@']) {
            packages.push(Package {
                name: normalize_package_name(spec.trim()),
                url: Some(redact_url(url)),
                ..Default::default()
            });
        } else {
            warnings.push(format!(
                "pips: {spec:?} is not `name==version` or `name: url`; skipped"
            ));
        }
    }
    if !packages.is_empty() {
        lock.python = Some(Python {
            packages,
            ..Default::default()
        });
    }
    // Duplicate names (a repo and a registry pack of the same name) keep the first.
    let mut seen = std::collections::HashSet::new();
    lock.custom_nodes.retain(|n| {
        let keep = seen.insert(n.name.clone());
        if !keep {
            warnings.push(format!("{}: listed twice; the first entry is kept", n.name));
        }
        keep
    });
    lock.canonicalize();
    lock
}

/// A lockfile as a snapshot. Plain-folder nodes (no repo, no registry) and models have no
/// place in the format; they are reported.
pub fn export(lock: &Lockfile, warnings: &mut Vec<String>) -> Snapshot {
    let mut snap = Snapshot {
        comfyui: lock.comfyui.commit.clone(),
        ..Default::default()
    };
    for n in &lock.custom_nodes {
        match (&n.registry, &n.repo, &n.commit, n.file) {
            (Some(r), _, _, _) if !n.disabled && r.version != "nightly" => {
                snap.cnr_custom_nodes
                    .insert(r.id.clone(), r.version.clone());
            }
            (_, Some(repo), Some(commit), _) => {
                snap.git_custom_nodes.insert(
                    repo.clone(),
                    GitNode {
                        hash: commit.clone(),
                        disabled: n.disabled,
                    },
                );
            }
            (_, _, _, Some(_)) if n.name.ends_with(".py") => {
                snap.file_custom_nodes.push(FileNode {
                    filename: n.name.clone(),
                    disabled: n.disabled,
                })
            }
            _ => warnings.push(format!(
                "{}: neither a git repo nor a registry pack; a snapshot cannot name it",
                n.name
            )),
        }
    }
    for p in lock.python.iter().flat_map(|p| &p.packages) {
        match &p.url {
            Some(url) => snap.pips.insert(p.name.clone(), url.clone()),
            None => snap
                .pips
                .insert(format!("{}=={}", p.name, p.version), String::new()),
        };
    }
    if !lock.models.is_empty() {
        warnings.push(format!(
            "{} model(s) left out: ComfyUI-Manager snapshots have no models",
            lock.models.len()
        ));
    }
    snap
}
