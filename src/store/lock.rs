//! The store's locks. The store-wide gc lock: writers hold it shared while they publish objects
//! and the trees or roots that refer to them; gc holds it exclusive. The named locks
//! (`locks/named/<key>`): one process at a time downloads a given model or rebuilds a given
//! git tree, and the others wait and then find it stored.
//!
//! Where the filesystem has no working locks (some NFS/FUSE mounts), or `COMFYSTORE_NO_LOCKS`
//! says so (locks that do not hold across hosts), every lock is a no-op: gc's grace period plus
//! mtime freshening keep a concurrent writer's objects alive, and content addressing makes a
//! duplicate download cost bandwidth, never correctness.

use super::Store;
use crate::store::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A held lock; released on drop (and by the kernel if the process dies).
pub struct StoreLock {
    _file: Option<File>,
}

/// A held named lock. Its file is removed before the lock is released, so the folder does not
/// fill up with one file per model ever downloaded.
pub struct NamedLock {
    held: Option<(File, PathBuf)>,
}

impl Drop for NamedLock {
    fn drop(&mut self) {
        // Removed while still locked: a waiter that opened this file sees it is no longer
        // the one at the path, and starts over with a new one.
        if let Some((_, path)) = &self.held {
            let _ = fs::remove_file(path);
        }
    }
}

/// Open (creating) a lock file. One that another member of a group-shared store created
/// (mode 0644) is opened read-only: `flock` needs no write access.
fn open_lock_file(path: &Path) -> Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(path),
        other => other,
    }
    .ctx("open lock", path)
}

impl Store {
    fn lock_file(&self) -> Result<File> {
        open_lock_file(&self.root().join("locks/gc.lock"))
    }

    /// Whether this handle takes locks (not with `COMFYSTORE_NO_LOCKS`).
    pub(crate) fn uses_locks(&self) -> bool {
        self.locks
    }

    /// Take the lock shared, as a writer. Blocks while gc runs. Fails at once, saying why,
    /// when this process may not write the store.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.writable_for(&self.root().join("locks/gc.lock"))?;
        self.lock_reading()
    }

    /// Take the lock shared, as a reader that must not see gc delete what it uses (placing a
    /// version). Works in a store this process may only read: the lock file is then opened
    /// read-only (`flock` needs no write access); where it cannot be opened at all, nothing
    /// is locked, as where locks do not work.
    pub fn lock_reading(&self) -> Result<StoreLock> {
        if !self.locks {
            return Ok(StoreLock { _file: None });
        }
        let path = self.root().join("locks/gc.lock");
        let f = match self.lock_file() {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("no gc lock for reading {}: {e}", path.display());
                return Ok(StoreLock { _file: None });
            }
        };
        match f.lock_shared() {
            Ok(()) => Ok(StoreLock { _file: Some(f) }),
            Err(e) if unsupported(&e) => {
                tracing::debug!("locks unsupported on this filesystem: {e}");
                Ok(StoreLock { _file: None })
            }
            Err(e) => Err(e).ctx("lock", &self.root().join("locks/gc.lock")),
        }
    }

    /// Take the lock exclusively, as gc. With `wait` false, returns `None` if writers hold it.
    pub fn lock_exclusive(&self, wait: bool) -> Result<Option<StoreLock>> {
        self.writable_for(&self.root().join("locks/gc.lock"))?;
        if !self.locks {
            tracing::warn!("locks disabled (COMFYSTORE_NO_LOCKS); relying on the grace period");
            return Ok(Some(StoreLock { _file: None }));
        }
        let f = self.lock_file()?;
        let path = self.root().join("locks/gc.lock");
        let res = if wait {
            f.lock().map_err(TryLockError::Error)
        } else {
            f.try_lock()
        };
        match res {
            Ok(()) => Ok(Some(StoreLock { _file: Some(f) })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) if unsupported(&e) => {
                tracing::warn!(
                    "locks unsupported on this filesystem ({e}); relying on the grace period"
                );
                Ok(Some(StoreLock { _file: None }))
            }
            Err(TryLockError::Error(e)) => Err(e).ctx("lock", &path),
        }
    }

    /// Take the exclusive lock named `key` (letters, digits, `-`), for work that processes
    /// sharing a store (workers on one network volume) must do one at a time: downloading a
    /// missing file once, rebuilding a git tree once (the second waits, then finds it stored).
    /// Blocks while another holds it; a no-op where locks do not work or are turned off.
    /// The holder removes the file before it lets go; a waiter that then gets the lock on the
    /// removed file sees that the path no longer names it and starts over, so two holders
    /// never coexist and the folder keeps no file per key ever used.
    pub fn lock_named(&self, key: &str) -> Result<NamedLock> {
        let none = NamedLock { held: None };
        let dir = self.root().join("locks/named");
        let path = dir.join(key);
        self.writable_for(&path)?;
        if !self.locks {
            return Ok(none);
        }
        super::durable::create_dirs(&dir).ctx("create", &dir)?;
        loop {
            let f = open_lock_file(&path)?;
            let res = match f.try_lock() {
                Err(TryLockError::WouldBlock) => {
                    tracing::info!("{key}: another process holds this lock; waiting for it");
                    f.lock()
                }
                Err(TryLockError::Error(e)) => Err(e),
                Ok(()) => Ok(()),
            };
            match res {
                Ok(()) => {}
                Err(e) if unsupported(&e) => return Ok(none),
                Err(e) => return Err(e).ctx("lock", &path),
            }
            // The holder we waited for removed the file before releasing it: ours is only
            // the lock if the path still names the file we locked.
            let same = match (f.metadata(), fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if same {
                return Ok(NamedLock {
                    held: Some((f, path)),
                });
            }
        }
    }

    /// Remove the named-lock files of processes killed while holding one (a live holder's lock
    /// makes `try_lock` fail). A waiter that opened a removed file sees it is gone and starts
    /// over, as after a normal release.
    pub(crate) fn remove_stale_named_locks(&self) {
        let Ok(entries) = fs::read_dir(self.root().join("locks/named")) else {
            return;
        };
        for e in entries.flatten() {
            if let Ok(f) = OpenOptions::new().read(true).write(true).open(e.path()) {
                if f.try_lock().is_ok() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || e.raw_os_error() == Some(rustix::io::Errno::NOLCK.raw_os_error())
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, StoreOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Named locks of one key exclude each other (also between handles of one process, as
    /// between processes), and leave no file behind.
    #[test]
    fn named_locks_of_one_key_exclude_each_other_and_leave_no_file() {
        let t = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            no_index: true,
            ..Default::default()
        };
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let store = Store::open(t.path(), &opts).unwrap();
                    for _ in 0..50 {
                        let _l = store.lock_named("download-sha256-k").unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
        let left: Vec<_> = std::fs::read_dir(t.path().join("locks/named"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "lock files left: {left:?}");
    }
}
