//! The marker a materialized directory carries: which tree it holds, from which store, how it
//! was linked, and which GC root keeps it alive. `remove` deletes only what the marker's tree
//! lists, and refuses a directory without a marker.

use super::link::{LinkPolicy, Method};
use crate::place::error::{Error, Result};
use crate::store::ObjectId;
pub use crate::store::MARKER_NAME;
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
        let m: Marker = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_input(&path, format!("invalid materialize marker: {e}")))?;
        if m.schema != SCHEMA {
            return Err(Error::bad_input(
                &path,
                format!("marker schema {:?} is not supported", m.schema),
            ));
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
pub fn read_marker(dest: &Path) -> Result<Marked> {
    let marker = Marker::read(dest)?;
    let layout = marker
        .as_ref()
        .and_then(|m| m.layout.clone())
        .unwrap_or_default();
    Ok(Marked { marker, layout })
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
