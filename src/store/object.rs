//! Writing and reading objects.
//!
//! Bytes are streamed into a unique temp file in `tmp/`, hashed on the way, made read-only and
//! published with a no-replace rename. A published object therefore always holds exactly the
//! bytes its name says, whatever moment a process is killed at. Small files are hashed in
//! memory first, so content the store already has is never written again.

use super::durable::{self, Published};
use super::hash::{self, Digests};
use super::id::{ObjectId, Sha256};
use super::Store;
use crate::store::error::{Error, IoContext, Result};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Files up to this size are read into memory and hashed before anything is written.
pub const SMALL_FILE: u64 = 4 << 20;

/// Mode of a plain object and of its executable variant.
pub const MODE_PLAIN: u32 = 0o444;
pub const MODE_EXEC: u32 = 0o555;

/// What an object's path holds, as seen before writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ObjectState {
    Present,
    Absent,
    Damaged,
}

/// What `put_*` did.
#[derive(Clone, Copy, Debug)]
pub struct PutResult {
    pub digests: Digests,
    /// True when this call wrote the object; false when the store already had it.
    pub new: bool,
}

impl Store {
    /// Whether the store holds the object, as a plain or an executable file.
    pub fn has_object(&self, id: &ObjectId) -> bool {
        self.object_path(id, false).exists() || self.object_path(id, true).exists()
    }

    /// Path of an existing copy of the object, preferring the variant asked for.
    pub fn find_object(&self, id: &ObjectId, exec: bool) -> Option<PathBuf> {
        [exec, !exec]
            .into_iter()
            .map(|e| self.object_path(id, e))
            .find(|p| p.exists())
    }

    /// Open an object for reading, checked first ([`Store::checked_object`]).
    pub fn open_object(&self, id: &ObjectId) -> Result<File> {
        let path = self.checked_object(id, false)?;
        File::open(&path).ctx("open", &path)
    }

    /// Path of an existing copy of the object (preferring the variant asked for), checked
    /// before anything copies, links or prints it. Objects are never modified once published,
    /// but root ignores their 0444 and can write through a hardlink in a materialized folder.
    /// So the file's (size, mtime, ctime) must be those a rehash last found sound (the index's
    /// stat cache); otherwise it is rehashed. A file whose bytes no longer match its name is
    /// moved to `quarantine/` ([`Error::Corrupt`]) and the other variant, if any, is tried.
    pub fn checked_object(&self, id: &ObjectId, exec: bool) -> Result<PathBuf> {
        let mut last = None;
        for variant in [exec, !exec] {
            let path = self.object_path(id, variant);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("stat", &path),
            };
            let key = super::StatKey::of(&meta);
            if let Some(index) = self.index() {
                let vouched = index.lookup_stats(&[key])?.first().copied().flatten();
                if vouched == Some(*id) {
                    return Ok(path);
                }
            }
            let (actual, _) = hash::b3_file(&path).ctx("read", &path)?;
            if actual == *id {
                // Vouch for it only if it did not change while hashed, and not within the
                // racy window (a later write could keep the same coarse timestamps).
                let after = fs::symlink_metadata(&path).map(|m| super::StatKey::of(&m));
                if after.as_ref().ok() == Some(&key) && !key.is_racy(std::time::SystemTime::now()) {
                    self.note_sound(key, *id);
                }
                return Ok(path);
            }
            let quarantined = self.quarantine(&path)?;
            tracing::warn!(
                "object {id} at {} hashes to {actual}: moved to {}",
                path.display(),
                quarantined.display()
            );
            if let Some(index) = self.index() {
                if !self.has_object(id) {
                    index.remove(&[*id], &[])?;
                }
            }
            last = Some(Error::Corrupt {
                id: id.to_string(),
                path,
                actual: actual.to_string(),
                quarantined,
            });
        }
        Err(last.unwrap_or_else(|| Error::NotFound(id.to_string())))
    }

    /// [`Store::checked_object`] for many objects at once: one lstat each (the variant asked
    /// for first, in parallel) and one index lookup for all of them, instead of a lookup per
    /// object. `wants` are (id, exec, check): an object with `check` false is only looked for
    /// (its path is returned unchecked); one the stat cache does not vouch for is rehashed as
    /// [`Store::checked_object`] does. `None`: the store lacks it.
    pub fn checked_objects(
        &self,
        wants: &[(ObjectId, bool, bool)],
    ) -> Result<Vec<Option<PathBuf>>> {
        use rayon::prelude::*;
        let found: Vec<Option<(PathBuf, super::StatKey)>> = wants
            .par_iter()
            .map(|(id, exec, _)| {
                for variant in [*exec, !*exec] {
                    let path = self.object_path(id, variant);
                    match self.object_lstat(id, variant) {
                        Ok(m) if m.is_file => return Ok(Some((path, m.key))),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).ctx("stat", &path),
                    }
                }
                Ok(None)
            })
            .collect::<Result<_>>()?;
        let keys: Vec<super::StatKey> = wants
            .iter()
            .zip(&found)
            .filter_map(|((_, _, check), f)| f.as_ref().filter(|_| *check).map(|(_, k)| *k))
            .collect();
        let mut vouched = match self.index() {
            Some(index) => index.lookup_stats(&keys)?,
            None => vec![None; keys.len()],
        }
        .into_iter();
        wants
            .iter()
            .zip(found)
            .map(|((id, exec, check), f)| match f {
                None => Ok(None),
                Some((path, _)) if !check => Ok(Some(path)),
                Some((path, _)) if vouched.next().flatten() == Some(*id) => Ok(Some(path)),
                Some(_) => self.checked_object(id, *exec).map(Some),
            })
            .collect()
    }

    /// What is at an object's path: the object with `size` bytes (its mtime is refreshed for
    /// gc when old), nothing, or a damaged file (wrong size or type: a crash of a machine that
    /// skipped fsync can leave a short file) that the caller's verified bytes must replace.
    pub(super) fn object_state(&self, path: &Path, size: u64) -> Result<ObjectState> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.len() == size && m.is_file() => {
                durable::freshen(path, m.modified().unwrap_or(std::time::UNIX_EPOCH));
                Ok(ObjectState::Present)
            }
            Ok(_) => {
                tracing::warn!(
                    "object {} has the wrong size or type; replacing it with verified bytes",
                    path.display()
                );
                Ok(ObjectState::Damaged)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ObjectState::Absent),
            Err(e) => Err(e).ctx("stat", path),
        }
    }

    /// Store bytes held in memory.
    pub fn put_bytes(&self, data: &[u8], exec: bool, want_sha256: bool) -> Result<PutResult> {
        let digests = hash::hash_bytes(data, want_sha256);
        let dest = self.object_path(&digests.b3, exec);
        let state = self.object_state(&dest, digests.size)?;
        if state == ObjectState::Present {
            self.note_object(&digests, false);
            return Ok(PutResult {
                digests,
                new: false,
            });
        }
        let (mut f, tmp) = self.create_temp()?;
        let written = f.write_all(data).ctx("write", &tmp);
        let new = self.finish_temp(f, &tmp, written, &dest, exec, state)?;
        self.note_object(&digests, new);
        Ok(PutResult { digests, new })
    }

    /// Store everything `src` yields, hashing while writing (one read of the source).
    pub fn put_reader(
        &self,
        src: &mut dyn Read,
        exec: bool,
        want_sha256: bool,
        what: &Path,
    ) -> Result<PutResult> {
        self.put_reader_checked(src, exec, want_sha256, what, &|_| Ok(()))
    }

    /// [`Store::put_reader`] for bytes from outside (downloads): `check` sees the digests
    /// before anything is published, and an error from it leaves the store untouched.
    pub fn put_reader_checked(
        &self,
        src: &mut dyn Read,
        exec: bool,
        want_sha256: bool,
        what: &Path,
        check: &dyn Fn(&Digests) -> Result<()>,
    ) -> Result<PutResult> {
        let (f, tmp) = self.create_temp()?;
        let mut sink = durable::BoundedWriteback::new(&f);
        let streamed =
            hash::stream(src, Some(&mut sink), want_sha256).and_then(|d| sink.finish().map(|()| d));
        let digests = match streamed {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e).ctx("read", what);
            }
        };
        if let Err(e) = check(&digests) {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let dest = self.object_path(&digests.b3, exec);
        let state = self.object_state(&dest, digests.size)?;
        if state == ObjectState::Present {
            drop(f);
            let _ = fs::remove_file(&tmp);
            self.note_object(&digests, false);
            return Ok(PutResult {
                digests,
                new: false,
            });
        }
        let new = self.finish_temp(f, &tmp, Ok(()), &dest, exec, state)?;
        self.note_object(&digests, new);
        Ok(PutResult { digests, new })
    }

    /// Store an open file: small ones through memory, large ones streamed.
    pub fn put_open_file(
        &self,
        file: &mut File,
        len: u64,
        exec: bool,
        want_sha256: bool,
        what: &Path,
    ) -> Result<PutResult> {
        if len <= SMALL_FILE {
            let mut data = Vec::with_capacity(len as usize);
            file.read_to_end(&mut data).ctx("read", what)?;
            self.put_bytes(&data, exec, want_sha256)
        } else {
            self.reading_big(what, len, |bar| {
                let mut counted = crate::report::ProgressRead::new(file, bar);
                self.put_reader(&mut counted, exec, want_sha256, what)
            })
        }
    }

    /// Store the file at `path`.
    pub fn put_file(&self, path: &Path, exec: bool, want_sha256: bool) -> Result<PutResult> {
        let mut f = File::open(path).ctx("open", path)?;
        let len = f.metadata().ctx("stat", path)?.len();
        self.put_open_file(&mut f, len, exec, want_sha256, path)
    }

    /// Set the final mode and publish the temp file. A damaged object of the same name (as
    /// [`Store::object_state`] found it) is replaced; otherwise the rename never replaces, so a
    /// correct object published meanwhile by another writer is kept and hardlinks to it stay
    /// hardlinks to the store's inode.
    fn finish_temp(
        &self,
        f: File,
        tmp: &Path,
        written: Result<()>,
        dest: &Path,
        exec: bool,
        state: ObjectState,
    ) -> Result<bool> {
        let mode = if exec { MODE_EXEC } else { MODE_PLAIN };
        let res = written.and_then(|()| {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .ctx("chmod", tmp)
        });
        drop(f);
        if let Err(e) = res {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
        if state == ObjectState::Damaged {
            durable::publish_replace(tmp, dest)?;
            return Ok(true);
        }
        Ok(durable::publish_no_replace(tmp, dest)? == Published::New)
    }

    /// Make sure the `exec` variant of an object exists (materialize needs a 0555 inode to
    /// hardlink an executable), by copying the other variant. Returns its path.
    pub fn ensure_variant(&self, id: &ObjectId, exec: bool) -> Result<PathBuf> {
        let want = self.object_path(id, exec);
        if want.exists() {
            return Ok(want);
        }
        let other = self.checked_object(id, !exec)?;
        let mut src = File::open(&other).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(id.to_string()),
            _ => Error::io("open", other.clone(), e),
        })?;
        let put = self.put_reader(&mut src, exec, false, &other)?;
        if put.digests.b3 != *id {
            return Err(Error::Mismatch {
                what: other.display().to_string(),
                expected: id.to_string(),
                actual: put.digests.b3.to_string(),
            });
        }
        // put_reader fdatasynced it before publishing: trees that name this id can rely on it.
        Ok(want)
    }

    /// Make an object stored by `put_reader*` from outside bytes (a download) known like one
    /// from `add`: durable before anything refers to it, its SHA-256 alias, and its index row.
    pub fn record_object(&self, put: &PutResult) -> Result<()> {
        if put.new {
            self.sync()?;
        }
        if let Some(sha) = put.digests.sha256 {
            self.write_alias(&sha, &put.digests.b3)?;
        }
        if let Some(index) = self.index() {
            let mut batch = super::index::Batch::default();
            batch
                .objects
                .push((put.digests.b3, put.digests.size, put.digests.sha256));
            batch.logical_added = put.digests.size;
            index.commit(&batch)?;
        }
        Ok(())
    }

    /// Make sure `sha` names the stored object `id` (a kill between publishing a download
    /// and writing its alias leaves the object without it). A missing alias is only written
    /// after the object's SHA-256 is computed and found to be `sha`. Returns whether it was
    /// restored; an object whose SHA-256 is not `sha` is an error.
    pub fn ensure_alias(&self, sha: &Sha256, id: &ObjectId) -> Result<bool> {
        if self.lookup_sha256(sha)? == Some(*id) && self.alias_path(sha).exists() {
            return Ok(false);
        }
        let path = self
            .find_object(id, false)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let mut f = File::open(&path).ctx("open", &path)?;
        let d = hash::stream(&mut f, None, true).ctx("read", &path)?;
        if d.b3 != *id || d.sha256 != Some(*sha) {
            return Err(Error::Mismatch {
                what: path.display().to_string(),
                expected: format!("{id} with {sha}"),
                actual: format!(
                    "{} with {}",
                    d.b3,
                    d.sha256.map(|s| s.to_string()).unwrap_or_default()
                ),
            });
        }
        self.write_alias(sha, id)?;
        if let Some(index) = self.index() {
            let mut batch = super::index::Batch::default();
            batch.objects.push((*id, d.size, Some(*sha)));
            index.commit(&batch)?;
        }
        Ok(true)
    }

    /// Record that the object with `sha` is `id`, as an alias file (the truth the index is
    /// rebuilt from). An existing alias is left alone.
    pub(crate) fn write_alias(&self, sha: &Sha256, id: &ObjectId) -> Result<()> {
        let dest = self.alias_path(sha);
        if dest.exists() {
            return Ok(());
        }
        let (mut f, tmp) = self.create_temp()?;
        let written = f
            .write_all(format!("{id}\n").as_bytes())
            .ctx("write", &tmp)
            .and_then(|()| {
                f.set_permissions(fs::Permissions::from_mode(MODE_PLAIN))
                    .ctx("chmod", &tmp)
            });
        drop(f);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        durable::publish_no_replace(&tmp, &dest)?;
        Ok(())
    }
}
