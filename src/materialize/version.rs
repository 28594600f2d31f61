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

use crate::error::{Error, IoContext, Result};
use crate::fetch::Part;
use crate::lock::{Lockfile, DISABLED_DIR};
use crate::store::{Entry, Manifest, Node, ObjectId, Store};
use std::collections::BTreeMap;

/// Where the environment goes inside a version.
pub const VENV_DIR: &str = "venv";

/// A lock's version tree, or what keeps the store from building it.
#[derive(Clone, Debug)]
pub struct Version {
    pub manifest: Manifest,
    /// Parts whose tree (or single-file node) the store lacks (`comfyui`, `custom_nodes/X`,
    /// `python`): left out of `manifest`. Models are always in it.
    pub missing: Vec<String>,
}

/// Build the version tree of `lock` from the parts `wants` selects.
pub fn compose(store: &Store, lock: &Lockfile, wants: impl Fn(Part) -> bool) -> Result<Version> {
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
    if wants(Part::Python) {
        if let Some(py) = &lock.python {
            trees.push((VENV_DIR.into(), py.tree, "python".into()));
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
        for m in &lock.models {
            let node = Node::File {
                exec: false,
                size: m.size,
                id: m.blake3,
            };
            put(m.path.clone(), node, &m.path)?;
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
