//! The redb index: an accelerator over the store's files, never the truth.
//!
//! It maps objects to their sizes and SHA-256, SHA-256 back to BLAKE3, trees to their size, and
//! (device, inode) to the last hash of a file so unchanged files are not rehashed. It is opened
//! in redb's `MultiWriter` mode so several processes on one host share it; every write is one
//! short, batched transaction. A missing index is rebuilt from the files; a corrupt one is moved
//! aside and rebuilt.

use super::id::{ObjectId, Sha256};
use super::Store;
use crate::store::error::{Error, Result};
use redb::{
    Builder, ConcurrencyMode, Database, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::path::{Path, PathBuf};

/// object b3 → size (8 bytes LE) ‖ sha256 (32 bytes, all zero when unknown)
const OBJECTS: TableDefinition<&[u8; 32], &[u8; 40]> = TableDefinition::new("objects");
/// sha256 → object b3
const SHA256: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("sha256");
/// tree b3 → entries (8) ‖ logical bytes (8)
const TREES: TableDefinition<&[u8; 32], &[u8; 16]> = TableDefinition::new("trees");
/// (dev, ino) → size (8) ‖ mtime ns (8) ‖ ctime ns (8) ‖ b3 (32)
const STAT: TableDefinition<&[u8; 16], &[u8; 56]> = TableDefinition::new("stat_cache");
/// counters by name
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

const LOGICAL_ADDED: &str = "logical_bytes_added";

/// What identifies a file's content cheaply: if none of these changed, its bytes did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl StatKey {
    /// From `metadata` of an open file or a path.
    pub fn of(m: &std::fs::Metadata) -> StatKey {
        use std::os::unix::fs::MetadataExt;
        StatKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }

    /// From a `statx` (what std's `Metadata` is made of on Linux, so the two keys agree).
    pub fn of_statx(s: &rustix::fs::Statx) -> StatKey {
        let ns = |t: &rustix::fs::StatxTimestamp| t.tv_sec * 1_000_000_000 + i64::from(t.tv_nsec);
        StatKey {
            dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
            ino: s.stx_ino,
            size: s.stx_size,
            mtime_ns: ns(&s.stx_mtime),
            ctime_ns: ns(&s.stx_ctime),
        }
    }

    /// From a `stat`/`fstatat` (rustix's `Stat`: what a held folder's `statat` gives), the
    /// same fields as [`StatKey::of`] reads.
    pub fn of_stat(st: &rustix::fs::Stat) -> StatKey {
        // nanoseconds are below 1e9: the cast is exact
        let ns = |s: i64, n: u64| s * 1_000_000_000 + n as i64;
        StatKey {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// Whether the file may still change without its timestamps moving: changed within 2 s
    /// (git's "racily clean" rule; some filesystems keep one-second timestamps).
    pub fn is_racy(&self, now: std::time::SystemTime) -> bool {
        let now_ns = now
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(i64::MAX);
        let window = 2_000_000_000;
        now_ns - self.mtime_ns < window || now_ns - self.ctime_ns < window
    }

    fn key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.dev.to_be_bytes());
        k[8..].copy_from_slice(&self.ino.to_be_bytes());
        k
    }

    fn value(&self, id: &ObjectId) -> [u8; 56] {
        let mut v = [0u8; 56];
        v[..8].copy_from_slice(&self.size.to_le_bytes());
        v[8..16].copy_from_slice(&self.mtime_ns.to_le_bytes());
        v[16..24].copy_from_slice(&self.ctime_ns.to_le_bytes());
        v[24..].copy_from_slice(&id.0);
        v
    }

    fn matches(&self, v: &[u8; 56]) -> Option<ObjectId> {
        let same = v[..8] == self.size.to_le_bytes()
            && v[8..16] == self.mtime_ns.to_le_bytes()
            && v[16..24] == self.ctime_ns.to_le_bytes();
        same.then(|| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&v[24..]);
            ObjectId(id)
        })
    }
}

/// Writes gathered during an operation and committed in one transaction.
#[derive(Default)]
pub struct Batch {
    pub objects: Vec<(ObjectId, u64, Option<Sha256>)>,
    pub trees: Vec<(ObjectId, u64, u64)>,
    pub stats: Vec<(StatKey, ObjectId)>,
    pub logical_added: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
            && self.trees.is_empty()
            && self.stats.is_empty()
            && self.logical_added == 0
    }
}

/// Counts the index holds (see `comfystore stats`).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct IndexStats {
    pub objects: u64,
    pub stored_bytes: u64,
    pub trees: u64,
    pub tree_logical_bytes: u64,
    pub logical_bytes_added: u64,
    pub sha256_aliases: u64,
    pub stat_cache_entries: u64,
}

pub struct Index {
    db: Database,
    path: PathBuf,
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Index {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Index {
    fn open_db(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
        let mut b = Builder::new();
        b.set_concurrency_mode(ConcurrencyMode::MultiWriter);
        b.set_cache_size(64 << 20);
        b.create(path)
    }

    /// Open the index at `path`. A new (or emptied) index is filled from the store's files; a
    /// corrupt one is moved aside to `<path>.corrupt-<time>` and rebuilt.
    pub fn open_or_rebuild(path: &Path, store: &Store) -> Result<Index> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(path, e))?;
        }
        let existed = path.exists();
        let db = match Self::open_db(path) {
            Ok(db) => db,
            // Not corrupt, only not ours to open: never moved aside.
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if e.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                return Err(err(path, e));
            }
            Err(
                e @ (redb::DatabaseError::Storage(_) | redb::DatabaseError::UpgradeRequired(_)),
            ) => {
                let aside = path.with_extension(format!(
                    "redb.corrupt-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                tracing::warn!(
                    "index {} cannot be opened ({e}); moving it to {} and rebuilding",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside).map_err(|e| err(path, e))?;
                Self::open_db(path).map_err(|e| err(path, e))?
            }
            Err(e) => return Err(err(path, e)),
        };
        let index = Index {
            db,
            path: path.to_path_buf(),
        };
        index.init_tables()?;
        if !existed || index.needs_rebuild()? {
            index.rebuild(store)?;
        }
        Ok(index)
    }

    fn init_tables(&self) -> Result<()> {
        // Looked at first in a read transaction: an index that has them all is not written to
        // (a worker's restart on a shared volume leaves the store as it was).
        if let Ok(tx) = self.db.begin_read() {
            let all = tx.open_table(OBJECTS).is_ok()
                && tx.open_table(SHA256).is_ok()
                && tx.open_table(TREES).is_ok()
                && tx.open_table(STAT).is_ok()
                && tx.open_table(COUNTERS).is_ok();
            if all {
                return Ok(());
            }
        }
        let tx = self.db.begin_write().map_err(|e| err(&self.path, e))?;
        (|| -> std::result::Result<(), redb::Error> {
            tx.open_table(OBJECTS)?;
            tx.open_table(SHA256)?;
            tx.open_table(TREES)?;
            tx.open_table(STAT)?;
            tx.open_table(COUNTERS)?;
            Ok(())
        })()
        .map_err(|e| err(&self.path, e))?;
        tx.commit().map_err(|e| err(&self.path, e))
    }

    /// An index with no "built" counter was created but never filled (e.g. a crash during the
    /// first rebuild).
    fn needs_rebuild(&self) -> Result<bool> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, e))?;
        let t = tx.open_table(COUNTERS).map_err(|e| err(&self.path, e))?;
        Ok(t.get("built").map_err(|e| err(&self.path, e))?.is_none())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commit a batch in one write transaction.
    pub fn commit(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| err(&self.path, e))?;
        (|| -> std::result::Result<(), redb::Error> {
            let mut objects = tx.open_table(OBJECTS)?;
            let mut sha = tx.open_table(SHA256)?;
            for (id, size, sha256) in &batch.objects {
                let mut v = [0u8; 40];
                v[..8].copy_from_slice(&size.to_le_bytes());
                let known = match sha256 {
                    Some(s) => Some(s.0),
                    // Keep a SHA-256 learnt earlier.
                    None => {
                        let old = objects.get(&id.0)?.map(|v| *v.value());
                        old.and_then(|old| {
                            let mut s = [0u8; 32];
                            s.copy_from_slice(&old[8..]);
                            (s != [0u8; 32]).then_some(s)
                        })
                    }
                };
                if let Some(s) = known {
                    v[8..].copy_from_slice(&s);
                    sha.insert(&s, &id.0)?;
                }
                objects.insert(&id.0, &v)?;
            }
            let mut trees = tx.open_table(TREES)?;
            for (id, entries, logical) in &batch.trees {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&entries.to_le_bytes());
                v[8..].copy_from_slice(&logical.to_le_bytes());
                trees.insert(&id.0, &v)?;
            }
            let mut stat = tx.open_table(STAT)?;
            for (k, id) in &batch.stats {
                stat.insert(&k.key(), &k.value(id))?;
            }
            if batch.logical_added > 0 {
                let mut c = tx.open_table(COUNTERS)?;
                let old = c.get(LOGICAL_ADDED)?.map(|v| v.value()).unwrap_or(0);
                c.insert(LOGICAL_ADDED, old + batch.logical_added)?;
            }
            Ok(())
        })()
        .map_err(|e| err(&self.path, e))?;
        tx.commit().map_err(|e| err(&self.path, e))
    }

    /// Look up many stat keys in one read transaction; `Some(id)` where the cached hash is still
    /// valid for exactly that (size, mtime, ctime).
    pub fn lookup_stats(&self, keys: &[StatKey]) -> Result<Vec<Option<ObjectId>>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, e))?;
        let t = tx.open_table(STAT).map_err(|e| err(&self.path, e))?;
        keys.iter()
            .map(|k| {
                Ok(t.get(&k.key())
                    .map_err(|e| err(&self.path, e))?
                    .and_then(|v| k.matches(v.value())))
            })
            .collect()
    }

    /// The SHA-256 recorded for an object, if any.
    pub fn object_sha256(&self, id: &ObjectId) -> Result<Option<Sha256>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, e))?;
        let t = tx.open_table(OBJECTS).map_err(|e| err(&self.path, e))?;
        Ok(t.get(&id.0).map_err(|e| err(&self.path, e))?.and_then(|v| {
            let v = v.value();
            let mut s = [0u8; 32];
            s.copy_from_slice(&v[8..]);
            (s != [0u8; 32]).then_some(Sha256(s))
        }))
    }

    pub fn sha256_to_b3(&self, sha: &Sha256) -> Result<Option<ObjectId>> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, e))?;
        let t = tx.open_table(SHA256).map_err(|e| err(&self.path, e))?;
        Ok(t.get(&sha.0)
            .map_err(|e| err(&self.path, e))?
            .map(|v| ObjectId(*v.value())))
    }

    /// Forget objects and trees (after gc or quarantine). Their SHA-256 rows go too.
    pub fn remove(&self, objects: &[ObjectId], trees: &[ObjectId]) -> Result<()> {
        if objects.is_empty() && trees.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| err(&self.path, e))?;
        (|| -> std::result::Result<(), redb::Error> {
            let mut o = tx.open_table(OBJECTS)?;
            let mut s = tx.open_table(SHA256)?;
            for id in objects {
                if let Some(v) = o.remove(&id.0)? {
                    let mut sha = [0u8; 32];
                    sha.copy_from_slice(&v.value()[8..]);
                    if sha != [0u8; 32] {
                        s.remove(&sha)?;
                    }
                }
            }
            let mut t = tx.open_table(TREES)?;
            for id in trees {
                t.remove(&id.0)?;
            }
            Ok(())
        })()
        .map_err(|e| err(&self.path, e))?;
        tx.commit().map_err(|e| err(&self.path, e))
    }

    pub fn stats(&self) -> Result<IndexStats> {
        let tx = self.db.begin_read().map_err(|e| err(&self.path, e))?;
        (|| -> std::result::Result<IndexStats, redb::Error> {
            let mut s = IndexStats::default();
            let o = tx.open_table(OBJECTS)?;
            s.objects = o.len()?;
            for row in o.iter()? {
                let (_, v) = row?;
                let mut n = [0u8; 8];
                n.copy_from_slice(&v.value()[..8]);
                s.stored_bytes += u64::from_le_bytes(n);
            }
            let t = tx.open_table(TREES)?;
            s.trees = t.len()?;
            for row in t.iter()? {
                let (_, v) = row?;
                let mut n = [0u8; 8];
                n.copy_from_slice(&v.value()[8..]);
                s.tree_logical_bytes += u64::from_le_bytes(n);
            }
            s.sha256_aliases = tx.open_table(SHA256)?.len()?;
            s.stat_cache_entries = tx.open_table(STAT)?.len()?;
            s.logical_bytes_added = tx
                .open_table(COUNTERS)?
                .get(LOGICAL_ADDED)?
                .map(|v| v.value())
                .unwrap_or(0);
            Ok(s)
        })()
        .map_err(|e| err(&self.path, e))
    }

    /// Recreate the index from the store's files. The stat cache is dropped (it is only a
    /// cache); the logical-bytes counter restarts at the sum over the trees.
    pub fn rebuild(&self, store: &Store) -> Result<IndexStats> {
        let scan = super::gc::scan_store(store)?;
        let mut trees = Vec::new();
        for id in &scan.trees {
            match store.read_tree(id) {
                Ok(m) => trees.push((*id, m.entries.len() as u64, m.logical_bytes())),
                Err(e) => tracing::warn!("index rebuild: skipping tree {id}: {e}"),
            }
        }
        let tx = self.db.begin_write().map_err(|e| err(&self.path, e))?;
        (|| -> std::result::Result<(), redb::Error> {
            tx.delete_table(OBJECTS)?;
            tx.delete_table(TREES)?;
            tx.delete_table(SHA256)?;
            tx.delete_table(STAT)?;
            tx.delete_table(COUNTERS)?;
            let mut o = tx.open_table(OBJECTS)?;
            for (id, size) in &scan.objects {
                let mut v = [0u8; 40];
                v[..8].copy_from_slice(&size.to_le_bytes());
                o.insert(&id.0, &v)?;
            }
            let mut s = tx.open_table(SHA256)?;
            for (sha, id) in &scan.aliases {
                let old = o.get(&id.0)?.map(|v| *v.value());
                if let Some(old) = old {
                    let mut v = old;
                    v[8..].copy_from_slice(&sha.0);
                    o.insert(&id.0, &v)?;
                    s.insert(&sha.0, &id.0)?;
                }
            }
            let mut t = tx.open_table(TREES)?;
            let mut logical = 0;
            for (id, entries, bytes) in &trees {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&entries.to_le_bytes());
                v[8..].copy_from_slice(&bytes.to_le_bytes());
                t.insert(&id.0, &v)?;
                logical += bytes;
            }
            tx.open_table(STAT)?;
            let mut c = tx.open_table(COUNTERS)?;
            c.insert(LOGICAL_ADDED, logical)?;
            c.insert("built", 1)?;
            Ok(())
        })()
        .map_err(|e| err(&self.path, e))?;
        tx.commit().map_err(|e| err(&self.path, e))?;
        self.stats()
    }
}
