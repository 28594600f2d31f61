//! Writing beneath a directory without ever following a symlink on the way: DEST (or a mirror
//! folder, or an install for `add-url --path`) is opened once, and every folder below it is
//! opened relative to that handle, `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the
//! kernel has it (Linux 5.6+), else one component at a time with `O_NOFOLLOW`. Creating,
//! renaming and removing then happen relative to the folder's handle, so a folder swapped for
//! a symlink after the scan (a race) fails the open instead of sending the write elsewhere.
//!
//! Link methods that only take paths (reflink, copy) are given `/proc/self/fd/<fd>/<name>`:
//! the kernel resolves the fd's magic link to the very folder that was opened, not by its path
//! again. Where `/proc` is not mounted, they fall back to the folder's path (racy), which is
//! said once in the log.

use crate::place::error::{Error, Result};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A directory opened without following symlinks; what is beneath it is reached through it.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

/// A folder beneath a [`Beneath`] root, opened through it.
pub struct DirAt {
    fd: OwnedFd,
    /// Its path, for messages (and the fallback without `/proc`).
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// A symlink (or a non-folder) where a folder must be: refused, naming the path.
fn refuse(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV) => Error::bad_input(
            path,
            "is a symlink or not a directory (or leads through one); refusing to write through it",
        ),
        _ => Error::io("open", path, e),
    }
}

impl Beneath {
    /// Open `root` itself, refusing a symlink there.
    pub fn open(root: &Path) -> Result<Beneath> {
        let fd = rustix::fs::open(root, DIR_FLAGS, Mode::empty())
            .map_err(|e| refuse(root, io_err(e)))?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder `rel` (relative, `/`-separated; "" is the root itself), opened beneath the
    /// root without following any symlink.
    pub fn dir(&self, rel: &str) -> Result<DirAt> {
        let path = if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        };
        let fd = if rel.is_empty() {
            self.root
                .try_clone()
                .map_err(|e| Error::io("open", &path, e))?
        } else {
            open_beneath(&self.root, rel).map_err(|e| refuse(&path, e))?
        };
        Ok(DirAt { fd, path })
    }

    /// The folder `rel`, created (with its parents) where missing, each one beneath the last
    /// without following a symlink.
    pub fn create_dirs(&self, rel: &str) -> Result<DirAt> {
        let mut dir = self.dir("")?;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            match rustix::fs::mkdirat(&dir.fd, part, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(Error::io("create", dir.path.join(part), io_err(e))),
            }
            let path = dir.path.join(part);
            let fd = rustix::fs::openat(&dir.fd, part, DIR_FLAGS, Mode::empty())
                .map_err(|e| refuse(&path, io_err(e)))?;
            dir = DirAt { fd, path };
        }
        Ok(dir)
    }

    /// The folder holding `rel` and `rel`'s last component.
    pub fn parent_of<'r>(&self, rel: &'r str) -> Result<(DirAt, &'r str)> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok((self.dir(parent)?, name))
    }
}

/// `rel` beneath `root`: openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, else a walk of
/// `openat(O_NOFOLLOW)` one component at a time (kernels before 5.6, seccomp filters).
fn open_beneath(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    static NO_OPENAT2: OnceLock<()> = OnceLock::new();
    // EAGAIN: a rename elsewhere on the filesystem raced the lookup; the kernel asks to retry.
    let mut tries = 0;
    while NO_OPENAT2.get().is_none() {
        match rustix::fs::openat2(
            root,
            rel,
            DIR_FLAGS,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                let _ = NO_OPENAT2.set(());
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    walk_nofollow(root, rel)
}

/// `rel` beneath `root`, one component at a time, each opened with `O_NOFOLLOW`: a symlink
/// anywhere on the way fails (ELOOP, or ENOTDIR), `.` and `..` are refused.
fn walk_nofollow(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let mut fd = root.try_clone()?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        if part == ".." || part == "." {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        fd = rustix::fs::openat(&fd, part, DIR_FLAGS, Mode::empty()).map_err(io_err)?;
    }
    Ok(fd)
}

/// Whether `/proc/self/fd` resolves folders by handle here.
fn have_proc() -> bool {
    static PROC: OnceLock<bool> = OnceLock::new();
    *PROC.get_or_init(|| {
        let ok = Path::new("/proc/self/fd").is_dir();
        if !ok {
            tracing::warn!(
                "/proc is not mounted: copies and reflinks are written by path (a folder swapped for a symlink during the run could redirect them)"
            );
        }
        ok
    })
}

impl DirAt {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path naming this very folder, for calls that only take paths.
    pub fn handle_path(&self) -> PathBuf {
        if have_proc() {
            PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
        } else {
            self.path.clone()
        }
    }

    /// A path naming `name` in this very folder, for calls that only take paths.
    pub fn name_path(&self, name: &str) -> PathBuf {
        if have_proc() {
            PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name)
        } else {
            self.path.join(name)
        }
    }

    /// The folder's handle, for reading its entries.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub fn mkdir(&self, name: &str) -> io::Result<()> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o777)).map_err(io_err)
    }

    /// Remove `name` (a folder only if `dir`, and only if empty); never follows a symlink.
    pub fn unlink(&self, name: &str, dir: bool) -> io::Result<()> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&self.fd, name, flags).map_err(io_err)
    }

    /// Rename `from` over `to`, both in this folder.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(io_err)
    }

    /// A second name for `from` in this folder (never following a symlink at `from`).
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::linkat(&self.fd, from, &self.fd, to, AtFlags::empty()).map_err(io_err)
    }

    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        rustix::fs::symlinkat(target, &self.fd, name).map_err(io_err)
    }

    /// Create `name` here for writing, with `mode` (less the umask): a new file only, so
    /// never through a symlink planted at the name.
    pub fn create_file(&self, name: &str, mode: u32) -> io::Result<std::fs::File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))
            .map(std::fs::File::from)
            .map_err(io_err)
    }

    /// A hard link `name` here to the file at `src` (a store object's path), by its name in
    /// `src_dir` (its folder's held handle: one name looked up) where that finds it.
    pub fn link_from(
        &self,
        (src, src_dir): (&Path, Option<BorrowedFd>),
        name: &str,
    ) -> io::Result<()> {
        if let (Some(d), Some(n)) = (src_dir, src.file_name()) {
            match rustix::fs::linkat(d, n, &self.fd, name, AtFlags::empty()) {
                Err(rustix::io::Errno::NOENT) => {}
                other => return other.map_err(io_err),
            }
        }
        rustix::fs::linkat(rustix::fs::CWD, src, &self.fd, name, AtFlags::empty()).map_err(io_err)
    }

    /// A symlink `name` here pointing at `target` (a store object's path).
    pub fn symlink_path(&self, target: &Path, name: &str) -> io::Result<()> {
        rustix::fs::symlinkat(target, &self.fd, name).map_err(io_err)
    }

    /// The stat-cache key of `name` here (of what it points at, if `follow`).
    pub fn stat_key(&self, name: &str, follow: bool) -> io::Result<crate::store::StatKey> {
        let flags = if follow {
            AtFlags::empty()
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        let st = rustix::fs::statx(&self.fd, name, flags, rustix::fs::StatxFlags::BASIC_STATS)
            .map_err(io_err)?;
        Ok(crate::store::StatKey::of_statx(&st))
    }

    /// lstat of `name` in this folder: whether it is a folder.
    pub fn is_dir(&self, name: &str) -> io::Result<bool> {
        let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)?;
        Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory)
    }

    /// The device this folder is on.
    pub fn dev(&self) -> io::Result<u64> {
        let st = rustix::fs::fstat(self.fd.as_fd()).map_err(io_err)?;
        #[allow(clippy::useless_conversion)]
        Ok(st.st_dev.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of opening beneath a root (openat2 where the kernel has it, the O_NOFOLLOW
    /// walk elsewhere) refuse a symlink at any depth and `..`, and open real folders.
    #[test]
    fn a_symlink_on_the_way_is_refused_by_openat2_and_by_the_walk() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(outside.join("b")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let top = Beneath::open(&root).unwrap();
        assert!(walk_nofollow(&top.root, "a/b").is_ok());
        for bad in ["link", "link/b", "a/../link", ".."] {
            assert!(walk_nofollow(&top.root, bad).is_err(), "walk: {bad}");
            assert!(top.dir(bad).is_err(), "dir: {bad}");
        }
        assert!(top.dir("a/b").is_ok());
        assert!(top.create_dirs("link/c").is_err());
        assert!(!outside.join("c").exists());
        assert!(
            Beneath::open(&root.join("link")).is_err(),
            "the root itself"
        );
    }
}
