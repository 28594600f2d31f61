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

use crate::lockfile::{CustomNode, Lockfile, Part, DISABLED_DIR};
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

/// `lock` with the blake3 of each model that names only its sha256 filled in, where the store
/// has a file with that sha256. Nothing else changes; what `fetch --update-lock` writes.
pub fn complete_models(store: &Store, lock: &Lockfile) -> Result<Lockfile> {
    let mut out = lock.clone();
    for m in out.models.iter_mut().filter(|m| m.blake3.is_none()) {
        m.blake3 = store.lookup_sha256(&m.sha256)?;
        // A format that records no size (comfy-cli): the stored file's.
        if let (Some(id), None) = (m.blake3, m.size) {
            let path = store.object_path(&id, false);
            m.size = Some(std::fs::metadata(&path).ctx("stat", &path)?.len());
        }
    }
    Ok(out)
}

/// A model's store id; an error names the model whose blake3 is unknown and what to run.
pub fn model_id(m: &crate::lockfile::Model) -> Result<ObjectId> {
    m.id().map_err(|e| Error::bad_input(&m.path, e))
}

/// A model's size; an error names the model whose size is unknown and what to run.
pub fn model_size(m: &crate::lockfile::Model) -> Result<u64> {
    m.bytes().map_err(|e| Error::bad_input(&m.path, e))
}

/// Build the version tree of `lock` from the parts `wants` selects.
pub fn compose(
    store: &Store,
    lock: &Lockfile,
    wants: impl Fn(Part) -> bool,
    parts: &Parts,
) -> Result<Version> {
    let mut c = Composer {
        lock,
        entries: BTreeMap::new(),
        missing: Vec::new(),
    };
    let trees = if wants(Part::Nodes) {
        c.put_nodes(store)?
    } else {
        Vec::new()
    };
    if wants(Part::Python) && lock.python.is_some() && !parts.env_elsewhere {
        c.put_env(parts.env.as_ref())?;
    }
    c.put_trees(store, trees)?;
    if wants(Part::Models) {
        c.put_models(parts)?;
        if let Some(dir) = &parts.models_dir {
            c.put_extra_model_paths(store, dir)?;
        }
    }
    c.finish()
}

/// The tree of a locked source: the lock's own, else the one `fetch` recorded for its repo and
/// commit (a lock imported from a Manager snapshot names no trees). `excludes` are the
/// top-level names its tree leaves out. Callers pass no repo for a dirty source: its commit
/// does not say what it held.
pub fn source_tree(
    store: &Store,
    tree: Option<ObjectId>,
    repo: Option<&str>,
    commit: Option<&str>,
    excludes: &[String],
) -> Result<Option<ObjectId>> {
    match (tree, repo, commit) {
        (Some(t), _, _) => Ok(Some(t)),
        (None, Some(repo), Some(commit)) => Ok(store.git_tree(repo, commit, excludes)?),
        _ => Ok(None),
    }
}

/// A part whose tree goes in at `base` ("" for the top): ComfyUI or a custom node.
struct TreePart {
    base: String,
    tree: Option<ObjectId>,
    label: String,
}

/// Where a custom node sits in a version (disabled ones under `custom_nodes/.disabled/`).
pub fn node_path(n: &CustomNode) -> String {
    if n.disabled {
        format!("custom_nodes/{DISABLED_DIR}/{}", n.name)
    } else {
        format!("custom_nodes/{}", n.name)
    }
}

/// A version tree being built: its entries by path, and the parts the store lacks.
struct Composer<'a> {
    lock: &'a Lockfile,
    entries: BTreeMap<String, Node>,
    missing: Vec<String>,
}

impl Composer<'_> {
    /// Add one entry for `owner`. Two parts may imply the same folder; anything else placed
    /// twice is a clash.
    fn put(&mut self, path: String, node: Node, owner: &str) -> Result<()> {
        match self.entries.insert(path.clone(), node) {
            Some(Node::Dir) | None => Ok(()),
            Some(_) => Err(Error::bad_input(
                format!("lock {}", self.lock.tag),
                format!("{owner}: {path:?} is placed twice"),
            )),
        }
    }

    /// ComfyUI and the custom nodes: single-file nodes go in now; the trees (ComfyUI's
    /// first) are returned to go in after the environment.
    fn put_nodes(&mut self, store: &Store) -> Result<Vec<TreePart>> {
        let lock = self.lock;
        let c = &lock.comfyui;
        let mut trees = vec![TreePart {
            base: String::new(),
            tree: source_tree(
                store,
                c.tree,
                c.repo.as_deref().filter(|_| !c.dirty),
                c.commit.as_deref(),
                &crate::lockfile::comfyui_excludes(),
            )?,
            label: "comfyui".into(),
        }];
        for n in &lock.custom_nodes {
            let base = node_path(n);
            let label = format!("custom_nodes/{}", n.name);
            let Some(id) = n.file else {
                let repo = n.repo.as_deref().filter(|_| !n.dirty);
                let commit = n.commit.as_deref();
                trees.push(TreePart {
                    base,
                    tree: source_tree(store, n.tree, repo, commit, &[])?,
                    label,
                });
                continue;
            };
            match store.find_object(&id, false) {
                Some(p) => {
                    let size = std::fs::metadata(&p).ctx("stat", &p)?.len();
                    let node = Node::File {
                        exec: false,
                        size,
                        id,
                    };
                    self.put(base, node, &label)?;
                }
                None => self.missing.push(label),
            }
        }
        Ok(trees)
    }

    /// The environment at `venv/` (`None`: the store cannot supply it).
    fn put_env(&mut self, env: Option<&Manifest>) -> Result<()> {
        let Some(env) = env else {
            self.missing.push("python".into());
            return Ok(());
        };
        self.put(VENV_DIR.into(), Node::Dir, "python")?;
        for e in &env.entries {
            self.put(format!("{VENV_DIR}/{}", e.path), e.node.clone(), "python")?;
        }
        Ok(())
    }

    /// Each tree's entries under its base; a tree the store lacks is missing.
    fn put_trees(&mut self, store: &Store, trees: Vec<TreePart>) -> Result<()> {
        for TreePart { base, tree, label } in trees {
            let Some(id) = tree.filter(|t| store.has_tree(t)) else {
                self.missing.push(label);
                continue;
            };
            if !base.is_empty() {
                self.put(base.clone(), Node::Dir, &label)?;
            }
            for e in store.read_tree(&id)?.entries {
                let path = if base.is_empty() {
                    e.path
                } else {
                    format!("{base}/{}", e.path)
                };
                self.put(path, e.node, &label)?;
            }
        }
        Ok(())
    }

    /// Each model at its lock path, except those a shared models folder holds. Models need
    /// no store object to be checked (a file is vouched for by its hash), only to be placed;
    /// callers that place check `has_object`.
    fn put_models(&mut self, parts: &Parts) -> Result<()> {
        let lock = self.lock;
        for m in lock
            .models
            .iter()
            .filter(|m| parts.models_dir.is_none() || shared_model_path(&m.path).is_none())
        {
            let node = Node::File {
                exec: false,
                size: model_size(m)?,
                id: model_id(m)?,
            };
            self.put(m.path.clone(), node, &m.path)?;
        }
        Ok(())
    }

    /// The `extra_model_paths.yaml` that points ComfyUI at the shared models folder `dir`.
    /// Ours wins over one the ComfyUI tree carries: it is what makes the models found.
    fn put_extra_model_paths(&mut self, store: &Store, dir: &Path) -> Result<()> {
        let yaml = extra_model_paths(self.lock, dir);
        let put_yaml = store.put_bytes(yaml.as_bytes(), false, false)?;
        self.entries.insert(
            EXTRA_MODEL_PATHS.into(),
            Node::File {
                exec: false,
                size: put_yaml.digests.size,
                id: put_yaml.digests.b3,
            },
        );
        Ok(())
    }

    /// The sorted, validated tree.
    fn finish(self) -> Result<Version> {
        let mut manifest = Manifest {
            entries: self
                .entries
                .into_iter()
                .map(|(path, node)| Entry { path, node })
                .collect(),
        };
        manifest.sort();
        manifest.validate().map_err(|e| {
            Error::bad_input(
                format!("lock {}", self.lock.tag),
                format!("its parts do not fit together: {e}"),
            )
        })?;
        Ok(Version {
            manifest,
            missing: self.missing,
        })
    }
}
