//! `add`: files and directory trees into the store.
//!
//! A tree is walked without following symlinks, its files are hashed in parallel (rayon), each
//! new content is written once, and the manifest is published only after one `syncfs` has made
//! the objects durable. Files whose (device, inode, size, mtime, ctime) match the stat cache are
//! not read at all.

use super::id::{ObjectId, Sha256};
use super::index::{Batch, StatKey};
use super::prehash::Prehash;
use super::tree::{Entry, Manifest, Node};
use super::Store;
use crate::store::error::{Error, IoContext, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A file changed less than this long before we read it may change again without its mtime
/// moving (coarse timestamps; one second on some network filesystems), so its hash is not
/// cached. This is git's "racily clean" rule.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What to leave out of a tree, and whether to compute SHA-256.
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// Relative paths (files or directories, with everything beneath) to leave out.
    pub exclude: Vec<String>,
    /// File or directory names to leave out wherever they occur (e.g. `.git`, `__pycache__`).
    pub exclude_names: Vec<String>,
    /// Files whose name ends with one of these (e.g. `.pyc`) are left out wherever they occur.
    pub exclude_suffixes: Vec<String>,
    /// Also compute SHA-256 for every file of a tree (single files always get it).
    pub tree_sha256: bool,
    /// When set, only these relative paths (and everything beneath those that are
    /// directories) make up the tree; other folders are not even walked. `lock` passes what
    /// `git ls-files` lists, so a clean repo's tree equals a fresh checkout's.
    pub select: Option<Vec<String>>,
}

/// The paths [`AddOptions::select`] keeps, and the folders that lead to them.
struct Selection {
    paths: HashSet<String>,
    ancestors: HashSet<String>,
}

impl Selection {
    fn new(paths: &[String]) -> Selection {
        let mut ancestors = HashSet::new();
        for p in paths {
            let mut cur = Path::new(p.trim_end_matches('/'));
            while let Some(parent) = cur.parent().filter(|p| !p.as_os_str().is_empty()) {
                ancestors.insert(parent.to_string_lossy().into_owned());
                cur = parent;
            }
        }
        Selection {
            paths: paths
                .iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect(),
            ancestors,
        }
    }

    /// Whether `rel` is selected itself or lies under a selected folder.
    fn keeps(&self, rel: &Path) -> bool {
        rel.ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| self.paths.contains(a.to_string_lossy().as_ref()))
    }
}

/// What an `add` did. The counters let scripts (and tests) see that the stat cache worked.
#[derive(Clone, Debug, Serialize)]
pub struct AddReport {
    pub id: ObjectId,
    /// "tree" or "object".
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
    pub files: u64,
    pub bytes: u64,
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    pub cached_files: u64,
    pub new_objects: u64,
    pub new_bytes: u64,
}

struct ScannedFile {
    rel: String,
    abs: PathBuf,
    stat: StatKey,
    exec: bool,
}

struct FileOutcome {
    id: ObjectId,
    size: u64,
    sha256: Option<Sha256>,
    hashed: bool,
    new: bool,
    /// Set when the hash may be cached under this stat.
    cache: Option<StatKey>,
    /// An adopted file to publish as (file, object path) once the store is synced.
    adopt: Option<(PathBuf, PathBuf)>,
}

fn is_exec(m: &fs::Metadata) -> bool {
    m.permissions().mode() & 0o111 != 0
}

/// Whether a file with this mtime may still change without its mtime moving.
pub(super) fn racy_mtime(mtime_ns: i64, now: SystemTime) -> bool {
    let now_ns = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(i64::MAX);
    now_ns - mtime_ns < RACY_WINDOW.as_nanos() as i64
}

fn racy(stat: &StatKey, now: SystemTime) -> bool {
    let now_ns = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(i64::MAX);
    let window = RACY_WINDOW.as_nanos() as i64;
    now_ns - stat.mtime_ns < window || now_ns - stat.ctime_ns < window
}

impl Store {
    /// Add a file (its object id) or a directory (its tree id).
    pub fn add_path(&self, path: &Path, opts: &AddOptions) -> Result<AddReport> {
        let meta = fs::metadata(path).ctx("stat", path)?;
        if meta.is_dir() {
            self.add_tree(path, opts)
        } else if meta.is_file() {
            self.add_file(path)
        } else {
            Err(Error::bad_input(path, "not a regular file or a directory"))
        }
    }

    /// Add one file, with SHA-256 (the outside world names single files by it).
    pub fn add_file(&self, path: &Path) -> Result<AddReport> {
        let _lock = self.lock_shared()?;
        let meta = fs::metadata(path).ctx("stat", path)?;
        let real = path.canonicalize().ctx("resolve", path)?;
        self.check_private_files(
            real.parent().unwrap_or(Path::new("/")),
            std::iter::once(real.as_path()),
        )?;
        let file = ScannedFile {
            rel: String::new(),
            abs: path.to_path_buf(),
            stat: StatKey::of(&meta),
            exec: is_exec(&meta),
        };
        let cached = self.cached_ids(std::slice::from_ref(&file))?;
        let out = self.ingest_file(&file, cached[0], true)?;
        let mut batch = Batch::default();
        finish_file(&out, &mut batch);
        if out.new {
            self.sync()?;
        }
        if let Some(sha) = out.sha256 {
            self.write_alias(&sha, &out.id)?;
        }
        batch.logical_added = out.size;
        if let Some(index) = self.index() {
            index.commit(&batch)?;
        }
        Ok(AddReport {
            id: out.id,
            kind: "object",
            sha256: out.sha256,
            files: 1,
            bytes: out.size,
            hashed_files: out.hashed as u64,
            hashed_bytes: if out.hashed { out.size } else { 0 },
            cached_files: (!out.hashed) as u64,
            new_objects: out.new as u64,
            new_bytes: if out.new { out.size } else { 0 },
        })
    }

    /// Add a directory as a tree.
    pub fn add_tree(&self, dir: &Path, opts: &AddOptions) -> Result<AddReport> {
        self.add_tree_with(dir, opts, None)
    }

    /// [`Store::add_tree`] of a folder of the store's own temp files (an environment an
    /// installer just wrote into `tmp/`), without writing their bytes a second time: each
    /// file is hashed where it is and a new content's file itself becomes the object (made
    /// read-only, then hard-linked into `objects/` after one `syncfs` has made it durable).
    /// Only a file that is ours alone is taken so: a regular file with one link (its inode
    /// shared with nothing, in the folder or outside it), owned by us. Any other file is
    /// copied as `add_tree` does. `dir` must lie in the store's `tmp/`; the caller deletes it
    /// afterwards (the objects keep their inodes).
    ///
    /// `pre`: hashes taken while the installer ran ([`Prehash::watch`] over its cache). A file
    /// whose inode it holds, unchanged, is not read again; and such a file may have two links,
    /// the other being the installer's cache entry in the same temp folder.
    pub fn adopt_tree(
        &self,
        dir: &Path,
        opts: &AddOptions,
        pre: Option<&Prehash>,
    ) -> Result<AddReport> {
        let tmp = self
            .tmp_dir()
            .canonicalize()
            .ctx("resolve", &self.tmp_dir())?;
        let real = dir.canonicalize().ctx("resolve", dir)?;
        if real == tmp || !real.starts_with(&tmp) {
            return Err(Error::bad_input(
                dir,
                "only a folder in the store's tmp/ can be adopted",
            ));
        }
        let none = Prehash::new();
        self.add_tree_with(&real, opts, Some(pre.unwrap_or(&none)))
    }

    /// `adopt`: [`Store::adopt_tree`], with what was hashed ahead.
    fn add_tree_with(
        &self,
        dir: &Path,
        opts: &AddOptions,
        adopt: Option<&Prehash>,
    ) -> Result<AddReport> {
        let _lock = self.lock_shared()?;
        let (files, mut entries) = scan(dir, opts, self.root())?;
        self.check_private_files(dir, files.iter().map(|f| f.abs.as_path()))?;
        let mut outcomes: Vec<FileOutcome> = if let Some(pre) = adopt {
            self.each_file(&files, false, |f, _| {
                self.adopt_file(f, opts.tree_sha256, pre)
            })?
        } else {
            self.each_file(&files, true, |f, c| {
                self.ingest_file(f, c, opts.tree_sha256)
            })?
        };
        // The flush (an adoption's, too) and the index commit of a big tree take seconds: a spinner, not a
        // finished bar sitting still.
        let saving = self
            .reporter()
            .start("saving", None, crate::report::Unit::Wait);
        if outcomes.iter().any(|o| o.adopt.is_some()) {
            let started = std::time::Instant::now();
            // The adopted bytes are durable before any of them is published.
            self.sync()?;
            let synced = started.elapsed();
            outcomes
                .par_iter_mut()
                .try_for_each(|o| self.publish_adopted(o, opts.tree_sha256))?;
            tracing::info!(
                "adopt_tree: {} files hashed; syncfs took {synced:.2?}, linking {:.2?}",
                files.len(),
                started.elapsed() - synced
            );
        }

        let mut batch = Batch::default();
        let mut report = AddReport {
            id: ObjectId([0; 32]),
            kind: "tree",
            sha256: None,
            files: files.len() as u64,
            bytes: 0,
            hashed_files: 0,
            hashed_bytes: 0,
            cached_files: 0,
            new_objects: 0,
            new_bytes: 0,
        };
        for (f, out) in files.iter().zip(&outcomes) {
            entries.push(file_entry(f, out.size, out.id));
            finish_file(out, &mut batch);
            report.bytes += out.size;
            if out.hashed {
                report.hashed_files += 1;
                report.hashed_bytes += out.size;
            } else {
                report.cached_files += 1;
            }
            if out.new {
                report.new_objects += 1;
                report.new_bytes += out.size;
            }
        }
        let mut manifest = Manifest { entries };
        manifest.sort();
        if report.new_objects > 0 {
            // One flush for every object written above, before anything refers to them.
            self.sync()?;
        }
        for out in outcomes.iter().filter(|o| o.hashed) {
            if let Some(sha) = out.sha256 {
                self.write_alias(&sha, &out.id)?;
            }
        }
        let (id, _) = self.put_tree(&manifest)?;
        report.id = id;
        batch
            .trees
            .push((id, manifest.entries.len() as u64, report.bytes));
        batch.logical_added = report.bytes;
        if let Some(index) = self.index() {
            index.commit(&batch)?;
        }
        saving.finish();
        Ok(report)
    }

    /// The tree id a directory would get from [`Store::add_tree`] with the same options,
    /// computed without writing anything to the store: `verify` compares a folder with a lock
    /// whose trees this store does not hold. The stat cache vouches for unchanged files unless
    /// `rehash`.
    pub fn hash_tree(&self, dir: &Path, opts: &AddOptions, rehash: bool) -> Result<ObjectId> {
        let (files, mut entries) = scan(dir, opts, self.root())?;
        let ids = self.each_file(&files, !rehash, |f, cached| match cached {
            Some(id) => Ok((id, f.stat.size)),
            None => {
                let mut file = open_nofollow(&f.abs)?;
                super::hash::b3_reader(&mut file).ctx("read", &f.abs)
            }
        })?;
        for (f, (id, size)) in files.iter().zip(ids) {
            entries.push(file_entry(f, size, id));
        }
        let mut manifest = Manifest { entries };
        manifest.sort();
        Ok(manifest.id())
    }

    /// Run `one` on every file in parallel, with what the stat cache says of it (when
    /// `use_cache`), counting the bytes of the files it must read on a "hashing" bar.
    fn each_file<T: Send>(
        &self,
        files: &[ScannedFile],
        use_cache: bool,
        one: impl Fn(&ScannedFile, Option<ObjectId>) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let cached = if use_cache {
            self.cached_ids(files)?
        } else {
            vec![None; files.len()]
        };
        // In bytes and files, so the eta follows the work: one checkpoint is worth thousands
        // of sources, and each source costs its open and publish whatever its size. What the
        // stat cache vouches for costs nothing and is not counted.
        let (total, count) = files
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .fold((0, 0), |(b, n), (f, _)| (b + f.stat.size, n + 1));
        let bar: std::sync::Arc<dyn crate::report::Progress> = self
            .reporter()
            .start(
                "hashing",
                Some(total),
                crate::report::Unit::Files {
                    files: count,
                    per_file: crate::report::HASH_FILE_COST,
                },
            )
            .into();
        let out = files
            .par_iter()
            .zip(cached.par_iter())
            .map(|(f, c)| {
                // A big file's bytes move the bar as they are read; the rest once it is done.
                let (r, moved) = crate::report::within(&bar, || one(f, *c));
                if c.is_none() {
                    bar.inc(f.stat.size.saturating_sub(moved));
                    bar.inc_files(1);
                }
                r
            })
            .collect::<Result<_>>()?;
        bar.finish();
        Ok(out)
    }

    /// Stat-cache lookups for many files at once (one read transaction).
    fn cached_ids(&self, files: &[ScannedFile]) -> Result<Vec<Option<ObjectId>>> {
        match self.index() {
            Some(index) => {
                let keys: Vec<StatKey> = files.iter().map(|f| f.stat).collect();
                index.lookup_stats(&keys)
            }
            None => Ok(vec![None; files.len()]),
        }
    }

    /// Hash one of our own temp files where it is ([`Store::adopt_tree`]): a file the store
    /// lacks is made read-only and left to publish ([`FileOutcome::adopt`]); one that is not
    /// ours alone is stored by copy.
    fn adopt_file(&self, f: &ScannedFile, want_sha256: bool, pre: &Prehash) -> Result<FileOutcome> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&f.abs)
            .ctx("open", &f.abs)?;
        let meta = file.metadata().ctx("stat", &f.abs)?;
        // One link, or two where the other is the installer's cache entry beside it.
        let links_ours = meta.nlink() == 1 || meta.nlink() == 2 && pre.holds(&meta);
        let ours = meta.is_file()
            && links_ours
            && meta.uid() == rustix::process::geteuid().as_raw()
            && meta.len() == f.stat.size;
        if !ours {
            return self.ingest_file(f, None, want_sha256);
        }
        // Through the handle: the inode we checked, whatever the path names meanwhile.
        let mode = if f.exec {
            super::object::MODE_EXEC
        } else {
            super::object::MODE_PLAIN
        };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .ctx("chmod", &f.abs)?;
        let known = pre
            .digests(&meta)
            .filter(|d| !want_sha256 || d.sha256.is_some());
        let digests = match known {
            // Hashed while the installer ran, and still that inode, size and mtime.
            Some(d) => d,
            None => {
                let before = StatKey::of(&file.metadata().ctx("stat", &f.abs)?);
                let d = super::hash::stream(&mut file, None, want_sha256).ctx("read", &f.abs)?;
                let after = StatKey::of(&file.metadata().ctx("stat", &f.abs)?);
                if before != after || d.size != before.size {
                    return Err(Error::bad_input(
                        &f.abs,
                        "file changed while it was being added; try again",
                    ));
                }
                // On its way to disk before the `syncfs` that waits for it.
                super::durable::start_writeback(&file, 0, 0);
                d
            }
        };
        let dest = self.object_path(&digests.b3, f.exec);
        let adopt = match self.object_state(&dest, digests.size)? {
            super::object::ObjectState::Present => None,
            super::object::ObjectState::Absent => Some((f.abs.clone(), dest)),
            // A damaged object is replaced with verified bytes by the copying path.
            super::object::ObjectState::Damaged => return self.ingest_file(f, None, want_sha256),
        };
        Ok(FileOutcome {
            id: digests.b3,
            size: digests.size,
            sha256: digests.sha256,
            hashed: true,
            new: false,
            // Linking moves the inode's ctime: a stat taken now would never match again.
            cache: None,
            adopt,
        })
    }

    /// Publish an adopted file under its object's name (after the `syncfs` that made it
    /// durable). Where hard links are refused, its bytes are copied instead.
    fn publish_adopted(&self, o: &mut FileOutcome, want_sha256: bool) -> Result<()> {
        let Some((src, dest)) = o.adopt.take() else {
            return Ok(());
        };
        o.new = match super::durable::publish_link(&src, &dest) {
            Ok(p) => p == super::durable::Published::New,
            Err(e) => {
                tracing::debug!("cannot link {}: {e}; copying it", src.display());
                let exec = fs::symlink_metadata(&src).is_ok_and(|m| is_exec(&m));
                let put = self.put_file(&src, exec, want_sha256)?;
                if put.digests.b3 != o.id {
                    return Err(Error::bad_input(
                        &src,
                        "file changed while it was being added; try again",
                    ));
                }
                put.new
            }
        };
        Ok(())
    }

    /// Hash and store one file, unless the stat cache vouches for it and the object is present.
    fn ingest_file(
        &self,
        f: &ScannedFile,
        cached: Option<ObjectId>,
        want_sha256: bool,
    ) -> Result<FileOutcome> {
        if let Some(id) = cached {
            let sha = match (want_sha256, self.index()) {
                (true, Some(index)) => index.object_sha256(&id)?,
                _ => None,
            };
            let usable = (!want_sha256 || sha.is_some())
                && match self.object_lstat(&id, f.exec) {
                    Ok(m) => {
                        super::durable::freshen(&self.object_path(&id, f.exec), m.mtime());
                        true
                    }
                    Err(_) => self.has_object(&id) && self.ensure_variant(&id, f.exec).is_ok(),
                };
            if usable {
                return Ok(FileOutcome {
                    id,
                    size: f.stat.size,
                    sha256: sha,
                    hashed: false,
                    new: false,
                    cache: None,
                    adopt: None,
                });
            }
        }
        let started = SystemTime::now();
        // Not followed: a file the scan saw, swapped for a symlink since, must not bring the
        // symlink's target (anything the user can read) into the tree under the file's name.
        let mut file = open_nofollow(&f.abs)?;
        let before = StatKey::of(&file.metadata().ctx("stat", &f.abs)?);
        let put = self.put_open_file(&mut file, before.size, f.exec, want_sha256, &f.abs)?;
        let after = StatKey::of(&file.metadata().ctx("stat", &f.abs)?);
        if put.digests.size != before.size {
            return Err(Error::bad_input(
                &f.abs,
                "file changed size while it was being added; try again",
            ));
        }
        let stable = before == after && !racy(&before, started);
        Ok(FileOutcome {
            id: put.digests.b3,
            size: put.digests.size,
            sha256: put.digests.sha256,
            hashed: true,
            new: put.new,
            cache: stable.then_some(before),
            adopt: None,
        })
    }
}

/// Open a scanned file to read it, refusing a symlink where the scan saw a file.
fn open_nofollow(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::bad_input(
                path,
                "became a symlink while it was being added; not followed (try again)",
            ),
            _ => Error::io("open", path, e),
        })
}

/// A scanned file's entry in its tree.
fn file_entry(f: &ScannedFile, size: u64, id: ObjectId) -> Entry {
    Entry {
        path: f.rel.clone(),
        node: Node::File {
            exec: f.exec,
            size,
            id,
        },
    }
}

/// Record what an ingested file adds to the index batch.
fn finish_file(out: &FileOutcome, batch: &mut Batch) {
    if out.hashed {
        batch.objects.push((out.id, out.size, out.sha256));
    }
    if let Some(k) = out.cache {
        batch.stats.push((k, out.id));
    }
}

/// Walk `dir` (never following symlinks), returning its files and its other entries
/// (symlinks and empty directories). The store itself and a materialize marker at the top are
/// left out: neither is part of the user's tree.
///
/// Through folder handles ([`super::walk`]): each entry costs one `statx` of its name in its
/// folder, not a resolution of its whole path (on a network volume, one round trip instead of
/// one per path component), and a folder swapped for a symlink mid-walk fails the walk.
fn scan(
    dir: &Path,
    opts: &AddOptions,
    store_root: &Path,
) -> Result<(Vec<ScannedFile>, Vec<Entry>)> {
    use super::walk::{self, NotUtf8, WalkError};
    let filter = Filter::new(dir, opts, store_root);
    let mut found = Found::default();
    let root = walk::open_root(dir, true).ctx("open", dir)?;
    walk::walk(root, dir, NotUtf8::Refuse, |e| {
        let rel = e.rel();
        if !filter.keeps(e, &rel) {
            return Ok(false);
        }
        found.add(e, dir, rel)?;
        Ok(true)
    })
    .map_err(|e| match e {
        WalkError::Io(op, path, source) => Error::io(op, path, source),
        WalkError::NotUtf8(path) => Error::bad_input(path, "file name is not valid UTF-8"),
        WalkError::Visit(e) => e,
    })?;
    Ok(found.into_parts())
}

/// What `scan` leaves out: exclusions by path, name and suffix, what a selection does not
/// reach, the store itself and the marker.
struct Filter<'a> {
    opts: &'a AddOptions,
    exclude: HashSet<&'a str>,
    exclude_names: HashSet<&'a str>,
    selection: Option<Selection>,
    /// Where the store sits inside the folder, if it does.
    store_rel: Option<PathBuf>,
}

impl<'a> Filter<'a> {
    fn new(dir: &Path, opts: &'a AddOptions, store_root: &Path) -> Filter<'a> {
        Filter {
            opts,
            exclude: opts
                .exclude
                .iter()
                .map(|s| s.trim_end_matches('/'))
                .collect(),
            exclude_names: opts.exclude_names.iter().map(String::as_str).collect(),
            selection: opts.select.as_deref().map(Selection::new),
            store_rel: dir
                .canonicalize()
                .ok()
                .and_then(|d| store_root.strip_prefix(d).ok().map(Path::to_path_buf)),
        }
    }

    /// Whether the walk takes `entry` (a folder it does not take is not entered).
    fn keeps(&self, entry: &super::walk::Found<'_>, rel: &str) -> bool {
        let name = entry.name;
        let is_dir = entry.meta.is_dir();
        let rel_path = Path::new(rel);
        let is_store = self.store_rel.as_deref() == Some(rel_path);
        let is_marker = rel == super::MARKER_NAME;
        let excluded_suffix = !is_dir
            && self
                .opts
                .exclude_suffixes
                .iter()
                .any(|s| name.ends_with(s.as_str()));
        if self.exclude.contains(rel)
            || self.exclude_names.contains(name)
            || excluded_suffix
            || is_store
            || is_marker
        {
            return false;
        }
        match &self.selection {
            Some(sel) => sel.keeps(rel_path) || (is_dir && sel.ancestors.contains(rel)),
            None => true,
        }
    }
}

/// What `scan` found so far.
#[derive(Default)]
struct Found {
    files: Vec<ScannedFile>,
    others: Vec<Entry>,
    dirs: BTreeSet<String>,
    non_empty: HashSet<String>,
}

impl Found {
    /// One entry the walk takes (`rel` beneath `dir`): a folder, a file or a symlink; anything
    /// else is refused.
    fn add(&mut self, entry: &super::walk::Found<'_>, dir: &Path, rel: String) -> Result<()> {
        if !entry.dir_rel.is_empty() {
            self.non_empty.insert(entry.dir_rel.to_string());
        }
        let meta = entry.meta;
        if meta.is_dir() {
            self.dirs.insert(rel);
        } else if meta.is_file() {
            self.files.push(ScannedFile {
                abs: dir.join(&rel),
                rel,
                stat: meta.stat,
                exec: meta.mode & 0o111 != 0,
            });
        } else if meta.is_symlink() {
            let target = entry.read_link().ctx("readlink", &entry.path())?;
            let target = target
                .into_string()
                .map_err(|_| Error::bad_input(entry.path(), "symlink target is not valid UTF-8"))?;
            self.others.push(Entry {
                path: rel,
                node: Node::Symlink { target },
            });
        } else {
            return Err(Error::bad_input(
                entry.path(),
                "unsupported file type (socket, fifo or device); exclude it with --exclude",
            ));
        }
        Ok(())
    }

    /// The files, and the other entries with the empty folders.
    fn into_parts(mut self) -> (Vec<ScannedFile>, Vec<Entry>) {
        for d in self.dirs {
            if !self.non_empty.contains(&d) {
                self.others.push(Entry {
                    path: d,
                    node: Node::Dir,
                });
            }
        }
        (self.files, self.others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    /// A file the scan saw, swapped for a symlink to a file outside before it is read: `add`
    /// and `hash_tree` refuse it rather than store the outside file's bytes under its name.
    #[test]
    fn a_file_swapped_for_a_symlink_after_the_scan_is_not_followed() {
        let t = tempfile::tempdir().expect("temp dir");
        let dir = t.path().join("src");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("a.py"), b"print(1)\n").expect("write");
        fs::write(t.path().join("secret"), b"outside").expect("write");
        let store = Store::open(t.path().join("s"), &StoreOptions::default()).expect("store");
        let (files, _) = scan(&dir, &AddOptions::default(), store.root()).expect("scan");
        fs::remove_file(dir.join("a.py")).expect("rm");
        std::os::unix::fs::symlink(t.path().join("secret"), dir.join("a.py")).expect("symlink");
        let err = store
            .ingest_file(&files[0], None, false)
            .err()
            .expect("a swapped file is refused");
        assert!(err.to_string().contains("became a symlink"), "{err}");
        let secret = crate::store::hash_bytes(b"outside", false).b3;
        assert!(!store.has_object(&secret), "the outside file was stored");
        let err = open_nofollow(&files[0].abs).expect_err("refused");
        assert!(err.to_string().contains("became a symlink"), "{err}");
    }

    /// `hash_tree` gives the id `add_tree` stores, and stores nothing.
    #[test]
    fn hash_tree_is_add_tree_without_writing() {
        let t = tempfile::tempdir().expect("temp dir");
        let dir = t.path().join("src");
        fs::create_dir_all(dir.join("sub/empty")).expect("mkdir");
        fs::write(dir.join("a.py"), b"print(1)\n").expect("write");
        fs::write(dir.join("sub/skip.pyc"), b"cache").expect("write");
        std::os::unix::fs::symlink("a.py", dir.join("link.py")).expect("symlink");
        let opts = AddOptions {
            exclude_suffixes: vec![".pyc".into()],
            ..Default::default()
        };
        let fresh = Store::open(t.path().join("fresh"), &StoreOptions::default()).expect("store");
        let hashed = fresh.hash_tree(&dir, &opts, false).expect("hash");
        assert!(!fresh.has_tree(&hashed));
        let file = crate::store::hash_bytes(b"print(1)\n", false).b3;
        assert!(!fresh.has_object(&file), "hashing stored an object");

        let other = Store::open(t.path().join("other"), &StoreOptions::default()).expect("store");
        let added = other.add_tree(&dir, &opts).expect("add");
        assert_eq!(hashed, added.id);
        // Through the stat cache `add_tree` filled, and rehashing, the same id again.
        assert_eq!(other.hash_tree(&dir, &opts, false).expect("hash"), added.id);
        assert_eq!(other.hash_tree(&dir, &opts, true).expect("hash"), added.id);
    }

    /// `adopt_tree` of a folder in the store's tmp/ gives the tree `add_tree` gives for the
    /// same files, and its new objects are the files' own inodes, read-only; a file whose inode
    /// is also linked from elsewhere is copied, and its mode (that other name's too) is left
    /// alone; a folder outside tmp/ is refused.
    #[test]
    fn adopt_tree_is_add_tree_without_a_second_copy() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().expect("temp dir");
        let fill = |dir: &Path| {
            fs::create_dir_all(dir.join("pkg/empty")).expect("mkdir");
            fs::write(dir.join("pkg/a.py"), b"print(1)\n").expect("write");
            fs::write(dir.join("pkg/same.py"), b"print(1)\n").expect("write");
            fs::write(dir.join("pkg/big.bin"), vec![7u8; (SMALL + 1) as usize]).expect("write");
            fs::write(dir.join("tool"), b"#!/bin/sh\n").expect("write");
            fs::set_permissions(dir.join("tool"), fs::Permissions::from_mode(0o755))
                .expect("chmod");
            std::os::unix::fs::symlink("pkg/a.py", dir.join("link.py")).expect("symlink");
        };
        const SMALL: u64 = crate::store::object::SMALL_FILE;
        let outside = t.path().join("outside");
        fill(&outside);
        let old = Store::open(t.path().join("old"), &StoreOptions::default()).expect("store");
        let want = old.add_tree(&outside, &AddOptions::default()).expect("add");

        let store = Store::open(t.path().join("new"), &StoreOptions::default()).expect("store");
        fs::create_dir_all(store.tmp_dir()).expect("tmp");
        let refused = store.adopt_tree(&outside, &AddOptions::default(), None);
        assert!(refused.is_err(), "adopted a folder outside tmp/");
        assert_eq!(
            fs::metadata(outside.join("pkg/a.py"))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o644,
            "a refused folder's file was chmod'ed"
        );

        let dir = store.tmp_dir().join(".tmp-adopt");
        fill(&dir);
        // One file shares its inode with a name outside tmp/: it must be copied, not adopted.
        let shared = t.path().join("shared-name");
        fs::hard_link(dir.join("tool"), &shared).expect("link");
        let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
        let same = [ino(&dir.join("pkg/a.py")), ino(&dir.join("pkg/same.py"))];
        let big_ino = ino(&dir.join("pkg/big.bin"));

        let got = store
            .adopt_tree(&dir, &AddOptions::default(), None)
            .expect("adopt");
        assert_eq!(got.id, want.id, "adopting gives another tree than adding");
        let manifest = store.read_tree(&got.id).expect("tree");
        for e in &manifest.entries {
            if let Node::File { id, exec, .. } = &e.node {
                let obj = store.object_path(id, *exec);
                let m = fs::metadata(&obj).expect("object");
                let mode = m.permissions().mode() & 0o777;
                assert_eq!(mode, if *exec { 0o555 } else { 0o444 }, "{}", e.path);
                assert_eq!(&crate::store::hash::b3_file(&obj).expect("hash").0, id);
            }
        }
        let obj_of = |rel: &str| {
            let e = manifest.entries.iter().find(|e| e.path == rel).expect(rel);
            match &e.node {
                Node::File { id, exec, .. } => store.object_path(id, *exec),
                _ => panic!("{rel} is not a file"),
            }
        };
        // a.py and same.py hold the same bytes: one of them became the object.
        assert!(
            same.contains(&ino(&obj_of("pkg/a.py"))),
            "a.py was copied, not adopted"
        );
        assert_eq!(ino(&obj_of("pkg/big.bin")), big_ino, "big.bin was copied");
        assert_ne!(
            ino(&obj_of("tool")),
            ino(&shared),
            "a shared inode was adopted"
        );
        assert_eq!(
            fs::metadata(&shared).expect("stat").permissions().mode() & 0o777,
            0o755,
            "the mode of a file linked from outside tmp/ was changed"
        );
        assert_eq!(fs::read(&shared).expect("read"), b"#!/bin/sh\n");
        let report = store.fsck(&Default::default()).expect("fsck");
        assert!(report.is_clean(), "{report:?}");
    }
}
