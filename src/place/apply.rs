//! The executor: carry out a [`Plan`] in DEST. The marker says "incomplete" before the first
//! change and "complete" after the last, once the placed bytes are durable; each file goes in
//! with the link mode its policy prefix names, falling back where the filesystems refuse.

use super::beneath::{Beneath, DirAt};
use super::check::commit_cache;
use super::link::{self, LinkMode, LinkPolicy, Method};
use super::marker::Marker;
use super::plan::{MarkerPlan, Plan, Write};
use super::remove::{remove_empty_dirs, remove_entries};
use crate::place::error::{Error, IoContext, Result};
use crate::store::{Entry, Node, ObjectId, Root, StatKey, Store};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// Files the user edited that the new version replaced (`--force`): each was kept beside
    /// it under a new name first.
    pub kept_edits: Vec<KeptEdit>,
    pub methods: BTreeMap<Method, u64>,
    pub extra: u64,
}

/// A user's edit that a forced switch replaced, and the name it was kept under (both relative
/// to DEST).
#[derive(Clone, Debug, Serialize)]
pub struct KeptEdit {
    pub path: String,
    pub kept_as: String,
}

/// Carries out one plan: `tree` into `dest` (canonical) under `policy`.
pub(super) struct Executor<'a> {
    pub store: &'a Store,
    pub tree: &'a ObjectId,
    pub dest: &'a Path,
    /// DEST opened without following symlinks: every write goes through it.
    pub beneath: &'a Beneath,
    pub policy: &'a LinkPolicy,
    /// Where the objects the plan writes are in the store, checked ([`sources`]).
    pub sources: &'a Sources,
}

/// The store path of each (object, exec) a plan writes.
pub(super) type Sources = HashMap<(ObjectId, bool), PathBuf>;

/// A stat-cache row: a placed file's stat (the object's, for a symlink) under its id.
type CacheRow = (StatKey, ObjectId);

/// What placing one entry did.
struct Placed {
    /// The policy prefix that chose its mode ("" for the default).
    prefix: String,
    /// The method used (none for symlink entries).
    method: Option<Method>,
    row: Option<CacheRow>,
}

impl Executor<'_> {
    pub fn execute(&self, plan: Plan) -> Result<MaterializeReport> {
        let mut report = MaterializeReport {
            tree: Some(*self.tree),
            dest: self.dest.to_path_buf(),
            unchanged: plan.unchanged,
            kept_modified: plan.kept_modified,
            extra: plan.extra,
            ..Default::default()
        };
        let mut marker = plan.marker;
        if let Some(m) = &marker {
            self.begin(m)?;
        }
        report.kept_edits = keep_aside(self.beneath, &plan.keep_aside)?;
        report.removed = remove_entries(self.beneath, &plan.remove)?;
        remove_empty_dirs(self.beneath, &plan.prune);
        let placed = self.build(&plan.mkdirs, &plan.write)?;
        report.written = placed.len() as u64;
        let rows = tally(placed, &mut report, marker.as_mut().map(|m| &mut m.marker));
        self.finish(marker, rows)?;
        Ok(report)
    }

    /// Before the first change: the GC root (gc keeps the tree from now on) and an incomplete
    /// marker (a crash from here on is seen as one).
    fn begin(&self, m: &MarkerPlan) -> Result<()> {
        let layout = m.marker.layout.as_ref();
        let outside = layout
            .iter()
            .flat_map(|l| [&l.venv, &l.models_dir, &l.python])
            .flatten()
            .filter(|p| !p.starts_with(self.dest))
            .cloned()
            .collect();
        let root = Root {
            ids: vec![*self.tree],
            path: Some(self.dest.to_path_buf()),
            outside,
        };
        // In a store this process may only read, DEST stays unregistered (said at info
        // level): the lock's root, written by whoever fetched it, keeps the content.
        if self.store.add_root_if_writable(&m.marker.root, &root)? {
            if let Some(old) = &m.drop_root {
                self.store.remove_root(old)?;
            }
        }
        if m.write {
            m.marker.write(&self.beneath.dir("")?.handle_path())?;
        }
        Ok(())
    }

    /// After the last change: the placed bytes durable, then the marker complete, then the
    /// stat-cache rows of the placed files.
    fn finish(&self, marker: Option<MarkerPlan>, rows: Vec<CacheRow>) -> Result<()> {
        let saving = self
            .store
            .reporter()
            .start("saving", None, crate::report::Unit::Wait);
        crate::store::sync_filesystem(self.dest)?;
        if let Some(MarkerPlan {
            mut marker,
            write: true,
            ..
        }) = marker
        {
            marker.complete = true;
            marker.write(&self.beneath.dir("")?.handle_path())?;
        }
        commit_cache(self.store, rows)?;
        saving.finish();
        Ok(())
    }

    /// Folders and files, one folder at a time, shallowest first: each folder is opened once
    /// (beneath DEST, never through a symlink), and its missing subfolders are made and its
    /// files written through that handle. The folders of a level, and the files of a folder,
    /// in parallel; counted on the store's reporter.
    fn build(&self, mkdirs: &[Vec<&str>], work: &[Write]) -> Result<Vec<Placed>> {
        let placer = Placer {
            store: self.store,
            probe: link::Probe::default(),
            devs: (
                fs::metadata(self.store.root())
                    .ctx("stat", self.store.root())?
                    .dev(),
                self.beneath.dir("")?.dev().ctx("stat", self.dest)?,
            ),
            policy: self.policy,
            sources: self.sources,
            bytes: Bytes::start(self.store, self.policy, work),
        };
        let bar = placer.bytes.bar.as_ref();
        let mut placed = Vec::with_capacity(work.len());
        for level in folder_jobs(mkdirs, work) {
            let done: Vec<Vec<Placed>> = level
                .par_iter()
                .map(|(dir, job)| {
                    let at = self.beneath.dir(dir)?;
                    for name in &job.mkdirs {
                        make_dir(&at, name)?;
                    }
                    job.writes
                        .par_iter()
                        .map(|w| {
                            let r = placer.place(&at, w.entry, w.replace);
                            bar.inc_files(1);
                            r
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<_>>()?;
            placed.extend(done.into_iter().flatten());
        }
        bar.finish();
        Ok(placed)
    }
}

/// What is done in one folder: its subfolders made, its entries written.
#[derive(Default)]
struct FolderJob<'p, 'a> {
    mkdirs: Vec<&'a str>,
    writes: Vec<&'p Write<'a>>,
}

/// The plan's folders and writes grouped by the folder they happen in ("" is DEST), by
/// depth, shallowest first: a folder is made by the level above the one that fills it.
fn folder_jobs<'p, 'a>(
    mkdirs: &[Vec<&'a str>],
    work: &'p [Write<'a>],
) -> Vec<Vec<(&'a str, FolderJob<'p, 'a>)>> {
    let split = |p: &'a str| p.rsplit_once('/').unwrap_or(("", p));
    let mut jobs: HashMap<&'a str, FolderJob<'p, 'a>> = HashMap::new();
    for d in mkdirs.iter().flatten() {
        let (parent, name) = split(d);
        jobs.entry(parent).or_default().mkdirs.push(name);
    }
    for w in work {
        jobs.entry(split(&w.entry.path).0)
            .or_default()
            .writes
            .push(w);
    }
    let depth = |d: &str| {
        if d.is_empty() {
            0
        } else {
            d.matches('/').count() + 1
        }
    };
    let mut levels: BTreeMap<usize, Vec<(&'a str, FolderJob<'p, 'a>)>> = BTreeMap::new();
    for (dir, job) in jobs {
        levels.entry(depth(dir)).or_default().push((dir, job));
    }
    levels.into_values().collect()
}

/// Make the folder `name` in `parent`; one that exists is fine if it is a folder (it may have
/// appeared since the scan).
fn make_dir(parent: &DirAt, name: &str) -> Result<()> {
    let path = || parent.path().join(name);
    match parent.mkdir(name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if parent.is_dir(name).ctx("stat", &path())? {
                Ok(())
            } else {
                Err(Error::bad_input(
                    path(),
                    "is not a directory; refusing to write through it",
                ))
            }
        }
        Err(e) => Err(e).ctx("create", &path()),
    }
}

/// Where the tree's objects are in the store, refusing a tree the store lacks any object of.
/// Every object is looked for (one lstat each); the ones `writes` places are checked too
/// ([`Store::checked_objects`]: one index lookup for all of them).
pub(super) fn sources(
    store: &Store,
    tree: &ObjectId,
    manifest: &crate::store::Manifest,
    writes: &[Write],
) -> Result<Sources> {
    let file = |e: &Entry| match e.node {
        Node::File { id, exec, size } => Some((id, exec, size)),
        _ => None,
    };
    let written: std::collections::HashSet<(ObjectId, bool)> = writes
        .iter()
        .filter_map(|w| file(w.entry))
        .filter(|(_, _, size)| *size > 0)
        .map(|(id, exec, _)| (id, exec))
        .collect();
    let mut pairs: Vec<(ObjectId, bool)> = manifest
        .entries
        .iter()
        .filter_map(file)
        .map(|(id, exec, _)| (id, exec))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let wants: Vec<(ObjectId, bool, bool)> = pairs
        .iter()
        .map(|&(id, exec)| (id, exec, written.contains(&(id, exec))))
        .collect();
    let found = store.checked_objects(&wants)?;
    let missing: Vec<String> = pairs
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|((id, _), _)| id.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(crate::store::Error::NotFound(format!(
            "{} objects of tree {tree} (first: {})",
            missing.len(),
            missing[0]
        ))
        .into());
    }
    Ok(pairs
        .into_iter()
        .zip(found)
        .filter_map(|(k, f)| f.map(|p| (k, p)))
        .collect())
}

/// Count the methods used (per policy prefix in the marker, in total in the report); returns
/// the stat-cache rows.
fn tally(
    placed: Vec<Placed>,
    report: &mut MaterializeReport,
    mut marker: Option<&mut Marker>,
) -> Vec<CacheRow> {
    let mut rows = Vec::new();
    for p in placed {
        if let Some(m) = p.method {
            if let Some(marker) = marker.as_deref_mut() {
                *marker
                    .used
                    .entry(p.prefix)
                    .or_default()
                    .entry(m)
                    .or_default() += 1;
            }
            *report.methods.entry(m).or_default() += 1;
        }
        rows.extend(p.row);
    }
    rows
}

/// Places single entries; shared by the parallel writers of one plan.
struct Placer<'a> {
    store: &'a Store,
    /// The methods the (store, DEST) filesystems were found to refuse.
    probe: link::Probe,
    devs: (u64, u64),
    policy: &'a LinkPolicy,
    sources: &'a Sources,
    bytes: Bytes,
}

/// The one count of a plan's placing: its entries and the bytes it writes, as they move (a
/// copy-class materialize of big models takes minutes, and a count of entries would sit still
/// on each model and race through the small files; a count of bytes alone would say "1s" on
/// the small files). Each entry weighs [`crate::report::PLACE_FILE_COST`] beside its bytes,
/// so the eta follows both ([`crate::report::Unit::Files`]): one bar, one eta.
///
/// The byte total is known up front for the files whose mode always writes their bytes
/// (`copy`, `reflink`, and small files rewritten in place). A reflink counts its whole size at
/// once (the clone is a file of that size, made in one call). A file whose mode may link it
/// (`auto`, `hardlink`, `share`) joins the total only if its bytes do move (a fallback to a
/// copy, a reflink): counting it up front made a hardlinked tree's bytes fall from its whole
/// size to "0 B/0 B" (a hardlinked tree shows its entries only).
struct Bytes {
    bar: Box<dyn crate::report::Progress>,
    total: AtomicU64,
}

impl Bytes {
    fn start(store: &Store, policy: &LinkPolicy, work: &[Write]) -> Bytes {
        let total: u64 = work
            .iter()
            .filter_map(|w| match &w.entry.node {
                Node::File { size, .. } if always_writes(policy, &w.entry.path, *size) => {
                    Some(*size)
                }
                _ => None,
            })
            .sum();
        Bytes {
            bar: store.reporter().start(
                "placing",
                Some(total),
                crate::report::Unit::Files {
                    files: work.len() as u64,
                    per_file: crate::report::PLACE_FILE_COST,
                },
            ),
            total: total.into(),
        }
    }

    /// A file the total did not count is being written after all.
    fn join(&self, size: u64) {
        let total = self.total.fetch_add(size, Ordering::Relaxed) + size;
        self.bar.set_total(total);
    }
}

/// The count of one file the [`Bytes`] total did not count: its size joins the total when its
/// first bytes move.
struct Late<'b> {
    bytes: &'b Bytes,
    size: u64,
    joined: AtomicBool,
}

impl crate::report::Progress for Late<'_> {
    fn inc(&self, n: u64) {
        if !self.joined.swap(true, Ordering::Relaxed) {
            self.bytes.join(self.size);
        }
        self.bytes.bar.inc(n);
    }
    fn set_position(&self, _: u64) {}
    fn finish(&self) {}
}

/// Whether placing the file at `path` always writes its `size` bytes (the [`Bytes`] total).
fn always_writes(policy: &LinkPolicy, path: &str, size: u64) -> bool {
    size > 0
        && (matches!(policy.mode_for(path).1, LinkMode::Copy | LinkMode::Reflink)
            || link::rewritten_in_place(path, size))
}

impl Placer<'_> {
    /// Write one entry into `dir`, the folder holding it. `replace`: something differing is
    /// at the path, so write beside it, then rename over it, and the path never disappears.
    fn place(&self, dir: &DirAt, e: &Entry, replace: bool) -> Result<Placed> {
        let (prefix, mode) = self.policy.mode_for(&e.path);
        let done = |method, row| Placed {
            prefix: prefix.to_string(),
            method,
            row,
        };
        let name = e.path.rsplit('/').next().unwrap_or(&e.path);
        let final_path = dir.path().join(name);
        let tmp;
        let at = if replace {
            tmp = crate::store::unique_name(".tmp-");
            tmp.as_str()
        } else {
            name
        };
        let (method, row) = match &e.node {
            Node::File { exec, size, id } => {
                let (method, row) = self.write_file(&e.path, mode, (*exec, *size, id), dir, at)?;
                (Some(method), Some(row))
            }
            Node::Symlink { target: t } => {
                dir.symlink(t, at).ctx("symlink", &final_path)?;
                (None, None)
            }
            Node::Dir => return Ok(done(None, None)),
        };
        if replace {
            rename_over(dir, at, name, &final_path)?;
        }
        Ok(done(method, row))
    }

    /// A file `at` in `dir`: empty files created, small rewritten-in-place files copied, the
    /// rest linked as `mode` allows. Returns the method and the placed file's cache row.
    fn write_file(
        &self,
        rel: &str,
        mode: LinkMode,
        (exec, size, id): (bool, u64, &ObjectId),
        dir: &DirAt,
        at: &str,
    ) -> Result<(Method, CacheRow)> {
        let (method, stat) = if size == 0 {
            link::create_empty(dir, at, exec)?
        } else {
            let force_copy = link::rewritten_in_place(rel, size);
            let src = self.source(id, exec, mode.shares_inode() && !force_copy)?;
            let late = Late {
                bytes: &self.bytes,
                size,
                joined: AtomicBool::new(false),
            };
            let moved: &dyn crate::report::Progress = if always_writes(self.policy, rel, size) {
                self.bytes.bar.as_ref()
            } else {
                &late
            };
            link::place(
                &self.probe,
                self.devs,
                mode,
                (&src, self.store.object_dir(&src), size),
                dir,
                at,
                exec,
                force_copy,
                moved,
            )?
        };
        Ok((method, (stat, *id)))
    }

    /// The object's checked store path; `exact`: the variant with the entry's mode (a link
    /// shares it), made from the other one where the store lacks it.
    fn source(&self, id: &ObjectId, exec: bool, exact: bool) -> Result<PathBuf> {
        let found = self
            .sources
            .get(&(*id, exec))
            .ok_or_else(|| crate::store::Error::NotFound(id.to_string()))?;
        if exact && *found != self.store.object_path(id, exec) {
            return Ok(self.store.ensure_variant(id, exec)?);
        }
        Ok(found.clone())
    }
}

/// Keep each edited file under a new name beside it (a hard link: the same inode, nothing
/// copied; the new entry is then renamed over the old name). The name never replaces
/// anything: `link` fails on an existing name, and the next suffix is tried.
fn keep_aside(beneath: &Beneath, paths: &[&str]) -> Result<Vec<KeptEdit>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut kept = Vec::new();
    for rel in paths {
        let (dir, name) = beneath.parent_of(rel)?;
        let from = dir.path().join(name);
        let mut n = 0u32;
        loop {
            let kept_as = if n == 0 {
                format!("{rel}.comfystore-kept-{now}")
            } else {
                format!("{rel}.comfystore-kept-{now}-{n}")
            };
            let kept_name = kept_as.rsplit('/').next().unwrap_or(&kept_as);
            let res = match dir.link(name, kept_name) {
                // A filesystem without hard links: move it (the name is free, just checked).
                Err(e) if e.kind() != ErrorKind::AlreadyExists => match dir.is_dir(kept_name) {
                    Err(m) if m.kind() == ErrorKind::NotFound => dir.rename(name, kept_name),
                    _ => Err(e),
                },
                r => r,
            };
            match res {
                Ok(()) => {
                    kept.push(KeptEdit {
                        path: rel.to_string(),
                        kept_as,
                    });
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e).ctx("keep", &from),
            }
        }
    }
    Ok(kept)
}

/// Rename the new entry `tmp` over `name` (both in `dir`); a folder that appeared there since
/// the scan is refused (and `tmp` cleaned up), never replaced.
fn rename_over(dir: &DirAt, tmp: &str, name: &str, path: &Path) -> Result<()> {
    let res = match dir.is_dir(name) {
        Ok(true) => Err(Error::bad_input(
            path,
            "is a directory where the tree has a file",
        )),
        _ => dir.rename(tmp, name).ctx("replace", path),
    };
    if res.is_err() {
        let _ = dir.unlink(tmp, false);
    }
    res
}
