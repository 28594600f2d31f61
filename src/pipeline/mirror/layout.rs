//! The offline mirror folder's format (see the parent module for the layout) and what reading
//! it needs: the manifest, where a wheel lives, and importing its bundles. `fetch` reads
//! mirrors through this; `mirror` writes them.

use crate::pipeline::error::{IoContext, Result};
use crate::store::{ObjectId, Store};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const MIRROR_SCHEMA: &str = "comfystore.mirror/1";
pub const MANIFEST: &str = "mirror.json";

/// One file of a mirror.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct MirrorFile {
    /// Relative to the mirror folder.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub blake3: ObjectId,
}

/// `mirror.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MirrorManifest {
    pub schema: String,
    /// Tags of the locks mirrored.
    pub locks: Vec<String>,
    pub files: Vec<MirrorFile>,
}

/// Where a mirror keeps a wheel.
pub fn wheel_path(dir: &Path, file: &str) -> PathBuf {
    dir.join("wheels").join(file)
}

/// Import the bundles of a mirror that may hold a lock's trees: `bundles/TAG.bundle` if it
/// exists, else every bundle there. Every member is verified by `import`.
pub fn import_bundles(store: &Store, dir: &Path, tag: &str) -> Result<Vec<PathBuf>> {
    let bundles = dir.join("bundles");
    let own = bundles.join(format!("{tag}.bundle"));
    let list: Vec<PathBuf> = if own.is_file() {
        vec![own]
    } else {
        match fs::read_dir(&bundles) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "bundle"))
                    .collect();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        }
    };
    for b in &list {
        let mut f = fs::File::open(b).ctx("open", b)?;
        store.import(&mut f, b, false)?;
    }
    Ok(list)
}
