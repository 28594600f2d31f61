//! Garbage collection: keep what the roots reach, delete the rest once it is older than the
//! grace period. Runs under the exclusive gc lock; the grace period and writers' mtime
//! freshening cover filesystems whose locks do nothing.

use super::durable::TEMP_PREFIX;
use super::id::{ObjectId, Sha256};
use super::writer::{tag_of, writer_state, writers_dir, Writer};
use super::Store;
use crate::store::error::{Error, IoContext, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One file found in `objects/` or `trees/`.
pub(crate) struct StoredFile {
    pub id: ObjectId,
    pub exec: bool,
    pub path: PathBuf,
    pub size: u64,
}

/// Everything the store's folders hold, read from the files alone.
#[derive(Default)]
pub(crate) struct StoreScan {
    /// Distinct objects with their sizes (for the index).
    pub objects: Vec<(ObjectId, u64)>,
    pub object_files: Vec<StoredFile>,
    pub trees: Vec<ObjectId>,
    pub tree_files: Vec<StoredFile>,
    pub aliases: Vec<(Sha256, ObjectId)>,
    pub alias_files: Vec<(Sha256, PathBuf)>,
    /// Files in the sharded folders that are not objects (leftover temps, foreign files).
    pub stray: Vec<PathBuf>,
}

fn shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).ctx("list", dir)? {
        let e = e.ctx("list", dir)?;
        if e.file_type().ctx("stat", &e.path())?.is_dir() {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// List a sharded folder: `(prefix + name, path, metadata)` for every file.
fn list_sharded(
    dir: &Path,
    stray: &mut Vec<PathBuf>,
) -> Result<Vec<(String, PathBuf, fs::Metadata)>> {
    let mut out = Vec::new();
    for shard in shards(dir)? {
        let prefix = shard
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        for e in fs::read_dir(&shard).ctx("list", &shard)? {
            let e = e.ctx("list", &shard)?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err).ctx("stat", &path),
            };
            if prefix.len() != 2 || !meta.is_file() {
                stray.push(path);
                continue;
            }
            out.push((format!("{prefix}{name}"), path, meta));
        }
    }
    Ok(out)
}

/// Read every object, tree and alias file of the store.
pub(crate) fn scan_store(store: &Store) -> Result<StoreScan> {
    let mut scan = StoreScan::default();
    let root = store.root();
    for (name, path, meta) in list_sharded(&root.join("objects/b3"), &mut scan.stray)? {
        let (hex, exec) = match name.strip_suffix("-exec") {
            Some(h) => (h, true),
            None => (name.as_str(), false),
        };
        match ObjectId::from_hex(hex) {
            Some(id) => scan.object_files.push(StoredFile {
                id,
                exec,
                path,
                size: meta.len(),
            }),
            None => scan.stray.push(path),
        }
    }
    let mut seen = HashSet::new();
    for f in &scan.object_files {
        if seen.insert(f.id) {
            scan.objects.push((f.id, f.size));
        }
    }
    for (name, path, meta) in list_sharded(&root.join("trees/b3"), &mut scan.stray)? {
        match ObjectId::from_hex(&name) {
            Some(id) => {
                scan.trees.push(id);
                scan.tree_files.push(StoredFile {
                    id,
                    exec: false,
                    path,
                    size: meta.len(),
                });
            }
            None => scan.stray.push(path),
        }
    }
    for (name, path, _) in list_sharded(&root.join("aliases/sha256"), &mut scan.stray)? {
        let Some(sha) = Sha256::from_hex(&name) else {
            scan.stray.push(path);
            continue;
        };
        let text = fs::read_to_string(&path).ctx("read", &path)?;
        match text.trim().parse::<ObjectId>() {
            Ok(id) => scan.aliases.push((sha, id)),
            Err(_) => scan.stray.push(path.clone()),
        }
        scan.alias_files.push((sha, path));
    }
    Ok(scan)
}

/// How gc runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Unreachable files younger than this are kept (a writer may be about to refer to them).
    pub grace: Duration,
    /// Report, delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// What gc found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub roots: u64,
    pub live_trees: u64,
    pub live_objects: u64,
    pub deleted_trees: u64,
    pub deleted_objects: u64,
    pub freed_bytes: u64,
    /// Unreachable but younger than the grace period.
    pub kept_young: u64,
    pub deleted_temp_files: u64,
    pub deleted_aliases: u64,
    pub deleted_sources: u64,
    /// Roots naming ids the store does not have.
    pub dangling_roots: Vec<String>,
    /// With `dry_run`: each tree and object gc would delete, and why nothing keeps it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_free: Vec<GcItem>,
}

/// A file `gc --dry-run` would delete.
#[derive(Clone, Debug, Serialize)]
pub struct GcItem {
    /// `tree` or `object` (`object-exec` for the executable variant).
    pub kind: &'static str,
    pub id: ObjectId,
    pub size: u64,
    /// Why nothing keeps it.
    pub why: String,
}

/// What the roots reach.
#[derive(Default)]
struct Live {
    trees: HashSet<ObjectId>,
    objects: HashSet<ObjectId>,
}

impl Store {
    /// Delete what no root reaches. Refuses to run if a rooted tree cannot be read (that would
    /// make its objects look unreachable).
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let _lock = self.lock_exclusive(true)?;
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let live = self.mark(&mut report)?;
        let cutoff = SystemTime::now()
            .checked_sub(opts.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let scan = scan_store(self)?;
        let mut sweep = Sweep {
            cutoff,
            dry_run: opts.dry_run,
            report: &mut report,
        };
        // Trees first, then only the objects no remaining tree names: a gc killed at any
        // point leaves every tree still present complete (fsck stays clean).
        let (gone_trees, deleted_trees) =
            sweep.files(&scan.tree_files, &live.trees, &HashSet::new(), "tree")?;
        let mut kept_by_trees = HashSet::new();
        let gone: HashSet<ObjectId> = gone_trees.iter().copied().collect();
        for t in &scan.trees {
            if live.trees.contains(t) || gone.contains(t) || !self.has_tree(t) {
                continue;
            }
            // An unrooted tree kept (young): its objects stay with it. One that cannot be
            // read is fsck's to report; it protects nothing.
            if let Ok(m) = self.read_tree(t) {
                kept_by_trees.extend(m.objects().into_iter().map(|(o, _, _)| o));
            }
        }
        let (gone_objects, deleted_objects) =
            sweep.files(&scan.object_files, &live.objects, &kept_by_trees, "object")?;
        report.deleted_objects = deleted_objects;
        report.deleted_trees = deleted_trees;
        self.sweep_aliases(&scan, &gone_objects, opts.dry_run, &mut report)?;
        if !opts.dry_run {
            for path in self.orphan_sources()? {
                if remove_if_present(&path)? {
                    report.deleted_sources += 1;
                }
            }
        }
        report.deleted_temp_files = self.sweep_temp(cutoff, opts.dry_run)?;
        if !opts.dry_run {
            self.forget(gone_objects, &gone_trees)?;
        }
        Ok(report)
    }

    /// Everything the roots reach; roots naming nothing the store has are reported.
    fn mark(&self, report: &mut GcReport) -> Result<Live> {
        let mut live = Live::default();
        let roots = self.list_roots()?;
        report.roots = roots.len() as u64;
        for (name, root) in &roots {
            for id in &root.ids {
                if self.has_tree(id) {
                    if live.trees.insert(*id) {
                        let m = self.read_tree(id).map_err(|e| Error::Store {
                            path: self.root().to_path_buf(),
                            reason: format!(
                                "gc stopped: root {name:?} names tree {id}, which cannot be read ({e}); run `comfystore fsck`"
                            ),
                        })?;
                        live.objects
                            .extend(m.objects().into_iter().map(|(o, _, _)| o));
                    }
                } else if self.has_object(id) {
                    live.objects.insert(*id);
                } else {
                    report.dangling_roots.push(name.clone());
                }
            }
        }
        report.live_trees = live.trees.len() as u64;
        report.live_objects = live.objects.len() as u64;
        Ok(live)
    }

    /// SHA-256 aliases of objects that are gone (or going).
    fn sweep_aliases(
        &self,
        scan: &StoreScan,
        gone_objects: &[ObjectId],
        dry_run: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        let gone_set: HashSet<ObjectId> = gone_objects.iter().copied().collect();
        for ((_, id), (_, path)) in scan.aliases.iter().zip(&scan.alias_files) {
            let remains = !gone_set.contains(id) && self.has_object(id);
            if !remains && (dry_run || remove_if_present(path)?) {
                report.deleted_aliases += 1;
            }
        }
        Ok(())
    }

    /// Drop deleted ids from the index: only ids with no file left (both variants of an
    /// object may not have gone).
    fn forget(&self, gone_objects: Vec<ObjectId>, gone_trees: &[ObjectId]) -> Result<()> {
        let mut objs: Vec<ObjectId> = gone_objects
            .into_iter()
            .filter(|id| !self.has_object(id))
            .collect();
        objs.sort();
        objs.dedup();
        if let Some(index) = self.index() {
            index.remove(&objs, gone_trees)?;
        }
        Ok(())
    }

    /// Remove temp files from `tmp/` whose writer is gone (whatever their age) or, when that
    /// cannot be told, that are older than `cutoff`; leftover temp files of
    /// `write_file_atomic` from `roots/`; temp folders (git checkouts of a killed `fetch`) at
    /// the top of `tmp/`; and the lock files of writers that are gone.
    fn sweep_temp(&self, cutoff: SystemTime, dry_run: bool) -> Result<u64> {
        let mut n = 0;
        let mut writers: HashMap<String, Writer> = HashMap::new();
        if let Ok(entries) = fs::read_dir(self.tmp_dir()) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .ok()
                    .filter(|m| m.is_dir())
                    .and_then(|m| m.modified().ok())
                    .is_some_and(|t| t <= cutoff);
                if old && e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    if !dry_run {
                        fs::remove_dir_all(e.path()).ctx("delete", &e.path())?;
                    }
                    n += 1;
                }
            }
        }
        for dir in [self.tmp_dir(), self.root().join("roots")] {
            for e in walkdir::WalkDir::new(&dir).min_depth(1) {
                let Ok(e) = e else { continue };
                let name = e.file_name().to_string_lossy();
                if !e.file_type().is_file() || !name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .map(|t| t <= cutoff)
                    .unwrap_or(false);
                let writer = tag_of(&name).map(|tag| {
                    *writers
                        .entry(tag.to_string())
                        .or_insert_with(|| self.writer_state(tag, !dry_run))
                });
                let leftover = match writer {
                    Some(Writer::Gone) => true,
                    Some(Writer::Alive) => false,
                    Some(Writer::Unknown) | None => old,
                };
                if leftover && (dry_run || remove_if_present(e.path())?) {
                    n += 1;
                }
            }
        }
        // Lock files of writers that died without leaving a temp file.
        if let Ok(entries) = fs::read_dir(writers_dir(self.root())) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !writers.contains_key(&name) {
                    self.writer_state(&name, !dry_run);
                }
            }
        }
        if !dry_run && self.uses_locks() {
            self.remove_stale_named_locks();
        }
        Ok(n)
    }

    /// Whether a writer is alive. Without locks (`COMFYSTORE_NO_LOCKS`: they may not hold
    /// across hosts) a free lock proves nothing, so only the temp file's age can tell.
    fn writer_state(&self, tag: &str, remove: bool) -> Writer {
        if self.uses_locks() {
            writer_state(self.root(), tag, remove)
        } else {
            Writer::Unknown
        }
    }
}

/// Deleting unreachable files older than the grace period.
struct Sweep<'a> {
    cutoff: SystemTime,
    dry_run: bool,
    report: &'a mut GcReport,
}

impl Sweep<'_> {
    /// Delete the files no live id names, unless young or named by a young unrooted tree
    /// (`kept`); the ids deleted and how many.
    fn files(
        &mut self,
        files: &[StoredFile],
        live: &HashSet<ObjectId>,
        kept: &HashSet<ObjectId>,
        kind: &'static str,
    ) -> Result<(Vec<ObjectId>, u64)> {
        let mut gone = Vec::new();
        let mut count = 0;
        for f in files {
            if live.contains(&f.id) {
                continue;
            }
            if kept.contains(&f.id) {
                self.report.kept_young += 1;
                continue;
            }
            // Look again right before deleting: a writer may just have freshened it.
            let young = fs::symlink_metadata(&f.path)
                .and_then(|m| m.modified())
                .map(|t| t > self.cutoff)
                .unwrap_or(true);
            if young {
                self.report.kept_young += 1;
                continue;
            }
            if !self.dry_run {
                match fs::remove_file(&f.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).ctx("delete", &f.path),
                }
            }
            if self.dry_run {
                self.report.would_free.push(GcItem {
                    kind: match (kind, f.exec) {
                        ("object", true) => "object-exec",
                        (k, _) => k,
                    },
                    id: f.id,
                    size: f.size,
                    why: format!(
                        "named by no root: no root lists it{}, and it is older than the grace period",
                        if kind == "object" { " or a tree a root lists" } else { "" }
                    ),
                });
            }
            count += 1;
            self.report.freed_bytes += f.size;
            gone.push(f.id);
        }
        Ok((gone, count))
    }
}

fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx("delete", path),
    }
}
