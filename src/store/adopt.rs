//! Adopting large files the user keeps (models) without a second copy on disk.
//!
//! `lock` must not double the space of a volume holding 200 GB of models. A file is hashed in
//! place; if the store lacks its content, the store's object becomes a reflink of it (the user's
//! file is untouched) or, where reflinks are refused, a hardlink to it (same inode: the file
//! becomes read-only, like every object, but keeps its content and place). Only across
//! filesystems is it copied. The stat cache is written with the file's stat *after* adoption
//! (a hardlink changes ctime), so a re-lock costs one `stat` per model.

use super::durable::{self, Published};
use super::hash;
use super::id::{ObjectId, Sha256};
use super::index::{Batch, StatKey};
use super::object::MODE_PLAIN;
use super::Store;
use crate::store::error::{Error, IoContext, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How far `adopt` may go to avoid a copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AdoptMode {
    /// Reflink, else hardlink (the file becomes read-only), else copy.
    #[default]
    Auto,
    /// Reflink, else copy: the user's file is never touched.
    Reflink,
    /// Always copy into the store.
    Copy,
}

/// What happened to one adopted file.
#[derive(Clone, Debug, Serialize)]
pub struct AdoptReport {
    pub path: PathBuf,
    pub id: ObjectId,
    pub sha256: Sha256,
    pub size: u64,
    /// `cached` (stat cache, not read), `present` (hashed; the store had it), `reflink`,
    /// `hardlink` or `copy`.
    pub how: &'static str,
}

/// Where `adopt` may share a file's inode (a hardlink: the file becomes read-only, 0444).
/// Files elsewhere (behind a symlink that leads out of these folders) are never changed: no
/// mode, owner or link count of theirs moves; they are reflinked or copied.
#[derive(Clone, Debug, Default)]
pub struct AdoptScope {
    /// Canonical folders whose files may be hardlinked (the install, `--models-dir`).
    pub own: Vec<PathBuf>,
}

impl AdoptScope {
    /// The folders given, canonical (those that do not resolve are left out).
    pub fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> AdoptScope {
        AdoptScope {
            own: dirs
                .into_iter()
                .filter_map(|d| d.canonicalize().ok())
                .collect(),
        }
    }

    fn may_hardlink(&self, real: &Path, mode: u32) -> bool {
        // 0444 must not widen who can read the file where it is.
        self.own.iter().any(|d| real.starts_with(d)) && mode & 0o044 == 0o044
    }
}

/// Whether everyone can read `real` (canonical): the file readable by others and every
/// folder above it searchable by others.
fn world_readable(real: &Path, mode: u32) -> bool {
    mode & 0o004 != 0
        && real
            .ancestors()
            .skip(1)
            .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Whether every folder from `dir` up to `/` is searchable by others (memoised).
fn dir_public(dir: &Path, memo: &mut std::collections::HashMap<PathBuf, bool>) -> bool {
    if let Some(v) = memo.get(dir) {
        return *v;
    }
    let own = fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    let v = own && dir.parent().is_none_or(|p| dir_public(p, memo));
    memo.insert(dir.to_path_buf(), v);
    v
}

impl Store {
    /// Refuse files under `dir` (outside the store) that other users cannot read where they
    /// are, when the store is open to them: every object is 0444, so storing them would make
    /// them readable. Files comfystore itself made in the store's `tmp/` (git checkouts,
    /// installs) are not the user's private files and are not checked.
    pub(super) fn check_private_files<'a>(
        &self,
        dir: &Path,
        files: impl Iterator<Item = &'a Path>,
    ) -> Result<()> {
        if !self.is_shared() {
            return Ok(());
        }
        let dir = dir.canonicalize().ctx("resolve", dir)?;
        if dir.starts_with(self.root()) {
            return Ok(());
        }
        let mut memo = std::collections::HashMap::new();
        let mut private = Vec::new();
        for f in files {
            let mode = fs::symlink_metadata(f).ctx("stat", f)?.permissions().mode();
            let parent_public = f.parent().is_some_and(|p| dir_public(p, &mut memo));
            if mode & 0o004 == 0 || !parent_public {
                private.push(f.display().to_string());
            }
        }
        if private.is_empty() {
            return Ok(());
        }
        Err(Error::bad_input(
            &dir,
            format!(
                "{} file(s) here are not readable by other users (first: {}), but the store {} is open to them and its objects are 0444: refusing to make them readable through the store. `chmod 700 {}` (the default for new stores), or exclude them",
                private.len(),
                private[..private.len().min(3)].join(", "),
                self.root().display(),
                self.root().display()
            ),
        ))
    }

    /// Whether users other than the store's owner can reach its objects (its top folder is
    /// group- or world-searchable). New stores are created 0700, so they cannot.
    pub fn is_shared(&self) -> bool {
        fs::metadata(self.root()).is_ok_and(|m| m.permissions().mode() & 0o011 != 0)
    }

    /// Refuse content that others cannot read where it is into a store that others can reach:
    /// every object is 0444, so the store would make it readable to them.
    fn check_private(&self, path: &Path) -> Result<()> {
        if !self.is_shared() {
            return Ok(());
        }
        let real = path.canonicalize().ctx("resolve", path)?;
        let mode = fs::metadata(&real).ctx("stat", &real)?.permissions().mode();
        if world_readable(&real, mode) {
            return Ok(());
        }
        Err(Error::bad_input(
            path,
            format!(
                "{} is not readable by other users, but the store {} is open to them (mode {:o}) and its objects are 0444: refusing to make it readable through the store. `chmod 700 {}` (the default for new stores), or make the file world-readable if it is not private",
                real.display(),
                self.root().display(),
                fs::metadata(self.root()).map_or(0, |m| m.permissions().mode() & 0o777),
                self.root().display()
            ),
        ))
    }

    /// Add every file in `paths` (symlinks followed) with SHA-256, in parallel, reusing the
    /// user's bytes where `mode` allows (a hardlink only inside `scope`, for a file everyone
    /// could already read). One `syncfs` covers all new objects.
    pub fn adopt_files(
        &self,
        paths: &[PathBuf],
        mode: AdoptMode,
        scope: &AdoptScope,
    ) -> Result<Vec<AdoptReport>> {
        let _lock = self.lock_shared()?;
        let mut metas = Vec::with_capacity(paths.len());
        for p in paths {
            let m = fs::metadata(p).ctx("stat", p)?;
            if !m.is_file() {
                return Err(Error::bad_input(p, "not a regular file"));
            }
            self.check_private(p)?;
            metas.push(StatKey::of(&m));
        }
        let cached = match self.index() {
            Some(index) => index.lookup_stats(&metas)?,
            None => vec![None; paths.len()],
        };
        let total: u64 = metas.iter().map(|m| m.size).sum();
        let bar = self
            .reporter()
            .start("models", Some(total), crate::report::Unit::Bytes);
        let results: Vec<(AdoptReport, Option<StatKey>, bool)> = paths
            .par_iter()
            .zip(metas.par_iter())
            .zip(cached.par_iter())
            .map(|((path, stat), cached)| {
                let r = self.adopt_one(path, *stat, *cached, mode, scope);
                bar.inc(stat.size);
                r
            })
            .collect::<Result<_>>()?;
        bar.finish();

        let wrote = |how: &str| matches!(how, "reflink" | "hardlink" | "copy");
        if results.iter().any(|(rep, _, _)| wrote(rep.how)) {
            self.sync()?;
        }
        let mut batch = Batch::default();
        let mut out = Vec::with_capacity(results.len());
        for (rep, cache, hashed) in results {
            if hashed {
                batch.objects.push((rep.id, rep.size, Some(rep.sha256)));
                self.write_alias(&rep.sha256, &rep.id)?;
            }
            if let Some(k) = cache {
                batch.stats.push((k, rep.id));
            }
            out.push(rep);
        }
        if let Some(index) = self.index() {
            index.commit(&batch)?;
        }
        Ok(out)
    }

    /// Returns the report, the stat to cache (if stable) and whether the file was hashed.
    fn adopt_one(
        &self,
        path: &Path,
        stat: StatKey,
        cached: Option<ObjectId>,
        mode: AdoptMode,
        scope: &AdoptScope,
    ) -> Result<(AdoptReport, Option<StatKey>, bool)> {
        let report = |id, sha256, how| AdoptReport {
            path: path.to_path_buf(),
            id,
            sha256,
            size: stat.size,
            how,
        };
        if let Some((id, sha)) = self.known(cached)? {
            return Ok((report(id, sha, "cached"), None, false));
        }
        // Work on the file itself: a model is often a symlink (into a Hugging Face cache, onto a
        // volume), and link(2) would link the symlink, not what it points to.
        let real = path.canonicalize().ctx("resolve", path)?;
        let path = real.as_path();
        let started = SystemTime::now();
        let (id, sha) =
            self.reading_big(path, stat.size, |bar| hash_unchanged(path, &stat, bar))?;
        let stable = |k: StatKey| {
            (k.ino == stat.ino
                && k.size == stat.size
                && k.mtime_ns == stat.mtime_ns
                && !super::ingest::racy_mtime(k.mtime_ns, started))
            .then_some(k)
        };
        let file_mode = fs::metadata(path).ctx("stat", path)?.permissions().mode();
        let mode = match mode {
            AdoptMode::Auto if !scope.may_hardlink(path, file_mode) => AdoptMode::Reflink,
            m => m,
        };
        let (how, now) = self.take_in(path, &stat, &id, mode)?;
        Ok((report(id, sha, how), stable(now), true))
    }

    /// The id and SHA-256 of an unchanged file the stat cache vouches for, when the store
    /// still holds the object.
    fn known(&self, cached: Option<ObjectId>) -> Result<Option<(ObjectId, Sha256)>> {
        if let (Some(id), Some(index)) = (cached, self.index()) {
            if let Some(sha) = index.object_sha256(&id)? {
                if self.has_object(&id) {
                    return Ok(Some((id, sha)));
                }
            }
        }
        Ok(None)
    }

    /// Get the hashed file `id` into the store: already there, shared (reflink, hardlink) or
    /// copied; how, and the file's stat after.
    fn take_in(
        &self,
        path: &Path,
        stat: &StatKey,
        id: &ObjectId,
        mode: AdoptMode,
    ) -> Result<(&'static str, StatKey)> {
        if self.has_object(id) {
            return Ok(("present", *stat));
        }
        let dest = self.object_path(id, false);
        if mode != AdoptMode::Copy {
            if let Some(how) = self.try_share(path, stat, &dest, mode)? {
                let now = StatKey::of(&fs::metadata(path).ctx("stat", path)?);
                return Ok((how, now));
            }
        }
        let put = self.put_file(path, false, true)?;
        if put.digests.b3 != *id {
            return Err(Error::bad_input(
                path,
                "file changed while it was being added; try again",
            ));
        }
        Ok(("copy", *stat))
    }

    /// Publish `src`'s bytes at `dest` by reflink or hardlink. `Ok(None)`: neither is possible
    /// here (other filesystem, no support), so the caller copies.
    fn try_share(
        &self,
        src: &Path,
        stat: &StatKey,
        dest: &Path,
        mode: AdoptMode,
    ) -> Result<Option<&'static str>> {
        let tmp = self
            .tmp_dir()
            .join(durable::unique_name(durable::TEMP_PREFIX));
        let mut how = None;
        if reflink_copy::reflink(src, &tmp).is_ok() {
            how = Some("reflink");
        } else {
            let _ = fs::remove_file(&tmp);
            if mode == AdoptMode::Auto && fs::hard_link(src, &tmp).is_ok() {
                how = Some("hardlink");
            }
        }
        let Some(how) = how else {
            return Ok(None);
        };
        let done = (|| {
            let m = fs::metadata(&tmp).ctx("stat", &tmp)?;
            // A reflink is a new inode with the same bytes; a hardlink must still be the inode
            // we hashed, unchanged.
            let same = m.len() == stat.size
                && (how == "reflink"
                    || StatKey::of(&m).mtime_ns == stat.mtime_ns
                        && StatKey::of(&m).ino == stat.ino);
            if !same {
                return Err(Error::bad_input(
                    src,
                    "file changed while it was being adopted; try again",
                ));
            }
            if dest.exists() {
                // Published meanwhile by another writer: leave the user's file mode alone.
                fs::remove_file(&tmp).ctx("delete", &tmp)?;
                return Ok(Published::Existed);
            }
            fs::set_permissions(&tmp, fs::Permissions::from_mode(MODE_PLAIN)).ctx("chmod", &tmp)?;
            durable::publish_no_replace(&tmp, dest)
        })();
        match done {
            Ok(Published::New) => Ok(Some(how)),
            // Another writer published the same content meanwhile: that object is as good.
            Ok(Published::Existed) => Ok(Some("present")),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// BLAKE3 and SHA-256 of `path`, which must still have the stat it was listed with.
/// Counted on `bar` as it is read.
fn hash_unchanged(
    path: &Path,
    stat: &StatKey,
    bar: &dyn crate::report::Progress,
) -> Result<(ObjectId, Sha256)> {
    let mut file = File::open(path).ctx("open", path)?;
    let digests = hash::stream(
        &mut crate::report::ProgressRead::new(&mut file, bar),
        None,
        true,
    )
    .ctx("read", path)?;
    let after = StatKey::of(&file.metadata().ctx("stat", path)?);
    if after != *stat || digests.size != stat.size {
        return Err(Error::bad_input(
            path,
            "file changed while it was being hashed; try again",
        ));
    }
    let sha = digests
        .sha256
        .ok_or_else(|| Error::bad_input(path, "no SHA-256 computed"))?;
    Ok((digests.b3, sha))
}
