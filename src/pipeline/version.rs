//! A lockfile as one tree: the layout of a runnable ComfyUI version.
//!
//! ```text
//! (ComfyUI tree)                      at the top
//! custom_nodes/NAME/...               each node (disabled ones under custom_nodes/.disabled/)
//! venv/...                            the Python environment
//! models/...                          each model at its lock path
//! ```
//!
//! Because a version is just a tree, everything `materialize`, `status` and `remove` do for
//! trees (stat-cache checks, in-place switching that keeps user files, per-prefix link modes)
//! works for versions, and `verify LOCK DEST` is a status check against this tree.

use crate::lockfile::{Lockfile, Part, DISABLED_DIR};
use crate::pipeline::error::{Error, IoContext, Result};
use crate::store::{Entry, Manifest, Node, ObjectId, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where the environment goes inside a version.
pub const VENV_DIR: &str = "venv";

/// The folder (under `models/`) that ComfyUI's `extra_model_paths.yaml` maps to a shared
/// models folder.
pub const MODELS_DIR: &str = "models";
/// The file ComfyUI reads at startup to find model folders outside its own.
pub const EXTRA_MODEL_PATHS: &str = "extra_model_paths.yaml";

/// What goes into a version besides the lock's trees and models.
#[derive(Clone, Debug, Default)]
pub struct Parts {
    /// The environment, rendered for where it is placed (at `venv/`); `None` with
    /// `env_elsewhere` false means the store cannot supply it.
    pub env: Option<Manifest>,
    /// The environment is placed outside DEST (`--venv DIR`).
    pub env_elsewhere: bool,
    /// Models under `models/` are placed in this shared folder instead.
    pub models_dir: Option<PathBuf>,
}

/// Whether a lock path is one `--models-dir` moves out of DEST, and its path there.
pub fn shared_model_path(path: &str) -> Option<&str> {
    path.strip_prefix(MODELS_DIR)?.strip_prefix('/')
}

/// ComfyUI's `extra_model_paths.yaml` for models kept in `dir`: one entry per model folder the
/// lock uses (folder names are ComfyUI's model kinds: checkpoints, loras, vae, …).
pub fn extra_model_paths(lock: &Lockfile, dir: &Path) -> String {
    let kinds: BTreeSet<&str> = lock
        .models
        .iter()
        .filter_map(|m| shared_model_path(&m.path))
        .filter_map(|rest| rest.split_once('/').map(|(k, _)| k))
        .collect();
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut y = String::from(
        "# Written by comfystore materialize --models-dir: this version's models live in a shared folder.\n",
    );
    y.push_str(&format!(
        "comfystore:\n  base_path: {}\n",
        quote(&dir.to_string_lossy())
    ));
    for k in kinds {
        y.push_str(&format!("  {}: {}\n", quote(k), quote(&format!("{k}/"))));
    }
    y
}

/// A lock's version tree, or what keeps the store from building it.
#[derive(Clone, Debug)]
pub struct Version {
    pub manifest: Manifest,
    /// Parts whose tree (or single-file node) the store lacks (`comfyui`, `custom_nodes/X`,
    /// `python`): left out of `manifest`. Models are always in it.
    pub missing: Vec<String>,
}

/// Build the version tree of `lock` from the parts `wants` selects.
pub fn compose(
    store: &Store,
    lock: &Lockfile,
    wants: impl Fn(Part) -> bool,
    parts: &Parts,
) -> Result<Version> {
    let mut entries: BTreeMap<String, Node> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut put = |path: String, node: Node, owner: &str| -> Result<()> {
        match entries.insert(path.clone(), node) {
            // Two parts may imply the same folder; anything else is a clash.
            Some(Node::Dir) | None => Ok(()),
            Some(_) => Err(Error::bad_input(
                format!("lock {}", lock.tag),
                format!("{owner}: {path:?} is placed twice"),
            )),
        }
    };
    let mut trees: Vec<(String, Option<ObjectId>, String)> = Vec::new();
    if wants(Part::Nodes) {
        trees.push((String::new(), lock.comfyui.tree, "comfyui".into()));
        for n in &lock.custom_nodes {
            let base = if n.disabled {
                format!("custom_nodes/{DISABLED_DIR}/{}", n.name)
            } else {
                format!("custom_nodes/{}", n.name)
            };
            let label = format!("custom_nodes/{}", n.name);
            match n.file {
                Some(id) => match store.find_object(&id, false) {
                    Some(p) => {
                        let size = std::fs::metadata(&p).ctx("stat", &p)?.len();
                        put(
                            base,
                            Node::File {
                                exec: false,
                                size,
                                id,
                            },
                            &label,
                        )?;
                    }
                    None => missing.push(label),
                },
                None => trees.push((base, n.tree, label)),
            }
        }
    }
    if wants(Part::Python) && lock.python.is_some() && !parts.env_elsewhere {
        match &parts.env {
            Some(env) => {
                put(VENV_DIR.into(), Node::Dir, "python")?;
                for e in &env.entries {
                    put(format!("{VENV_DIR}/{}", e.path), e.node.clone(), "python")?;
                }
            }
            None => missing.push("python".into()),
        }
    }
    for (base, tree, label) in trees {
        let Some(id) = tree.filter(|t| store.has_tree(t)) else {
            missing.push(label);
            continue;
        };
        if !base.is_empty() {
            put(base.clone(), Node::Dir, &label)?;
        }
        for e in store.read_tree(&id)?.entries {
            let path = if base.is_empty() {
                e.path
            } else {
                format!("{base}/{}", e.path)
            };
            put(path, e.node, &label)?;
        }
    }
    // Models need no store object to be checked (a file is vouched for by its hash), only to
    // be placed; callers that place check `has_object`.
    if wants(Part::Models) {
        for m in lock
            .models
            .iter()
            .filter(|m| parts.models_dir.is_none() || shared_model_path(&m.path).is_none())
        {
            let node = Node::File {
                exec: false,
                size: m.size,
                id: m.blake3,
            };
            put(m.path.clone(), node, &m.path)?;
        }
    }
    if wants(Part::Models) {
        if let Some(dir) = &parts.models_dir {
            let yaml = extra_model_paths(lock, dir);
            let put_yaml = store.put_bytes(yaml.as_bytes(), false, false)?;
            // Ours wins over one the ComfyUI tree carries: it is what makes the models found.
            entries.insert(
                EXTRA_MODEL_PATHS.into(),
                Node::File {
                    exec: false,
                    size: put_yaml.digests.size,
                    id: put_yaml.digests.b3,
                },
            );
        }
    }
    let mut manifest = Manifest {
        entries: entries
            .into_iter()
            .map(|(path, node)| Entry { path, node })
            .collect(),
    };
    manifest.sort();
    manifest.validate().map_err(|e| {
        Error::bad_input(
            format!("lock {}", lock.tag),
            format!("its parts do not fit together: {e}"),
        )
    })?;
    Ok(Version { manifest, missing })
}
