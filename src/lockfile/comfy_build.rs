//! comfy-cli's build definition (`comfy build scan` writes it, `comfy build create` sends it to
//! Comfy's builder), JSON or YAML (e.g. `comfy-build.yaml`):
//!
//! ```yaml
//! schema: distribution-definition/0
//! baseComfyVersion: v0.3.43            # a tag, branch or commit
//! models:
//!   - {type: checkpoints, filename: x.safetensors, sha256: …, sizeBytes: 123, source: local,
//!      sourceUri: https://…}          # or blobId: … (a private upload)
//! customNodes:
//!   - {name: ComfyUI-Foo, repository: https://github.com/…, gitRef: <commit>, source: git}
//!   - {name: comfyui-bar, id: comfyui-bar, registryVersion: 1.2.0, source: registry}
//! pipDependencies: |                   # a pip freeze, with a comment header
//!   torch==2.5.1
//! environment: {os: Linux, arch: x86_64, pythonVersion: 3.11.9, torch: 2.5.1}
//! baseImage: …                         # the builder's form only
//! ```

use super::formats::{self, GitRef};
use super::{redact_url, ComfyUi, CustomNode, Lockfile, Python, Registry};
use serde::{Deserialize, Serialize};

/// The schema line `comfy build scan` writes.
pub const SCHEMA: &str = "distribution-definition/0";
/// Also accepted as a schema line for a `comfy-build.yaml`.
pub const SCHEMA_ALIAS: &str = "comfy-build/1";

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Definition {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_comfy_version: Option<String>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub custom_nodes: Vec<BuildNode>,
    #[serde(default, deserialize_with = "super::formats::null_as_empty")]
    pub models: Vec<BuildModel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pip_dependencies: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildModel {
    /// The folder under `models/` (`checkpoints`, `ultralytics/bbox`).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `local` in a scan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildNode {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_version: Option<String>,
    /// `git`, `registry` or `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Environment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
}

/// A build definition as a lockfile.
pub fn import(
    d: &Definition,
    tag: &str,
    comfyui_repo: Option<&str>,
    warnings: &mut Vec<String>,
    refs: &mut Vec<GitRef>,
) -> Lockfile {
    let mut lock = Lockfile::new(tag);
    match d.base_comfy_version.as_deref().map(str::trim) {
        Some(c) if super::is_commit(c) => {
            lock.comfyui = ComfyUi {
                repo: Some(redact_url(
                    comfyui_repo.unwrap_or(super::snapshot::COMFYUI_REPO),
                )),
                commit: Some(c.to_string()),
                ..Default::default()
            };
            if comfyui_repo.is_none() {
                warnings.push(format!(
                    "baseComfyVersion: its commit is taken from {} (give --comfyui-repo for a fork)",
                    super::snapshot::COMFYUI_REPO
                ));
            }
        }
        Some(v) => {
            let warning = format!(
                "baseComfyVersion {v:?} is a tag or branch, not a commit: ComfyUI is not pinned \
                 (a lock pins commits; --resolve-refs asks the repository for its commit)"
            );
            let repo = comfyui_repo.unwrap_or(super::snapshot::COMFYUI_REPO);
            if formats::is_plain_ref(v) && super::check_repo(repo).is_ok() {
                refs.push(GitRef {
                    node: None,
                    repo: redact_url(repo),
                    reference: v.to_string(),
                    warning: warning.clone(),
                });
            }
            warnings.push(warning);
        }
        None => warnings.push("baseComfyVersion missing: ComfyUI is not pinned".into()),
    }
    if let Some(img) = &d.base_image {
        warnings.push(format!(
            "baseImage {img:?}: a builder image, not part of a lock; not imported"
        ));
    }
    for n in &d.custom_nodes {
        let name = n.name.clone();
        if super::check_node_name(&name).is_err() {
            warnings.push(format!(
                "custom node {name:?}: not a usable folder name; not imported"
            ));
            continue;
        }
        let node = match (&n.repository, &n.git_ref, &n.id, &n.registry_version) {
            (Some(repo), Some(r), _, _) if super::is_commit(r) => {
                if super::check_repo(repo).is_err() {
                    warnings.push(format!(
                        "custom node {name}: repository {:?} is not a git URL; not imported",
                        redact_url(repo)
                    ));
                    continue;
                }
                CustomNode {
                    name: name.clone(),
                    repo: Some(redact_url(repo)),
                    commit: Some(r.clone()),
                    ..Default::default()
                }
            }
            (_, _, id, Some(v)) if !v.is_empty() => CustomNode {
                name: name.clone(),
                registry: Some(Registry {
                    id: id.clone().filter(|i| !i.is_empty()).unwrap_or(name.clone()),
                    version: v.clone(),
                }),
                ..Default::default()
            },
            (Some(repo), Some(r), _, _) => {
                let warning = format!(
                    "custom node {name}: gitRef {r:?} is not a commit; not imported \
                     (--resolve-refs asks the repository for its commit)"
                );
                if formats::is_plain_ref(r) && super::check_repo(repo).is_ok() {
                    refs.push(GitRef {
                        node: Some(name.clone()),
                        repo: redact_url(repo),
                        reference: r.clone(),
                        warning: warning.clone(),
                    });
                }
                warnings.push(warning);
                continue;
            }
            _ => {
                let why = if n.blob_id.is_some() {
                    "an uploaded blob (blobId) comfystore cannot fetch"
                } else {
                    "no repository + commit and no registry version (a local folder)"
                };
                warnings.push(format!("custom node {name}: {why}; not imported"));
                continue;
            }
        };
        if lock.custom_nodes.iter().any(|c| c.name == node.name) {
            warnings.push(format!("{name}: listed twice; the first entry is kept"));
            continue;
        }
        lock.custom_nodes.push(node);
    }
    if let Some(pips) = &d.pip_dependencies {
        let packages = formats::freeze_packages(pips, "pipDependencies", warnings);
        if !packages.is_empty() {
            lock.python.get_or_insert_with(Python::default).packages = packages;
        }
    }
    if let Some(env) = &d.environment {
        if let Some(v) = env
            .python_version
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        {
            lock.python.get_or_insert_with(Python::default).version = Some(v.trim().into());
        }
        if env.os.is_some() || env.arch.is_some() {
            warnings.push(format!(
                "environment: captured on {}/{}; the pins are that platform's (a lock is for one platform)",
                env.os.as_deref().unwrap_or("?"),
                env.arch.as_deref().unwrap_or("?")
            ));
        }
    }
    for (i, m) in d.models.iter().enumerate() {
        let Some(f) = &m.filename else {
            warnings.push(format!(
                "models[{i}] (type {:?}): no filename; not imported",
                m.kind
            ));
            continue;
        };
        let path = format!("models/{}/{f}", m.kind);
        let sources: Vec<String> = m
            .source_uri
            .iter()
            .filter(|u| super::check_url(u).is_ok())
            .map(|u| redact_url(u))
            .collect();
        if m.blob_id.is_some() && sources.is_empty() {
            warnings.push(format!(
                "model {path:?}: an uploaded blob (blobId) with no public source; not imported"
            ));
            continue;
        }
        formats::push_model(
            &mut lock,
            &path,
            m.size_bytes,
            m.sha256.as_deref(),
            sources,
            warnings,
        );
    }
    lock.canonicalize();
    lock
}

/// A lockfile as a build definition: ComfyUI's commit, the nodes by repository + commit or
/// registry version, the pinned packages as a freeze list, and the models with sha256, size and
/// source. What the format cannot hold is named in `warnings`.
pub fn export(lock: &Lockfile, warnings: &mut Vec<String>) -> Definition {
    let mut d = Definition {
        schema: Some(SCHEMA.into()),
        base_comfy_version: lock.comfyui.commit.clone(),
        ..Default::default()
    };
    if d.base_comfy_version.is_none() {
        warnings
            .push("comfyui: no commit (locked by its tree only); baseComfyVersion left out".into());
    }
    for n in &lock.custom_nodes {
        if n.disabled {
            warnings.push(format!(
                "custom node {}: disabled; a build definition has no disabled nodes, left out",
                n.name
            ));
            continue;
        }
        let node = match (&n.repo, &n.commit, &n.registry) {
            (Some(repo), Some(commit), _) => BuildNode {
                name: n.name.clone(),
                repository: Some(repo.clone()),
                git_ref: Some(commit.clone()),
                source: Some("git".into()),
                ..Default::default()
            },
            (_, _, Some(r)) => BuildNode {
                name: n.name.clone(),
                id: Some(r.id.clone()),
                registry_version: Some(r.version.clone()),
                source: Some("registry".into()),
                ..Default::default()
            },
            _ => {
                warnings.push(format!(
                    "custom node {}: no repository + commit or registry version (a local folder or file); left out",
                    n.name
                ));
                continue;
            }
        };
        d.custom_nodes.push(node);
    }
    if let Some(py) = &lock.python {
        let mut freeze = String::new();
        for p in &py.packages {
            match (&p.url, p.version.is_empty()) {
                (Some(u), _) if p.wheel.is_none() => {
                    freeze.push_str(&format!("{} @ {u}\n", p.name))
                }
                (_, false) => freeze.push_str(&format!("{}=={}\n", p.name, p.version)),
                _ => warnings.push(format!("python package {}: no version; left out", p.name)),
            }
        }
        if !freeze.is_empty() {
            d.pip_dependencies = Some(freeze);
        }
        d.environment = Some(Environment {
            python_version: py.version.clone(),
            torch: py
                .packages
                .iter()
                .find(|p| p.name == "torch")
                .map(|p| p.version.clone()),
            ..Default::default()
        });
        if py.packages.iter().any(|p| p.wheel.is_some()) {
            warnings.push("python: wheel URLs and sha256s are not part of a build definition; only name==version is written".into());
        }
    }
    for m in &lock.models {
        let rel = m.path.strip_prefix("models/").unwrap_or(&m.path);
        let Some((kind, filename)) = rel.rsplit_once('/') else {
            warnings.push(format!(
                "model {}: not in a folder under models/; left out",
                m.path
            ));
            continue;
        };
        let source_uri = m
            .sources
            .iter()
            .find(|u| u.starts_with("https://"))
            .cloned();
        if source_uri.is_none() {
            warnings.push(format!(
                "model {}: no https source; written without sourceUri",
                m.path
            ));
        }
        d.models.push(BuildModel {
            kind: kind.to_string(),
            filename: Some(filename.to_string()),
            sha256: Some(
                m.sha256
                    .to_string()
                    .trim_start_matches("sha256:")
                    .to_string(),
            ),
            size_bytes: m.size,
            source_uri,
            ..Default::default()
        });
    }
    d
}
