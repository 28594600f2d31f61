//! `import-hf-cache`: the LFS files of a Hugging Face hub cache into the store, without
//! downloading them again.
//!
//! An LFS blob is named by its SHA-256 (`<hub>/models--org--name/blobs/<sha256>`), and the
//! `snapshots/<revision>/<path>` links to it say where it came from: each blob is copied into
//! the store in one read (BLAKE3 and SHA-256 together), checked against its name, and given
//! its `resolve/<revision>/<path>` URL as a source, so a later `lock` names it. The cache's
//! files are read, never linked: their mode, owner and link count stay as they are.

use super::error::{Error, IoContext, Result};
use super::lock::models::scan_hf_caches;
use crate::store::{ObjectId, Root, Sha256, Store};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// What one hub cache gave.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HubReport {
    pub hub: PathBuf,
    /// The GC root that keeps its blobs in the store (`hf-cache/<hash of the hub's path>`).
    pub root: String,
    /// Blobs copied into the store now, and their bytes.
    pub added: usize,
    pub added_bytes: u64,
    /// Blobs the store already held (their source is recorded all the same).
    pub present: usize,
    /// Blobs no snapshot links to (no revision, so no URL): stored, without a source.
    pub without_source: usize,
    /// Blobs whose bytes do not have the SHA-256 their name says: not stored.
    pub damaged: Vec<String>,
}

/// Import every hub in `hubs` (each a `hub` folder: the one holding `models--…` folders).
pub fn import_hf_caches(store: &Store, hubs: &[PathBuf]) -> Result<Vec<HubReport>> {
    let _writer = store.lock_shared()?;
    hubs.iter().map(|hub| import_hub(store, hub)).collect()
}

fn import_hub(store: &Store, hub: &Path) -> Result<HubReport> {
    let hub = hub.canonicalize().ctx("open", hub)?;
    if !hub.is_dir() {
        return Err(Error::bad_input(
            &hub,
            "not a folder (a Hugging Face hub cache)",
        ));
    }
    let urls = scan_hf_caches(std::slice::from_ref(&hub));
    let key = blake3::hash(hub.to_string_lossy().as_bytes()).to_hex();
    let mut report = HubReport {
        root: format!("hf-cache/{}", &key[..16]),
        hub: hub.clone(),
        ..Default::default()
    };
    let mut ids: Vec<ObjectId> = Vec::new();
    for (sha, blob) in blobs(&hub)? {
        let id = match store.lookup_sha256(&sha)?.filter(|b3| store.has_object(b3)) {
            Some(id) => {
                report.present += 1;
                id
            }
            None => {
                let put = store.put_file(&blob, false, true)?;
                if put.digests.sha256 != Some(sha) {
                    report.damaged.push(blob.display().to_string());
                    continue;
                }
                store.record_object(&put)?;
                report.added += 1;
                report.added_bytes += put.digests.size;
                put.digests.b3
            }
        };
        match urls.get(&sha) {
            Some(url) => store.add_source(&id, url)?,
            None => report.without_source += 1,
        }
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    store.add_root(
        &report.root,
        &Root {
            ids,
            path: Some(hub),
            ..Default::default()
        },
    )?;
    Ok(report)
}

/// Every LFS blob of the hub's repos: (its SHA-256, its path). Only regular files named by a
/// SHA-256 count (small files are stored under their git id, 40 hex, and have no SHA-256 to
/// be known by); a symlink is never followed out of the cache.
fn blobs(hub: &Path) -> Result<Vec<(Sha256, PathBuf)>> {
    let mut out = Vec::new();
    for repo in fs::read_dir(hub).ctx("list", hub)? {
        let repo = repo.ctx("list", hub)?;
        let name = repo.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("models--") || name.starts_with("datasets--")) {
            continue;
        }
        let dir = repo.path().join("blobs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).ctx("list", &dir),
        };
        for e in entries {
            let e = e.ctx("list", &dir)?;
            let Some(sha) = e.file_name().to_str().and_then(Sha256::from_hex) else {
                continue;
            };
            if e.file_type().ctx("stat", &e.path())?.is_file() {
                out.push((sha, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}
