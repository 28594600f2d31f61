//! Status: DEST compared with a tree, entry by entry, plus the files it does not list.

use super::check::{commit_cache, load, Checked, Checker, EntryState, Found};
use super::scan::{extras, scan, Scan};
use crate::place::error::{IoContext, Result};
use crate::store::{Manifest, ObjectId, Store};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Result of `status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusReport {
    pub tree: Option<ObjectId>,
    pub complete: bool,
    pub entries: u64,
    pub ok: u64,
    pub missing: Vec<String>,
    pub modified: Vec<String>,
    /// Store objects found changed in place (through a hardlink or symlink).
    pub store_objects_changed: Vec<String>,
    /// Files and symlinks in DEST that the tree does not list (user files).
    pub extra: Vec<String>,
    pub rehashed: u64,
}

impl StatusReport {
    pub fn is_clean(&self) -> bool {
        self.complete
            && self.missing.is_empty()
            && self.modified.is_empty()
            && self.store_objects_changed.is_empty()
    }
}

/// Compare DEST with the tree its marker names.
pub fn status(store: &Store, dest: &Path, verify: bool) -> Result<StatusReport> {
    let dest = dest.canonicalize().ctx("resolve", dest)?;
    let Found {
        marker,
        manifest,
        scan,
        checked,
    } = load(store, &dest, verify, "not a materialized directory")?;
    summarize(
        store,
        &manifest,
        &scan,
        checked,
        Some(marker.tree),
        marker.complete,
    )
}

/// Compare DEST with `manifest`, whatever DEST's marker says (or without one: an install
/// made by other means). `complete` is reported as true.
pub fn status_against(
    store: &Store,
    dest: &Path,
    manifest: &Manifest,
    verify: bool,
) -> Result<StatusReport> {
    status_against_scanned(store, scan_ahead(dest)?, manifest, verify)
}

/// DEST's scan, made before the tree to compare it with is known (a caller composing that
/// tree can scan meanwhile, on another thread: `verify` does).
pub struct Scanned {
    dest: PathBuf,
    scan: Scan,
}

/// Scan DEST for [`status_against_scanned`].
pub fn scan_ahead(dest: &Path) -> Result<Scanned> {
    let dest = dest.canonicalize().ctx("resolve", dest)?;
    let scan = scan(&dest)?;
    Ok(Scanned { dest, scan })
}

/// [`status_against`] with DEST scanned beforehand.
pub fn status_against_scanned(
    store: &Store,
    Scanned { dest, scan }: Scanned,
    manifest: &Manifest,
    verify: bool,
) -> Result<StatusReport> {
    let checker = Checker {
        store,
        dest: &dest,
        verify,
    };
    let checked = checker.check_all(manifest, &scan)?;
    summarize(store, manifest, &scan, checked, None, true)
}

/// Turn per-entry checks into a report, and save the stat-cache rows they produced.
fn summarize(
    store: &Store,
    manifest: &Manifest,
    scan: &Scan,
    checked: Vec<Checked>,
    tree: Option<ObjectId>,
    complete: bool,
) -> Result<StatusReport> {
    let mut report = StatusReport {
        tree,
        complete,
        entries: manifest.entries.len() as u64,
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (e, c) in manifest.entries.iter().zip(checked) {
        report.rehashed += c.rehashed as u64;
        rows.extend(c.cache);
        match c.state {
            EntryState::Ok => report.ok += 1,
            EntryState::Missing => report.missing.push(e.path.clone()),
            EntryState::Modified { .. } => report.modified.push(e.path.clone()),
            EntryState::StoreObjectChanged => report.store_objects_changed.push(e.path.clone()),
        }
    }
    report.extra = extras(manifest, scan);
    commit_cache(store, rows)?;
    Ok(report)
}
