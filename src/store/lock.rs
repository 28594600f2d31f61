//! The store-wide gc lock: writers hold it shared while they publish objects and the trees or
//! roots that refer to them; gc holds it exclusive. Where the filesystem has no working locks
//! (some NFS/FUSE mounts), the lock becomes a no-op and gc's grace period plus mtime
//! freshening are what keep a concurrent writer's objects alive.

use super::Store;
use crate::store::error::{IoContext, Result};
use std::fs::{File, OpenOptions, TryLockError};

/// A held lock; released on drop (and by the kernel if the process dies).
pub struct StoreLock {
    _file: Option<File>,
}

impl Store {
    fn lock_file(&self) -> Result<File> {
        let path = self.root().join("locks/gc.lock");
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx("open lock", &path)
    }

    /// Take the lock shared, as a writer. Blocks while gc runs.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let f = self.lock_file()?;
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
}

fn unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || e.raw_os_error() == Some(rustix::io::Errno::NOLCK.raw_os_error())
}

impl Store {
    /// Take the exclusive lock named `key` (letters, digits, `-`), for work that processes
    /// sharing a store (workers on one network volume) must do one at a time: downloading a
    /// missing file once (the second waits, then finds it stored), placing models in a shared
    /// folder. Blocks while another holds it; a no-op where the filesystem has no working
    /// locks. The lock files stay (`locks/named/KEY`, empty, one per key ever used): removing
    /// one while a waiter has it open would let a third process lock a new file meanwhile.
    pub fn lock_named(&self, key: &str) -> Result<StoreLock> {
        let dir = self.root().join("locks/named");
        std::fs::create_dir_all(&dir).ctx("create", &dir)?;
        let path = dir.join(key);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx("open lock", &path)?;
        match f.lock() {
            Ok(()) => Ok(StoreLock { _file: Some(f) }),
            Err(e) if unsupported(&e) => Ok(StoreLock { _file: None }),
            Err(e) => Err(e).ctx("lock", &path),
        }
    }
}
