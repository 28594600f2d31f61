//! The content-addressed store: immutable objects named by BLAKE3, tree manifests, GC roots,
//! and a redb index that only accelerates what the files already say.
//!
//! The on-disk format is specified in `store-layout.md` at the repository root; keep the two in
//! step. Everything here is safe against concurrent processes and kill -9: files are written
//! under unique temp names in `tmp/` and published by an atomic no-replace rename.

pub mod error;

pub use error::{Error, Result};
mod access;
mod adopt;
mod bundle;
mod durable;
mod fsck;
mod gc;
mod git_trees;
mod hash;
pub mod hex64;
mod id;
mod index;
mod ingest;
mod lock;
mod object;
mod prehash;
mod reserved;
mod roots;
mod shards;
mod sources;
mod tree;
pub mod walk;
mod writer;

pub use adopt::{AdoptMode, AdoptReport, AdoptScope};
pub use bundle::{ExportReport, ImportReport};
pub use durable::{sync_filesystem, unique_name, write_file_atomic, TEMP_PREFIX};
pub use fsck::{FsckOptions, FsckProblem, FsckReport};
pub use gc::{GcItem, GcOptions, GcReport};
pub use git_trees::git_tree_root;
pub use hash::b3_file;
pub use hash::{hash_bytes, Digests};
pub use id::{AnyId, ObjectId, Sha256};
pub(crate) use index::Batch as IndexBatch;
pub use index::{IndexStats, StatKey};
pub use ingest::{AddOptions, AddReport};
pub use lock::StoreLock;
pub use object::PutResult;
pub use prehash::{Prehash, PrehashReport};
pub use reserved::{is_cache_path, CACHE_NAMES, CACHE_SUFFIXES, MARKER_NAME};
pub use roots::{check_root_name, Root};
pub use tree::{check_rel_path, Entry, Manifest, Node};

use crate::report::Reporter;
use error::IoContext;
use index::Index;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the file that marks a directory as a comfystore store, and its format line.
pub const MARKER: &str = "comfystore-store.json";
const FORMAT: &str = "comfystore.store/1";

/// How to open a store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Where the redb index lives. Default: `<store>/index.redb`, or a per-host file under the
    /// local cache dir when the store is on a network filesystem (see `store-layout.md`).
    pub index_path: Option<PathBuf>,
    /// Run without an index (every lookup goes to the files). For tests and broken indexes.
    pub no_index: bool,
    /// Take no `flock` at all, as on a filesystem whose locks do not work (or do not hold
    /// across hosts): safety then rests on content addressing, no-replace renames and gc's
    /// grace period (store-layout.md, "Concurrency"). Also set by `COMFYSTORE_NO_LOCKS=1`.
    pub no_locks: bool,
}

/// An open store.
pub struct Store {
    root: PathBuf,
    index: Option<Index>,
    /// Where long operations (hashing, fsck, bundles, placing, downloads) report progress.
    reporter: Arc<dyn Reporter>,
    /// Objects this handle published (or found present) whose index rows are not written
    /// yet: every publish goes through the index, at the next [`Store::sync`], before the tree
    /// or root that names it, or when the handle is dropped.
    pending: std::sync::Mutex<Pending>,
    /// The lock that tells gc this handle's temp files are in use (taken on first use).
    writer: std::sync::OnceLock<Option<writer::WriterLock>>,
    /// Whether to take `flock`s (false with [`StoreOptions::no_locks`]).
    locks: bool,
    /// Whether this process may write the store (`access.rs`).
    access: access::Access,
    /// The objects' shard folders, held open for one-name stats (`shards.rs`).
    shards: shards::ShardDirs,
}

#[derive(Default)]
struct Pending {
    rows: Vec<(ObjectId, u64, Option<Sha256>)>,
    /// Objects found sound by a rehash: their (size, mtime, ctime) vouch for them until they
    /// change.
    stats: Vec<(StatKey, ObjectId)>,
    /// Some of them are new and not yet flushed to disk.
    unsynced: bool,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush_pending(false) {
            tracing::warn!("index rows of new objects not written: {e}");
        }
    }
}

impl Store {
    /// Open the store at `root`, creating it if the directory is missing or empty.
    ///
    /// A non-empty directory without the marker file is refused, so a mistyped `--store` can
    /// never make gc delete somebody else's files.
    pub fn open(root: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        let root = root.as_ref();
        fs::create_dir_all(root).ctx("create store directory", root)?;
        let root = root.canonicalize().ctx("resolve store path", root)?;
        let marker = root.join(MARKER);
        match fs::read_to_string(&marker) {
            Ok(text) => check_marker(&marker, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => init_layout(&root)?,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(access::unreadable(&root, &marker))
            }
            Err(e) => return Err(e).ctx("read", &marker),
        }
        let access = access::Access::of(&root);
        let shards = shards::ShardDirs::new(&root);
        let mut store = Store {
            shards,
            root,
            index: None,
            reporter: crate::report::silent(),
            pending: Default::default(),
            writer: std::sync::OnceLock::new(),
            locks: !(opts.no_locks || no_locks_env()),
            access,
        };
        if !opts.no_index {
            let path = match &opts.index_path {
                Some(p) => p.clone(),
                None => default_index_path(&store.root, store.writable().is_ok())?,
            };
            store.index = Some(Index::open_or_rebuild(&path, &store)?);
        }
        Ok(store)
    }

    /// The same store, reporting progress to `reporter` (silent by default).
    pub fn with_reporter(mut self, reporter: Arc<dyn Reporter>) -> Store {
        self.reporter = reporter;
        self
    }

    /// Where operations on this store report their progress.
    pub fn reporter(&self) -> &dyn Reporter {
        self.reporter.as_ref()
    }

    /// Run `read` with a byte count of its own when the file is big enough to take a while
    /// (a checkpoint): its bar moves as the bytes are read, not once at the end, and so does
    /// the tree's count it is part of ([`crate::report::within`]).
    pub(crate) fn reading_big<T>(
        &self,
        what: &Path,
        len: u64,
        read: impl FnOnce(&dyn crate::report::Progress) -> T,
    ) -> T {
        const BIG: u64 = 64 << 20;
        let label = what.file_name().map_or_else(
            || what.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let bar = if len >= BIG {
            crate::report::nested(self.reporter().start(
                &label,
                Some(len),
                crate::report::Unit::Bytes,
            ))
        } else {
            crate::report::Silent.start("", None, crate::report::Unit::Bytes)
        };
        let out = read(bar.as_ref());
        bar.finish();
        out
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index, if this store was opened with one.
    pub(crate) fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    /// Recreate the index from the store's files: where it lives and what it now counts.
    /// `None` when the store was opened without an index.
    pub fn rebuild_index(&self) -> Result<Option<(&Path, IndexStats)>> {
        match self.index() {
            Some(index) => Ok(Some((index.path(), index.rebuild(self)?))),
            None => Ok(None),
        }
    }

    /// Where the index lives and what it counts (objects, trees, bytes); `None` without one.
    pub fn index_stats(&self) -> Result<Option<(&Path, IndexStats)>> {
        match self.index() {
            Some(index) => Ok(Some((index.path(), index.stats()?))),
            None => Ok(None),
        }
    }

    /// Path of an object file; `exec` selects the executable (0555) variant.
    pub fn object_path(&self, id: &ObjectId, exec: bool) -> PathBuf {
        // One string, not `join`s and a `format!`: this runs once or twice per entry placed
        // (8 % of a hard-link materialize's instructions were its path handling).
        let hex = id.hex();
        let root = self.root.as_os_str();
        let mut p = std::ffi::OsString::with_capacity(root.len() + 80);
        p.push(root);
        if !root.as_encoded_bytes().ends_with(b"/") {
            p.push("/");
        }
        p.push("objects/b3/");
        p.push(&hex[..2]);
        p.push("/");
        p.push(&hex[2..]);
        if exec {
            p.push("-exec");
        }
        PathBuf::from(p)
    }

    /// `lstat` of an object file, through its shard folder's held handle (one name to look
    /// up, not the store's whole path: a round trip each on a network filesystem).
    pub(crate) fn object_lstat(
        &self,
        id: &ObjectId,
        exec: bool,
    ) -> std::io::Result<shards::ObjectStat> {
        self.shards.lstat(id, &self.object_path(id, exec))
    }

    /// The held handle of the folder holding the object file at `path` (a path this store
    /// gave out), so that placing it opens or links one name rather than walking the store's
    /// whole path; `None` for any other path. A name not found through it must be asked for
    /// by `path` again (`shards.rs`).
    pub fn object_dir(&self, path: &Path) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.shards.dir_of(path)
    }

    /// Path of a tree manifest file.
    pub fn tree_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.hex();
        self.root.join("trees/b3").join(&hex[..2]).join(&hex[2..])
    }

    /// Path of the SHA-256 alias file that names an object by its SHA-256.
    pub fn alias_path(&self, sha: &Sha256) -> PathBuf {
        let hex = sha.hex();
        self.root
            .join("aliases/sha256")
            .join(&hex[..2])
            .join(&hex[2..])
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Resolve what a user typed (a b3 id or a sha256) to an object or tree id in the store.
    pub fn resolve(&self, id: &AnyId) -> Result<ObjectId> {
        match id {
            AnyId::B3(id) => Ok(*id),
            AnyId::Sha256(sha) => self
                .lookup_sha256(sha)?
                .ok_or_else(|| Error::NotFound(sha.to_string())),
        }
    }

    /// The SHA-256 the index recorded for an object, if any.
    pub fn sha256_of(&self, id: &ObjectId) -> Result<Option<Sha256>> {
        match &self.index {
            Some(index) => index.object_sha256(id),
            None => Ok(None),
        }
    }

    /// The object whose SHA-256 is `sha`, if the store has one (index first, then alias file).
    pub fn lookup_sha256(&self, sha: &Sha256) -> Result<Option<ObjectId>> {
        if let Some(index) = &self.index {
            if let Some(id) = index.sha256_to_b3(sha)? {
                if self.has_object(&id) {
                    return Ok(Some(id));
                }
            }
        }
        let path = self.alias_path(sha);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let id: ObjectId = text
                    .trim()
                    .parse()
                    .map_err(|_| Error::bad_input(&path, "alias file does not hold a b3: id"))?;
                Ok(self.has_object(&id).then_some(id))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &path),
        }
    }

    /// Whether the store holds a tree manifest with this id.
    pub fn has_tree(&self, id: &ObjectId) -> bool {
        self.tree_path(id).exists()
    }

    /// Make published files durable: one `syncfs` on Linux (or a full `sync` elsewhere), done
    /// once before anything that refers to new objects is published.
    pub fn sync(&self) -> Result<()> {
        self.flush_pending(true)
    }

    /// Remember that a rehash found the object file with `key` sound.
    pub(crate) fn note_sound(&self, key: StatKey, id: ObjectId) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.stats.push((key, id));
    }

    /// Remember an object put by this handle, for its index row.
    pub(crate) fn note_object(&self, digests: &Digests, new: bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.rows.push((digests.b3, digests.size, digests.sha256));
        p.unsynced |= new;
    }

    /// Write the index rows of the objects put so far, after one `syncfs` when some are new
    /// (or `force_sync`): nothing, the index included, refers to an object before it is
    /// durable.
    pub(crate) fn flush_pending(&self, force_sync: bool) -> Result<()> {
        let (rows, stats, unsynced) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let unsynced = std::mem::take(&mut p.unsynced);
            (
                std::mem::take(&mut p.rows),
                std::mem::take(&mut p.stats),
                unsynced,
            )
        };
        if force_sync || unsynced {
            durable::sync_filesystem(&self.root)?;
        }
        if let (Some(index), false) = (self.index(), rows.is_empty() && stats.is_empty()) {
            index.commit(&index::Batch {
                objects: rows,
                stats,
                ..Default::default()
            })?;
        }
        Ok(())
    }
}

fn check_marker(marker: &Path, text: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::bad_input(marker, format!("not valid JSON: {e}")))?;
    match v.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => Ok(()),
        Some(other) => Err(Error::Store {
            path: marker.to_path_buf(),
            reason: format!(
                "store format {other:?} is not supported (this build reads {FORMAT:?})"
            ),
        }),
        None => Err(Error::bad_input(marker, "no \"format\" field")),
    }
}

/// Names a store's top level may hold before its marker exists: another process may be
/// creating the same store right now, or one was killed part-way through.
const LAYOUT_NAMES: &[&str] = &[
    "objects",
    "trees",
    "aliases",
    "roots",
    "tmp",
    "quarantine",
    "locks",
    "sources",
    "index.redb",
    "cache",
];

/// Create the folders of a new store. Every step is idempotent and the marker comes last, so
/// concurrent creators converge and an interrupted creation is finished by the next open.
/// Refuses a directory holding anything else.
fn init_layout(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).ctx("list", root)? {
        let name = entry.ctx("list", root)?.file_name();
        let name = name.to_string_lossy();
        // The marker itself is ours too: a concurrent creator may finish between our check
        // for it and this listing.
        let ours = LAYOUT_NAMES.contains(&name.as_ref())
            || name == MARKER
            || name.starts_with(durable::TEMP_PREFIX);
        if !ours {
            return Err(Error::Store {
                path: root.to_path_buf(),
                reason: format!(
                    "directory is not empty (it holds {name:?}) and has no {MARKER}: refusing to use it as a store"
                ),
            });
        }
    }
    // Private by default: objects are 0444, so whoever can search the store's top folder can
    // read every model, key and source file ever stored. Sharing a store is a choice
    // (`chmod 755`), after which `adopt` refuses files others cannot read.
    // A filesystem that ignores or refuses modes (some FUSE mounts) keeps its own: said, not
    // fatal.
    // A folder made group-shared before first use (setgid: store-layout.md, "Permissions")
    // keeps the mode its owner chose.
    let group_shared = fs::metadata(root)
        .map(|m| std::os::unix::fs::MetadataExt::mode(&m) & 0o2000 != 0)
        .unwrap_or(false);
    if !group_shared {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = fs::set_permissions(root, fs::Permissions::from_mode(0o700)) {
            tracing::warn!(
                "{}: could not make the new store private (chmod 700): {e}",
                root.display()
            );
        }
    }
    for dir in ["objects/b3", "trees/b3", "aliases/sha256"] {
        for shard in 0..=255u8 {
            let p = root.join(dir).join(format!("{shard:02x}"));
            durable::create_dirs(&p).ctx("create", &p)?;
        }
    }
    for dir in ["roots", "tmp", "quarantine", "locks"] {
        let p = root.join(dir);
        durable::create_dirs(&p).ctx("create", &p)?;
    }
    let body = format!("{{\"format\":\"{FORMAT}\"}}\n");
    durable::write_file_atomic(&root.join(MARKER), body.as_bytes(), 0o644)?;
    Ok(())
}

/// `COMFYSTORE_NO_LOCKS` set to a true value (what the CLI's `--no-locks` accepts: anything
/// but empty, `0`, `false`, `no`, `off`).
fn no_locks_env() -> bool {
    std::env::var("COMFYSTORE_NO_LOCKS").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    })
}

/// `COMFYSTORE_INDEX` wins; a store on a network filesystem gets a per-host index on local disk
/// (redb's locks and page cache are not validated across hosts), and so does one this process
/// cannot write the index of (a read-only store, or a group-shared store's index made by
/// another member); otherwise `<store>/index.redb`.
fn default_index_path(root: &Path, writable: bool) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("COMFYSTORE_INDEX") {
        return Ok(PathBuf::from(p));
    }
    let in_store = root.join("index.redb");
    let own_index_writable = writable
        && (!in_store.exists()
            || rustix::fs::access(&in_store, rustix::fs::Access::WRITE_OK).is_ok());
    if durable::is_network_fs(root) || !own_index_writable {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        let key = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
        let dir = cache.join("comfystore/index");
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        return Ok(dir.join(format!("{}.redb", &key[..16])));
    }
    Ok(root.join("index.redb"))
}
