//! The placing engine: turn a stored tree into a real directory, check it, repair it, remove
//! it. It knows trees and paths, not lockfiles.
//!
//! Every operation starts from one scan of DEST (never following symlinks) compared with the
//! tree, so the three commands agree on what "intact" means. Content is checked through the
//! index's stat cache: a file whose (device, inode, size, mtime, ctime) is unchanged since it
//! was placed or last verified is not read again.

pub mod error;

pub use error::{Error, Result};
pub mod link;
mod marker;

pub use link::{LinkMode, LinkPolicy, Method, PrefixRule};
pub use marker::{Layout, Marker, MARKER_NAME};

use crate::store::{Entry, Manifest, Node, ObjectId, Root, StatKey, Store};
use error::IoContext;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The state of one tree entry in DEST.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum EntryState {
    Ok,
    Missing,
    /// Present but different (content, kind, mode or symlink target).
    Modified {
        reason: String,
    },
    /// A hardlinked (or symlinked) file was written through: the store object itself changed.
    StoreObjectChanged,
}

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

/// Result of `materialize`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MaterializeReport {
    pub tree: Option<ObjectId>,
    pub dest: PathBuf,
    /// Entries written (new or repaired).
    pub written: u64,
    /// Entries already intact and left alone.
    pub unchanged: u64,
    /// Entries of the previous tree that the new one does not have, removed.
    pub removed: u64,
    /// Entries of the previous tree that were modified by the user: kept.
    pub kept_modified: Vec<String>,
    pub methods: BTreeMap<Method, u64>,
    pub extra: u64,
}

/// Result of `remove`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoveReport {
    pub removed_entries: u64,
    pub removed_dirs: u64,
    /// Files the tree does not list (or that were modified), left in place.
    pub kept: Vec<String>,
    pub dest_removed: bool,
}

/// What a scan of DEST found at one path (lstat, never followed).
struct Seen {
    meta: fs::Metadata,
}

/// lstat every path under DEST except the marker.
fn scan_dest(dest: &Path) -> Result<HashMap<String, Seen>> {
    let mut out = HashMap::new();
    if !dest.exists() {
        return Ok(out);
    }
    for e in walkdir::WalkDir::new(dest).follow_links(false).min_depth(1) {
        let e = e.map_err(|e| {
            let path = e.path().unwrap_or(dest).to_path_buf();
            Error::Io {
                op: "walk",
                path,
                source: e.into(),
            }
        })?;
        let rel = e.path().strip_prefix(dest).unwrap_or(e.path());
        let Some(rel) = rel.to_str() else { continue };
        if rel == MARKER_NAME {
            continue;
        }
        let meta = e.metadata().map_err(|err| Error::Io {
            op: "stat",
            path: e.path().to_path_buf(),
            source: err.into(),
        })?;
        out.insert(rel.to_string(), Seen { meta });
    }
    Ok(out)
}

/// Directories a tree implies: every ancestor of every entry, plus its empty-dir entries.
fn tree_dirs(m: &Manifest) -> Vec<String> {
    let mut dirs: HashSet<&str> = HashSet::new();
    for e in &m.entries {
        let mut end = 0;
        while let Some(i) = e.path[end..].find('/') {
            dirs.insert(&e.path[..end + i]);
            end += i + 1;
        }
        if matches!(e.node, Node::Dir) {
            dirs.insert(&e.path);
        }
    }
    let mut v: Vec<String> = dirs.into_iter().map(str::to_string).collect();
    v.sort();
    v
}

/// Canonical DEST, refusing places whose removal or overwrite would be a disaster.
fn check_dest(store: &Store, dest: &Path, create: bool) -> Result<PathBuf> {
    if create {
        fs::create_dir_all(dest).ctx("create", dest)?;
    }
    let dest = dest.canonicalize().ctx("resolve", dest)?;
    let bad = |reason: &str| Err(Error::bad_input(&dest, reason.to_string()));
    if dest.parent().is_none() {
        return bad("refusing to use / as a destination");
    }
    if dest.starts_with(store.root()) {
        return bad("refusing a destination inside the store");
    }
    if store.root().starts_with(&dest) {
        return bad("refusing a destination that contains the store");
    }
    Ok(dest)
}

fn root_name(dest: &Path) -> String {
    let h = blake3::hash(dest.as_os_str().as_encoded_bytes()).to_hex();
    format!("materialized/{}", &h[..32])
}

/// Checks DEST entries against a tree, using and updating the stat cache.
struct Checker<'a> {
    store: &'a Store,
    dest: &'a Path,
    verify: bool,
}

struct Checked {
    state: EntryState,
    rehashed: bool,
    /// A fresh stat-cache row, when the content was verified by hashing.
    cache: Option<(StatKey, ObjectId)>,
}

impl Checker<'_> {
    /// Check every entry; returns states in entry order.
    fn check_all(&self, m: &Manifest, seen: &HashMap<String, Seen>) -> Result<Vec<Checked>> {
        // Stat-cache keys of the file contents to check (the target for symlink-mode files).
        let mut keys = Vec::new();
        let mut key_of: Vec<Option<usize>> = Vec::with_capacity(m.entries.len());
        let mut metas: Vec<Option<fs::Metadata>> = Vec::with_capacity(m.entries.len());
        for e in &m.entries {
            let content = match (&e.node, seen.get(&e.path)) {
                (Node::File { id, exec, .. }, Some(s)) if s.meta.file_type().is_symlink() => {
                    self.symlink_target_meta(&e.path, id, *exec)
                }
                (Node::File { .. }, Some(s)) => Some(s.meta.clone()),
                _ => None,
            };
            key_of.push(content.as_ref().map(|c| {
                keys.push(StatKey::of(c));
                keys.len() - 1
            }));
            metas.push(content);
        }
        let cached = match (self.verify, self.store.index()) {
            (false, Some(index)) => index.lookup_stats(&keys)?,
            _ => vec![None; keys.len()],
        };
        m.entries
            .par_iter()
            .zip(key_of.par_iter())
            .zip(metas.par_iter())
            .map(|((e, k), meta)| {
                self.check_one(
                    e,
                    seen.get(&e.path),
                    meta.as_ref(),
                    k.and_then(|k| cached[k]),
                )
            })
            .collect()
    }

    /// For a file placed as a symlink into the store: the target's metadata, if the link points
    /// at the right object.
    fn symlink_target_meta(&self, rel: &str, id: &ObjectId, exec: bool) -> Option<fs::Metadata> {
        let target = fs::read_link(self.dest.join(rel)).ok()?;
        let ok = target == self.store.object_path(id, exec)
            || target == self.store.object_path(id, !exec);
        if ok {
            fs::metadata(&target).ok()
        } else {
            None
        }
    }

    fn check_one(
        &self,
        e: &Entry,
        seen: Option<&Seen>,
        content: Option<&fs::Metadata>,
        cached: Option<ObjectId>,
    ) -> Result<Checked> {
        let plain = |state| {
            Ok(Checked {
                state,
                rehashed: false,
                cache: None,
            })
        };
        let modified = |reason: &str| {
            plain(EntryState::Modified {
                reason: reason.into(),
            })
        };
        let Some(seen) = seen else {
            return plain(EntryState::Missing);
        };
        let ft = seen.meta.file_type();
        match &e.node {
            Node::Dir => {
                if ft.is_dir() {
                    plain(EntryState::Ok)
                } else {
                    modified("not a directory")
                }
            }
            Node::Symlink { target } => {
                if !ft.is_symlink() {
                    return modified("not a symlink");
                }
                match fs::read_link(self.dest.join(&e.path)) {
                    Ok(t) if t.as_os_str() == target.as_str() => plain(EntryState::Ok),
                    _ => modified("symlink target differs"),
                }
            }
            Node::File { exec, size, id } => {
                let Some(meta) = content else {
                    return modified(if ft.is_symlink() {
                        "symlink does not point at its store object"
                    } else {
                        "not a regular file"
                    });
                };
                if !meta.is_file() {
                    return modified("not a regular file");
                }
                if (meta.permissions().mode() & 0o111 != 0) != *exec {
                    return modified("executable bit differs");
                }
                let path = self.dest.join(&e.path);
                let shares_store_inode = self.same_inode_as_object(meta, id);
                if meta.len() != *size {
                    let state = if shares_store_inode {
                        EntryState::StoreObjectChanged
                    } else {
                        EntryState::Modified {
                            reason: "size differs".into(),
                        }
                    };
                    return plain(state);
                }
                if cached == Some(*id) {
                    return plain(EntryState::Ok);
                }
                let (actual, _) = crate::store::b3_file(&path).ctx("read", &path)?;
                let key = StatKey::of(meta);
                if actual == *id {
                    Ok(Checked {
                        state: EntryState::Ok,
                        rehashed: true,
                        cache: Some((key, *id)),
                    })
                } else if shares_store_inode {
                    Ok(Checked {
                        state: EntryState::StoreObjectChanged,
                        rehashed: true,
                        cache: None,
                    })
                } else {
                    Ok(Checked {
                        state: EntryState::Modified {
                            reason: "content differs".into(),
                        },
                        rehashed: true,
                        cache: None,
                    })
                }
            }
        }
    }

    fn same_inode_as_object(&self, meta: &fs::Metadata, id: &ObjectId) -> bool {
        [false, true].iter().any(|exec| {
            fs::symlink_metadata(self.store.object_path(id, *exec))
                .map(|o| o.dev() == meta.dev() && o.ino() == meta.ino())
                .unwrap_or(false)
        })
    }
}

fn commit_cache(store: &Store, rows: Vec<(StatKey, ObjectId)>) -> Result<()> {
    if let (Some(index), false) = (store.index(), rows.is_empty()) {
        index.commit(&crate::store::IndexBatch {
            stats: rows,
            ..Default::default()
        })?;
    }
    Ok(())
}

/// A materialized DEST as found on disk: its marker, its tree, one scan, and each entry's state.
struct Found {
    marker: Marker,
    manifest: Manifest,
    seen: HashMap<String, Seen>,
    checked: Vec<Checked>,
}

/// Read DEST's marker (refusing a directory without one, with `why` in the message), its tree,
/// scan DEST once and check every entry.
fn load(store: &Store, dest: &Path, verify: bool, why: &str) -> Result<Found> {
    let marker = Marker::read(dest)?
        .ok_or_else(|| Error::bad_input(dest, format!("no {MARKER_NAME}: {why}")))?;
    let manifest = store.read_tree(&marker.tree)?;
    let seen = scan_dest(dest)?;
    let checker = Checker {
        store,
        dest,
        verify,
    };
    let checked = checker.check_all(&manifest, &seen)?;
    Ok(Found {
        marker,
        manifest,
        seen,
        checked,
    })
}

/// Compare DEST with the tree its marker names.
pub fn status(store: &Store, dest: &Path, verify: bool) -> Result<StatusReport> {
    let dest = dest.canonicalize().ctx("resolve", dest)?;
    let Found {
        marker,
        manifest,
        seen,
        checked,
    } = load(store, &dest, verify, "not a materialized directory")?;
    summarize(
        store,
        &manifest,
        &seen,
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
    let dest = dest.canonicalize().ctx("resolve", dest)?;
    let seen = scan_dest(&dest)?;
    let checker = Checker {
        store,
        dest: &dest,
        verify,
    };
    let checked = checker.check_all(manifest, &seen)?;
    summarize(store, manifest, &seen, checked, None, true)
}

/// Turn per-entry checks into a report, and save the stat-cache rows they produced.
fn summarize(
    store: &Store,
    manifest: &Manifest,
    seen: &HashMap<String, Seen>,
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
    report.extra = extras(manifest, seen);
    commit_cache(store, rows)?;
    Ok(report)
}

/// Files and symlinks in DEST that the tree does not list, sorted.
fn extras(m: &Manifest, seen: &HashMap<String, Seen>) -> Vec<String> {
    let listed: HashSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    let mut v: Vec<String> = seen
        .iter()
        .filter(|(p, s)| !s.meta.is_dir() && !listed.contains(p.as_str()))
        .map(|(p, _)| p.clone())
        .collect();
    v.sort();
    v
}

/// Make DEST hold `tree`: create it, repair it, or switch it from the tree it held before.
/// Only missing or differing entries are written; files the user added are never touched.
pub fn materialize(
    store: &Store,
    tree: &ObjectId,
    dest: &Path,
    policy: &LinkPolicy,
) -> Result<MaterializeReport> {
    apply(store, tree, dest, policy, true, None, None)
}

/// [`materialize`], recording where the lock's other parts went (`layout`) in the marker.
/// `manifest` is the tree's manifest, which the caller just stored (not read again).
pub fn materialize_laid_out(
    store: &Store,
    tree: &ObjectId,
    manifest: &Manifest,
    dest: &Path,
    policy: &LinkPolicy,
    layout: &Layout,
) -> Result<MaterializeReport> {
    apply(
        store,
        tree,
        dest,
        policy,
        true,
        Some(layout),
        Some(manifest),
    )
}

/// Write the missing or differing entries of `tree` into DEST, an install that was not
/// materialized (no marker), leaving everything else alone: no marker, no GC root, nothing
/// removed. `verify --fix` repairs a user's own ComfyUI folder this way.
pub fn repair_in_place(
    store: &Store,
    tree: &ObjectId,
    dest: &Path,
    policy: &LinkPolicy,
) -> Result<MaterializeReport> {
    apply(store, tree, dest, policy, false, None, None)
}

/// `materialize` (`marked`: DEST is or becomes a materialized directory, with a marker and a
/// GC root) or `repair_in_place`.
fn apply(
    store: &Store,
    tree: &ObjectId,
    dest: &Path,
    policy: &LinkPolicy,
    marked: bool,
    layout: Option<&Layout>,
    given: Option<&Manifest>,
) -> Result<MaterializeReport> {
    let read;
    let manifest = match given {
        Some(m) => m,
        None => {
            read = store.read_tree(tree)?;
            &read
        }
    };
    if let Some(e) = manifest.entries.iter().find(|e| e.path == MARKER_NAME) {
        return Err(crate::store::Error::BadManifest {
            id: tree.to_string(),
            reason: format!("{:?} is reserved for the materialize marker", e.path),
        }
        .into());
    }
    let missing: Vec<String> = manifest
        .objects()
        .into_par_iter()
        .filter(|(id, _, _)| !store.has_object(id))
        .map(|(id, _, _)| id.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(crate::store::Error::NotFound(format!(
            "{} objects of tree {tree} (first: {})",
            missing.len(),
            missing[0]
        ))
        .into());
    }
    // Writers' lock: gc must not delete the objects while we link them.
    let _lock = store.lock_shared()?;
    let dest = check_dest(store, dest, true)?;
    let previous = if marked { Marker::read(&dest)? } else { None };
    if marked && previous.is_none() && fs::read_dir(&dest).ctx("list", &dest)?.next().is_some() {
        return Err(Error::bad_input(
            &dest,
            format!(
                "directory is not empty and has no {MARKER_NAME}; refusing to materialize over it"
            ),
        ));
    }
    let old_manifest = match &previous {
        Some(p) if p.tree != *tree => Some(store.read_tree(&p.tree)?),
        _ => None,
    };

    let seen = scan_dest(&dest)?;
    let checker = Checker {
        store,
        dest: &dest,
        verify: false,
    };
    let states = checker.check_all(manifest, &seen)?;

    // Old entries the new tree drops: removed if the user did not change them.
    let mut to_remove_old: Vec<String> = Vec::new();
    let mut report = MaterializeReport {
        tree: Some(*tree),
        dest: dest.clone(),
        ..Default::default()
    };
    if let Some(old) = &old_manifest {
        let new_paths: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
        let dropped = Manifest {
            entries: old
                .entries
                .iter()
                .filter(|e| !new_paths.contains(e.path.as_str()))
                .cloned()
                .collect(),
        };
        let old_states = checker.check_all(&dropped, &seen)?;
        for (e, c) in dropped.entries.iter().zip(old_states) {
            match c.state {
                EntryState::Ok => to_remove_old.push(e.path.clone()),
                EntryState::Missing => {}
                _ => report.kept_modified.push(e.path.clone()),
            }
        }
    }
    let removable: HashSet<&str> = to_remove_old.iter().map(String::as_str).collect();

    // Refuse, before writing anything, to write through a symlink or over a user's file.
    let dirs = tree_dirs(manifest);
    for d in &dirs {
        if let Some(s) = seen.get(d) {
            if !s.meta.is_dir() && !removable.contains(d.as_str()) {
                return Err(Error::bad_input(dest.join(d), "must be a directory for this tree, but is a file or symlink here; refusing to write through it"));
            }
        }
    }
    for (e, c) in manifest.entries.iter().zip(&states) {
        if c.state == EntryState::StoreObjectChanged {
            let (dev_path, id) = match &e.node {
                Node::File { id, .. } => (dest.join(&e.path), *id),
                _ => continue,
            };
            return Err(crate::store::Error::Store {
                path: store.root().to_path_buf(),
                reason: format!(
                    "object {id} was modified in place through {}; run `comfystore fsck --repair` to quarantine it, then add or fetch it again",
                    dev_path.display()
                ),
            }
            .into());
        }
        if let (Some(s), Node::File { .. } | Node::Symlink { .. }) = (seen.get(&e.path), &e.node) {
            if s.meta.is_dir() {
                return Err(Error::bad_input(
                    dest.join(&e.path),
                    "is a directory where the tree has a file; refusing to replace it",
                ));
            }
        }
    }

    let root = previous
        .as_ref()
        .map(|p| p.root.clone())
        .unwrap_or_else(|| root_name(&dest));
    let mut marker = Marker::new(*tree, store.root(), root, policy.clone());
    // A repair or plain re-materialize keeps the layout the version was placed with.
    marker.layout = layout
        .cloned()
        .or_else(|| previous.as_ref().and_then(|p| p.layout.clone()));
    // The same version again: the marker stays as it is unless something is rewritten, so a
    // run that changes nothing writes nothing (and keeps the counts of what placed the files).
    let same = previous.as_ref().is_some_and(|p| {
        p.complete && p.tree == *tree && p.policy == *policy && p.layout == marker.layout
    });
    let nothing_to_do =
        same && to_remove_old.is_empty() && states.iter().all(|c| c.state == EntryState::Ok);
    if let Some(p) = previous.as_ref().filter(|_| same) {
        marker.used = p.used.clone();
    }
    if marked {
        store.add_root(
            &marker.root,
            &Root {
                ids: vec![*tree],
                path: Some(dest.clone()),
            },
        )?;
        if !nothing_to_do {
            marker.write(&dest)?;
        }
    }

    // Remove what the old version had and the new one does not (deepest first).
    let mut old_sorted = to_remove_old.clone();
    old_sorted.sort_by(|a, b| b.cmp(a));
    for p in &old_sorted {
        let path = dest.join(p);
        let r = if seen.get(p).map(|s| s.meta.is_dir()).unwrap_or(false) {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        match r {
            Ok(()) => report.removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {}
            Err(e) => return Err(e).ctx("remove", &path),
        }
    }
    if let Some(old) = &old_manifest {
        prune_dirs(
            &dest,
            &tree_dirs(old),
            &dirs.iter().map(String::as_str).collect(),
        );
    }

    // Folders level by level, each level in parallel: a parent always exists before its
    // children, and mkdir (the filesystem's inode allocator) is a large part of placing a venv.
    let mut by_depth: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
    for d in &dirs {
        by_depth.entry(d.matches('/').count()).or_default().push(d);
    }
    for level in by_depth.values() {
        level.par_iter().try_for_each(|d| {
            let path = dest.join(d);
            match fs::create_dir(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let m = fs::symlink_metadata(&path).ctx("stat", &path)?;
                    if m.is_dir() {
                        Ok(())
                    } else {
                        Err(Error::bad_input(
                            &path,
                            "is not a directory; refusing to write through it",
                        ))
                    }
                }
                Err(e) => Err(e).ctx("create", &path),
            }
        })?;
    }

    let dest_dev = fs::metadata(&dest).ctx("stat", &dest)?.dev();
    let store_dev = fs::metadata(store.root()).ctx("stat", store.root())?.dev();
    let probe = link::Probe::default();
    let work: Vec<(&Entry, bool)> = manifest
        .entries
        .iter()
        .zip(&states)
        .filter(|(e, c)| c.state != EntryState::Ok && !matches!(e.node, Node::Dir))
        .map(|(e, c)| (e, c.state != EntryState::Missing))
        .collect();
    report.unchanged = (manifest.entries.len() - work.len()) as u64;
    let bar = store.reporter().start(
        "placing",
        Some(work.len() as u64),
        crate::report::Unit::Items,
    );
    let placed: Vec<Placed> = work
        .par_iter()
        .map(|(e, exists)| {
            let r = place_entry(
                store,
                &probe,
                (store_dev, dest_dev),
                policy,
                &dest,
                e,
                *exists,
            );
            bar.inc(1);
            r
        })
        .collect::<Result<_>>()?;
    bar.finish();
    report.written = placed.len() as u64;
    let mut rows = Vec::new();
    for (prefix, method, row) in placed {
        if let Some(m) = method {
            *marker.used.entry(prefix).or_default().entry(m).or_default() += 1;
            *report.methods.entry(m).or_default() += 1;
        }
        rows.extend(row);
    }
    // Make the placed bytes durable before the marker says the version is complete.
    crate::store::sync_filesystem(&dest)?;
    marker.complete = true;
    if marked && !nothing_to_do {
        marker.write(&dest)?;
    }
    commit_cache(store, rows)?;
    // User files do not move during materialize: the first scan already knows them.
    report.extra = extras(manifest, &seen).len() as u64;
    Ok(report)
}

/// Remove directories of `old_dirs` that the new tree does not need and that are now empty.
fn prune_dirs(dest: &Path, old_dirs: &[String], keep: &HashSet<&str>) -> u64 {
    let mut n = 0;
    let mut dirs: Vec<&String> = old_dirs
        .iter()
        .filter(|d| !keep.contains(d.as_str()))
        .collect();
    dirs.sort_by(|a, b| b.cmp(a));
    for d in dirs {
        if fs::remove_dir(dest.join(d)).is_ok() {
            n += 1;
        }
    }
    n
}

/// What placing one entry did: the policy prefix that chose its mode, the method used (none
/// for symlink entries), and a stat-cache row for placed files.
type Placed = (String, Option<Method>, Option<(StatKey, ObjectId)>);

/// Write one entry. `exists`: something is at the path (modified): write beside it, then
/// rename over it, so the path never disappears.
fn place_entry(
    store: &Store,
    probe: &link::Probe,
    devs: (u64, u64),
    policy: &LinkPolicy,
    dest: &Path,
    e: &Entry,
    exists: bool,
) -> Result<Placed> {
    let final_path = dest.join(&e.path);
    let parent = final_path.parent().unwrap_or(dest);
    let target = if exists {
        parent.join(crate::store::unique_name(".tmp-"))
    } else {
        final_path.clone()
    };
    let (prefix, mode) = policy.mode_for(&e.path);
    let (method, row) = match &e.node {
        Node::Dir => return Ok((prefix.to_string(), None, None)),
        Node::Symlink { target: t } => {
            std::os::unix::fs::symlink(t, &target).ctx("symlink", &target)?;
            (None, None)
        }
        Node::File { exec, size, id } => {
            let method = if *size == 0 {
                link::create_empty(&target, *exec)?
            } else {
                let force_copy = link::rewritten_in_place(&e.path, *size);
                let src = if mode.shares_inode() && !force_copy {
                    store.ensure_variant(id, *exec)?
                } else {
                    store
                        .find_object(id, *exec)
                        .ok_or_else(|| crate::store::Error::NotFound(id.to_string()))?
                };
                link::place(probe, devs, mode, &src, &target, *exec, force_copy)?
            };
            // Cache the placed file's stat (the object's, for a symlink) under its id.
            let meta = fs::metadata(&target).ctx("stat", &target)?;
            (Some(method), Some((StatKey::of(&meta), *id)))
        }
    };
    if exists {
        let res = match fs::symlink_metadata(&final_path) {
            Ok(m) if m.is_dir() => Err(Error::bad_input(
                &final_path,
                "is a directory where the tree has a file",
            )),
            _ => fs::rename(&target, &final_path).ctx("replace", &final_path),
        };
        if let Err(err) = res {
            let _ = fs::remove_file(&target);
            return Err(err);
        }
    }
    Ok((prefix.to_string(), method, row))
}

/// Delete exactly what the marker's tree placed (unmodified), then directories left empty,
/// then the marker and the GC root. User files and modified files stay unless `all`.
pub fn remove(store: &Store, dest: &Path, all: bool) -> Result<RemoveReport> {
    let meta = fs::symlink_metadata(dest).ctx("stat", dest)?;
    if meta.file_type().is_symlink() {
        return Err(Error::bad_input(
            dest,
            "is a symlink; give the real directory",
        ));
    }
    let dest = check_dest(store, dest, false)?;
    let Found {
        marker,
        manifest,
        seen,
        checked: states,
    } = load(
        store,
        &dest,
        false,
        "refusing to remove a directory comfystore did not make",
    )?;
    let mut report = RemoveReport::default();
    // Deepest first; never through a symlink (scan_dest never descends into one, so a path
    // below a symlink is simply not in `seen`).
    let mut order: Vec<(&Entry, &Checked)> = manifest.entries.iter().zip(&states).collect();
    order.sort_by(|a, b| b.0.path.cmp(&a.0.path));
    for (e, c) in order {
        if matches!(e.node, Node::Dir) || !seen.contains_key(&e.path) {
            continue;
        }
        if c.state != EntryState::Ok && !all {
            report.kept.push(e.path.clone());
            continue;
        }
        let path = dest.join(&e.path);
        fs::remove_file(&path).ctx("remove", &path)?;
        report.removed_entries += 1;
    }
    if all {
        for x in extras(&manifest, &seen) {
            let path = dest.join(&x);
            match fs::remove_file(&path) {
                Ok(()) => report.removed_entries += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("remove", &path),
            }
        }
        let mut dirs: Vec<&String> = seen
            .iter()
            .filter(|(_, s)| s.meta.is_dir())
            .map(|(p, _)| p)
            .collect();
        dirs.sort_by(|a, b| b.cmp(a));
        for d in dirs {
            if fs::remove_dir(dest.join(d)).is_ok() {
                report.removed_dirs += 1;
            }
        }
    } else {
        // Byte-code caches are Python's, derived from what we placed: they go too.
        let (caches, user): (Vec<String>, Vec<String>) = extras(&manifest, &seen)
            .into_iter()
            .partition(|p| crate::store::is_cache_path(p));
        for p in &caches {
            let path = dest.join(p);
            match fs::remove_file(&path) {
                Ok(()) => report.removed_entries += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("remove", &path),
            }
        }
        report.kept.extend(user);
        report.kept.sort();
        let mut dirs = tree_dirs(&manifest);
        dirs.extend(
            seen.iter()
                .filter(|(p, s)| s.meta.is_dir() && crate::store::is_cache_path(p))
                .map(|(p, _)| p.clone()),
        );
        report.removed_dirs = prune_dirs(&dest, &dirs, &HashSet::new());
    }
    let marker_path = dest.join(MARKER_NAME);
    fs::remove_file(&marker_path).ctx("remove", &marker_path)?;
    store.remove_root(&marker.root)?;
    report.dest_removed = fs::remove_dir(&dest).is_ok();
    // An environment placed outside DEST (`--venv`) belongs to the version: it goes too.
    if let Some(venv) = marker.layout.as_ref().and_then(|l| l.venv.as_ref()) {
        if Marker::read(venv)?.is_some() {
            let r = remove(store, venv, all)?;
            report.removed_entries += r.removed_entries;
            report.removed_dirs += r.removed_dirs;
            report.kept.extend(
                r.kept
                    .into_iter()
                    .map(|k| format!("{}/{k}", venv.display())),
            );
        }
    }
    Ok(report)
}

/// Put one stored object at `dest` (a new file; its folder is created), linked the way `mode`
/// allows. For `add-url --path`: a single model placed into an install.
pub fn place_object(store: &Store, id: &ObjectId, dest: &Path, mode: LinkMode) -> Result<Method> {
    let src = store
        .find_object(id, false)
        .ok_or_else(|| crate::store::Error::NotFound(id.to_string()))?;
    let parent = dest
        .parent()
        .ok_or_else(|| Error::bad_input(dest, "no parent folder"))?;
    fs::create_dir_all(parent).ctx("create", parent)?;
    let devs = (
        fs::metadata(&src).ctx("stat", &src)?.dev(),
        fs::metadata(parent).ctx("stat", parent)?.dev(),
    );
    link::place(
        &link::Probe::default(),
        devs,
        mode,
        &src,
        dest,
        false,
        false,
    )
}
