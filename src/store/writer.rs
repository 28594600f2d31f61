//! Who wrote a temp file, so gc can remove the temp files of a writer that is gone whatever
//! their age (a killed download leaves up to its whole size, a killed import thousands of
//! files).
//!
//! Each process that writes into a store's `tmp/` holds an exclusive `flock` on its own file
//! `locks/writers/<16 hex>` for as long as its store handle lives, and names its temp files
//! `.tmp-w<16 hex>-<32 hex>`. The kernel drops the lock when the process dies, kill -9
//! included; gc then gets the lock, and the writer's temp files are leftovers. Where `flock`
//! is unsupported (some NFS and FUSE mounts), gc falls back to the age of the temp files.

use super::durable::{self, TEMP_PREFIX};
use super::Store;
use crate::store::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// The lock a live writer holds; its file is removed when the handle is dropped.
pub(crate) struct WriterLock {
    pub tag: String,
    path: PathBuf,
    _file: File,
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The folder of the writers' lock files.
pub(crate) fn writers_dir(store_root: &Path) -> PathBuf {
    store_root.join("locks/writers")
}

/// The writer's tag in a temp file's name `.tmp-w<16 hex>-…`, if it has one.
pub(crate) fn tag_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(TEMP_PREFIX)?.strip_prefix('w')?;
    let (tag, _) = rest.split_once('-')?;
    (tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag)
}

/// Whether a writer is still alive, as far as locks can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    Alive,
    Gone,
    /// Locks do not work here: only the file's age can tell.
    Unknown,
}

/// Whether the writer `tag` is alive: its lock file is held. A lock file that is missing or
/// can be locked belongs to a writer that is gone (and is removed with `remove`).
pub(crate) fn writer_state(store_root: &Path, tag: &str, remove: bool) -> Writer {
    let path = writers_dir(store_root).join(tag);
    // Read-only: in a group-shared store the file may be another member's (`flock` needs no
    // write access).
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Writer::Gone,
        Err(_) => return Writer::Unknown,
    };
    match f.try_lock() {
        Ok(()) => {
            if remove {
                let _ = fs::remove_file(&path);
            }
            Writer::Gone
        }
        Err(TryLockError::WouldBlock) => Writer::Alive,
        Err(TryLockError::Error(_)) => Writer::Unknown,
    }
}

impl Store {
    /// This handle's writer lock, taken on first use; `None` where locks do not work.
    fn writer(&self) -> Option<&WriterLock> {
        if !self.uses_locks() {
            return None;
        }
        self.writer
            .get_or_init(|| match take_writer_lock(self.root()) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!("no writer lock: {e}");
                    None
                }
            })
            .as_ref()
    }

    /// A fresh temp file in `tmp/`, named for this writer so gc knows when it is gone.
    pub(crate) fn create_temp(&self) -> Result<(File, PathBuf)> {
        self.writable_for(&self.tmp_dir())?;
        let prefix = match self.writer() {
            Some(w) => format!("{TEMP_PREFIX}w{}-", w.tag),
            None => TEMP_PREFIX.to_string(),
        };
        durable::create_temp_named(&self.tmp_dir(), &prefix)
    }
}

fn take_writer_lock(root: &Path) -> Result<Option<WriterLock>> {
    let dir = writers_dir(root);
    super::durable::create_dirs(&dir).ctx("create", &dir)?;
    let tag = durable::unique_name("")[..16].to_string();
    let path = dir.join(&tag);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx("create", &path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(WriterLock {
            tag,
            path,
            _file: f,
        })),
        Err(_) => {
            let _ = fs::remove_file(&path);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GcOptions, StoreOptions};

    /// gc keeps a live writer's temp files, young or old, and removes them once the writer is
    /// gone (its lock released), whatever their age.
    #[test]
    fn gc_keeps_a_live_writers_temp_files_and_removes_a_gone_ones() {
        let t = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            no_index: true,
            ..Default::default()
        };
        let writer = Store::open(t.path(), &opts).unwrap();
        let (_f, tmp) = writer.create_temp().unwrap();
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        let tag = tag_of(&name)
            .expect("a writer's temp file names its writer")
            .to_string();
        assert_eq!(writer_state(t.path(), &tag, false), Writer::Alive);

        let gc = Store::open(t.path(), &opts).unwrap();
        let grace0 = GcOptions {
            grace: std::time::Duration::ZERO,
            dry_run: false,
        };
        gc.gc(&grace0).unwrap();
        assert!(tmp.exists(), "gc removed a live writer's temp file");

        // The writer goes (as a killed process would, its lock released): its file stays.
        drop(writer);
        assert!(tmp.exists());
        assert_eq!(writer_state(t.path(), &tag, false), Writer::Gone);
        gc.gc(&GcOptions::default()).unwrap();
        assert!(!tmp.exists(), "gc kept a gone writer's temp file");
    }
}
