//! The objects' shard folders (`objects/b3/<2 hex>`), held open so that a stat of an object
//! walks one name instead of the store's whole path. On a network filesystem that caches no
//! names (MooseFS over FUSE: entry cache 0 s by default; NFS with `lookupcache=none`) every
//! component of a path walk is a round trip to the metadata server: `lstat` of
//! `/volume/store/objects/b3/ab/cdef…` costs five, `fstatat(shard, "cdef…")` one
//! (docs/performance.md, "Network-like latency").
//!
//! Only a found object is believed from a held folder. A shard folder is never renamed, and a
//! removed one can hold no entries, so a name found through its handle is in the store; a
//! name not found is looked for again by its full path (a folder opened before gc removed
//! it, or one created after this handle first looked), so "absent" is always the path's
//! answer, as before.

use super::{ObjectId, StatKey};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What an object's `lstat` says, by either route.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectStat {
    pub is_file: bool,
    pub key: StatKey,
}

impl ObjectStat {
    pub fn mtime(&self) -> std::time::SystemTime {
        let ns = self.key.mtime_ns;
        if ns >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64)
        } else {
            std::time::UNIX_EPOCH
        }
    }
}

/// Handles of `objects/b3` and its shard folders, opened (`O_PATH`: no open round trip on
/// FUSE) on first use; a folder that cannot be opened is not remembered and is tried again.
pub(crate) struct ShardDirs {
    b3: PathBuf,
    top: OnceLock<OwnedFd>,
    shards: Box<[OnceLock<OwnedFd>]>,
}

impl ShardDirs {
    pub fn new(root: &Path) -> ShardDirs {
        ShardDirs {
            b3: root.join("objects/b3"),
            top: OnceLock::new(),
            shards: (0..256).map(|_| OnceLock::new()).collect(),
        }
    }

    fn flags() -> OFlags {
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
    }

    fn shard(&self, first: u8, hex2: &str) -> Option<&OwnedFd> {
        let slot = &self.shards[usize::from(first)];
        if let Some(fd) = slot.get() {
            return Some(fd);
        }
        let top = match self.top.get() {
            Some(fd) => fd,
            None => {
                let fd = rustix::fs::open(&self.b3, Self::flags(), Mode::empty()).ok()?;
                self.top.get_or_init(|| fd)
            }
        };
        let fd = rustix::fs::openat(top, hex2, Self::flags(), Mode::empty()).ok()?;
        Some(slot.get_or_init(|| fd))
    }

    /// The held handle of the shard folder holding `path`, when `path` is an object path of
    /// this store (`objects/b3/<2 hex>/<name>`), for opening or linking it by its name alone.
    pub fn dir_of(&self, path: &Path) -> Option<BorrowedFd<'_>> {
        let parent = path.parent()?;
        if parent.parent()? != self.b3 {
            return None;
        }
        let hex2 = parent.file_name()?.to_str()?;
        let first = (hex2.len() == 2)
            .then(|| u8::from_str_radix(hex2, 16).ok())
            .flatten()?;
        self.shard(first, hex2).map(|fd| fd.as_fd())
    }

    /// `lstat` of the object `id` at `path` (its full path, asked when the held folder does
    /// not have it).
    pub fn lstat(&self, id: &ObjectId, path: &Path) -> std::io::Result<ObjectStat> {
        let hex = id.hex();
        if let Some(dir) = self.shard(id.0[0], &hex[..2]) {
            let name = path.file_name().unwrap_or_default();
            if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                return Ok(ObjectStat {
                    is_file: FileType::from_raw_mode(st.st_mode) == FileType::RegularFile,
                    key: StatKey::of_stat(&st),
                });
            }
        }
        let m = std::fs::symlink_metadata(path)?;
        Ok(ObjectStat {
            is_file: m.is_file(),
            key: StatKey::of(&m),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, StoreOptions};
    use std::os::unix::fs::MetadataExt;

    /// A shard folder removed after its handle was taken (gc emptied it) and made again (a
    /// new object in it): the object is still found, by its path, and placed by its path.
    #[test]
    fn a_shard_folder_made_again_after_its_handle_was_taken_is_asked_by_path() {
        let t = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            no_index: true,
            ..Default::default()
        };
        let store = Store::open(t.path(), &opts).unwrap();
        let id = store
            .put_bytes(b"one object", false, false)
            .unwrap()
            .digests
            .b3;
        let path = store.object_path(&id, false);
        let st = store.object_lstat(&id, false).unwrap();
        assert!(st.is_file);
        assert_eq!(st.key.size, 10);
        assert!(
            store.object_dir(&path).is_some(),
            "the shard's handle is held"
        );

        // gc's view: the object and its emptied folder go; a writer brings both back.
        let shard = path.parent().unwrap().to_path_buf();
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir(&shard).unwrap();
        assert_eq!(
            store.object_lstat(&id, false).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        std::fs::create_dir(&shard).unwrap();
        std::fs::write(&path, b"one object").unwrap();
        let again = store.object_lstat(&id, false).unwrap();
        assert!(again.is_file);
        assert_eq!(again.key.ino, std::fs::metadata(&path).unwrap().ino());

        // Not an object path of this store: no handle.
        assert!(store
            .object_dir(&t.path().join("objects/b3/zz/x"))
            .is_none());
        assert!(store.object_dir(t.path()).is_none());
    }
}
