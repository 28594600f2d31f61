//! The marker a materialized directory carries: which tree it holds, from which store, how it
//! was linked, and which GC root keeps it alive. `remove` deletes only what the marker's tree
//! lists, and refuses a directory without a marker.

use super::link::{LinkPolicy, Method};
use crate::place::error::{Error, Result};
pub use crate::store::MARKER_NAME;
use crate::store::{ObjectId, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SCHEMA: &str = "comfystore.materialized/1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    pub schema: String,
    pub tree: ObjectId,
    pub store: PathBuf,
    /// Name of the GC root under `<store>/roots/`.
    pub root: String,
    /// False while files are being written: a crash leaves an incomplete marker, which
    /// `status`, a new `materialize` and `remove` all handle.
    pub complete: bool,
    pub policy: LinkPolicy,
    /// Per policy prefix ("" is the default), how many files each method placed.
    pub used: BTreeMap<String, BTreeMap<Method, u64>>,
    /// Where a lock's parts went besides DEST (a version materialized from a lockfile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

impl Marker {
    pub fn new(tree: ObjectId, store: &Path, root: String, policy: LinkPolicy) -> Marker {
        Marker {
            schema: SCHEMA.into(),
            tree,
            store: store.to_path_buf(),
            root,
            complete: false,
            policy,
            used: BTreeMap::new(),
            layout: None,
        }
    }

    /// Read DEST's marker; `Ok(None)` if there is none.
    fn read(dest: &Path) -> Result<Option<Marker>> {
        let path = dest.join(MARKER_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let m: Marker = serde_json::from_slice(&bytes).map_err(|e| Error::BadMarker {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.schema != SCHEMA {
            return Err(Error::BadMarker {
                path,
                reason: format!("schema {:?} is not supported", m.schema),
            });
        }
        // Paths DEST's own file names are untrusted: they are read and hashed under DEST.
        let files = m.layout.iter().flat_map(|l| &l.source_data_files);
        for f in files {
            crate::store::check_rel_path(f).map_err(|e| {
                Error::bad_input(
                    &path,
                    format!("invalid materialize marker: source_data_files: {e}"),
                )
            })?;
        }
        Ok(Some(m))
    }

    /// Write atomically into DEST.
    pub fn write(&self, dest: &Path) -> Result<()> {
        let path = dest.join(MARKER_NAME);
        let mut body =
            serde_json::to_vec_pretty(self).map_err(|e| Error::bad_input(&path, e.to_string()))?;
        body.push(b'\n');
        Ok(crate::store::write_file_atomic(&path, &body, 0o644)?)
    }
}

/// DEST as its marker describes it.
#[derive(Clone, Debug, Default)]
pub struct Marked {
    /// `None`: DEST is not a materialized directory (no marker).
    pub marker: Option<Marker>,
    /// Where the version's parts went: what the marker records, else the default (all in DEST).
    pub layout: Layout,
}

/// Read DEST's marker and its Layout. The one reader: the engine, the pipelines and the CLI
/// all ask here, so they agree on whether DEST was materialized and how it was laid out.
///
/// The marker is user-writable data, so nothing in it is trusted that could reach outside
/// DEST: its `root` must be the one named by DEST's own path (or a root `store` registers to
/// this DEST), and each path its `layout` names must lie inside DEST or be one that DEST's
/// root in `store` registers (`Root::outside`). Anything else is refused, naming the field.
pub fn read_marker(store: &Store, dest: &Path) -> Result<Marked> {
    let marker = Marker::read(dest)?;
    if let Some(m) = &marker {
        check_trusted(store, dest, m)?;
    }
    let layout = marker
        .as_ref()
        .and_then(|m| m.layout.clone())
        .unwrap_or_default();
    Ok(Marked { marker, layout })
}

/// Refuse a marker whose `root` or `layout` paths reach outside DEST without the store's
/// word for it.
fn check_trusted(store: &Store, dest: &Path, m: &Marker) -> Result<()> {
    let dest = dest.canonicalize().unwrap_or_else(|_| dest.to_path_buf());
    let path = dest.join(MARKER_NAME);
    let refuse = |field: &str, why: String| {
        Err(Error::bad_input(
            &path,
            format!("untrusted materialize marker: field `{field}` {why}; refusing it (the marker is user-writable: remove the field, or materialize DEST again from a clean folder)"),
        ))
    };
    let own = super::dest::root_name(&dest);
    let own_root = store.read_root(&own).ok().flatten();
    if m.root != own {
        let other = store.read_root(&m.root).ok().flatten();
        let registered = other
            .as_ref()
            .and_then(|r| r.path.as_ref())
            .is_some_and(|p| *p == dest);
        // A DEST that was moved: its old root stands for a folder that is no longer there
        // (another materialized version's root is never stale like that).
        // A root that is not there at all names nothing to harm.
        let moved = m.root.starts_with("materialized/")
            && other
                .as_ref()
                .is_none_or(|r| r.path.as_ref().is_some_and(|p| !p.exists()));
        if !registered && !moved {
            return refuse(
                "root",
                format!(
                    "names {:?}, which is not DEST's own root ({own}) and which the store does not register to {}",
                    m.root,
                    dest.display()
                ),
            );
        }
    }
    let Some(layout) = &m.layout else {
        return Ok(());
    };
    let outside = own_root.map(|r| r.outside).unwrap_or_default();
    for (field, p) in [
        ("layout.venv", &layout.venv),
        ("layout.models_dir", &layout.models_dir),
        ("layout.python", &layout.python),
    ] {
        let Some(p) = p else { continue };
        if !inside(&dest, p) && !outside.iter().any(|o| o == p) {
            return refuse(
                field,
                format!(
                    "names {}, which is neither inside DEST nor registered to DEST in the store",
                    p.display()
                ),
            );
        }
    }
    Ok(())
}

/// `p` is DEST or below it: lexically (absolute, no `..`), and where it exists, after
/// resolving symlinks too.
fn inside(dest: &Path, p: &Path) -> bool {
    use std::path::Component;
    let lexical = p.is_absolute()
        && p.starts_with(dest)
        && !p.components().any(|c| matches!(c, Component::ParentDir));
    lexical && p.canonicalize().map_or(true, |c| c.starts_with(dest))
}

/// Where a lock's parts go besides DEST. Recorded in the marker, so `verify` and `remove`
/// see the version as `materialize` laid it out.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// The environment lives here instead of DEST/venv (materialized on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venv: Option<PathBuf>,
    /// Models under `models/` live here (shared between versions), named by DEST's
    /// `extra_model_paths.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    /// The base interpreter the environment's `pyvenv.cfg` and `bin/python` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<PathBuf>,
    /// The stored environment placed (a lock without `python.tree` finds its environment by
    /// its wheels; this keeps `verify` checking the one that was placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<ObjectId>,
    /// Files of the source tree at the top that lie inside the data folders (`models/`,
    /// `custom_nodes/`, … where ComfyUI's repo tracks a few of its own). A folder that is not
    /// a git checkout cannot tell them from the user's files, so `verify` reads them here to
    /// hash the source part of DEST without its stored tree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_data_files: Vec<String>,
}
