//! One walk of a folder through held folder handles, as `find` does: each folder is read
//! (`getdents64` into one reused buffer on Linux) and each name in it stat'ed relative to the
//! folder's handle (`statx`, `fstatat` elsewhere), never following a symlink. A subfolder is
//! opened relative to its parent's handle with `O_NOFOLLOW | O_DIRECTORY`, so a folder swapped
//! for a symlink during the walk fails the open instead of leading the walk outside.
//!
//! Why: a path-based `lstat` per entry (walkdir) makes the kernel resolve every component of
//! the path again, and on a network filesystem (FUSE, NFS) each component is a round trip:
//! 12–13 calls per entry on a RunPod-like volume where this makes about one. The add/lock
//! ingest scan (`store::ingest`) and DEST's scan (`place::scan`) both walk with it.
//!
//! The walk is depth first and holds one handle per level it is in (the parents of the folder
//! being read), so depth, not width, costs descriptors.

use super::index::StatKey;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

/// What a name in a folder is, as lstat sees it (a symlink is a symlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// `st_mode`: the type and the permission bits.
    pub mode: u32,
    pub kind: FileType,
    pub stat: StatKey,
}

impl Meta {
    /// From `metadata` of a path (`symlink_metadata`, for a name not followed).
    pub fn of(m: &std::fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        Meta {
            mode: m.mode(),
            kind: FileType::from_raw_mode(m.mode() as _),
            stat: StatKey::of(m),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }
    pub fn is_file(&self) -> bool {
        self.kind == FileType::RegularFile
    }
    pub fn is_symlink(&self) -> bool {
        self.kind == FileType::Symlink
    }
}

/// One entry the walk found, with the folder it is in.
pub struct Found<'a> {
    /// The folder's path relative to the root (`/`-separated; "" for the root itself).
    pub dir_rel: &'a str,
    /// The entry's own name.
    pub name: &'a str,
    pub meta: Meta,
    dir: BorrowedFd<'a>,
    root: &'a Path,
}

impl Found<'_> {
    /// The entry's path relative to the root.
    pub fn rel(&self) -> String {
        join(self.dir_rel, self.name)
    }

    /// Its full path, for messages.
    pub fn path(&self) -> PathBuf {
        self.root.join(self.dir_rel).join(self.name)
    }

    /// A symlink's target, read through the folder's handle.
    pub fn read_link(&self) -> io::Result<std::ffi::CString> {
        rustix::fs::readlinkat(self.dir, self.name, Vec::new()).map_err(io::Error::from)
    }
}

/// What to do with a name that is not UTF-8 (no tree can list it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotUtf8 {
    /// Leave it (and anything beneath it) out.
    Skip,
    /// Fail the walk, naming it.
    Refuse,
}

/// Why a walk stopped.
#[derive(Debug)]
pub enum WalkError<E> {
    /// A folder could not be read or a name stat'ed: what was done, where, and why.
    Io(&'static str, PathBuf, io::Error),
    /// A name that is not UTF-8 (with [`NotUtf8::Refuse`]).
    NotUtf8(PathBuf),
    /// What the visitor returned.
    Visit(E),
}

/// `a/b` from `a` and `b` (`b` alone when `a` is empty). Not `format!`: its machinery was 7 %
/// of a `status`'s instructions.
fn join(dir: &str, name: &str) -> String {
    let mut s = String::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        s.push_str(dir);
        s.push('/');
    }
    s.push_str(name);
    s
}

/// Open `root` for [`walk`], following a symlink there (the user named it) or not.
pub fn open_root(root: &Path, follow: bool) -> io::Result<OwnedFd> {
    let flags = if follow {
        DIR_FLAGS.difference(OFlags::NOFOLLOW)
    } else {
        DIR_FLAGS
    };
    rustix::fs::open(root, flags, Mode::empty()).map_err(io::Error::from)
}

/// Walk everything beneath the folder `root` (opened with [`open_root`]; `root_path` names it
/// in messages), calling `visit` on every entry but `.` and `..`. A folder is entered when
/// `visit` returns `true` for it; the answer is ignored for anything else.
pub fn walk<E>(
    root: OwnedFd,
    root_path: &Path,
    not_utf8: NotUtf8,
    mut visit: impl FnMut(&Found<'_>) -> Result<bool, E>,
) -> Result<(), WalkError<E>> {
    let mut buf = Buf::new();
    // The folders being walked, each with the subfolders of it still to enter.
    let mut stack: Vec<(OwnedFd, String, std::vec::IntoIter<String>)> = Vec::new();
    let subs = read_folder(&root, "", root_path, &mut buf, not_utf8, &mut visit)?;
    stack.push((root, String::new(), subs.into_iter()));
    while let Some((fd, rel, subs)) = stack.last_mut() {
        let Some(name) = subs.next() else {
            stack.pop();
            continue;
        };
        #[cfg(test)]
        tests::before_open(&root_path.join(&*rel).join(&name));
        let sub_fd =
            rustix::fs::openat(&*fd, name.as_str(), DIR_FLAGS, Mode::empty()).map_err(|e| {
                let path = root_path.join(&*rel).join(&name);
                match e {
                    // The name was a folder when it was stat'ed: it was swapped meanwhile.
                    rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => WalkError::Io(
                        "open",
                        path,
                        io::Error::other(
                            "changed into a symlink or a file during the walk; not followed",
                        ),
                    ),
                    e => WalkError::Io("open", path, e.into()),
                }
            })?;
        let sub_rel = join(rel, &name);
        let subs = read_folder(&sub_fd, &sub_rel, root_path, &mut buf, not_utf8, &mut visit)?;
        stack.push((sub_fd, sub_rel, subs.into_iter()));
    }
    Ok(())
}

/// Read one folder, visiting each entry; returns the subfolders to enter.
fn read_folder<E>(
    fd: &OwnedFd,
    rel: &str,
    root_path: &Path,
    buf: &mut Buf,
    not_utf8: NotUtf8,
    visit: &mut impl FnMut(&Found<'_>) -> Result<bool, E>,
) -> Result<Vec<String>, WalkError<E>> {
    let at = |name: &str| root_path.join(rel).join(name);
    let mut subs = Vec::new();
    buf.each_name(fd.as_fd(), |name| {
        let Ok(text) = std::str::from_utf8(name.to_bytes()) else {
            return match not_utf8 {
                NotUtf8::Skip => Ok(()),
                NotUtf8::Refuse => {
                    use std::os::unix::ffi::OsStrExt;
                    let os = std::ffi::OsStr::from_bytes(name.to_bytes());
                    Err(WalkError::NotUtf8(root_path.join(rel).join(os)))
                }
            };
        };
        if text == "." || text == ".." {
            return Ok(());
        }
        let meta = stat_at(fd.as_fd(), name).map_err(|e| WalkError::Io("stat", at(text), e))?;
        let found = Found {
            dir_rel: rel,
            name: text,
            meta,
            dir: fd.as_fd(),
            root: root_path,
        };
        if visit(&found).map_err(WalkError::Visit)? && meta.is_dir() {
            subs.push(text.to_string());
        }
        Ok(())
    })
    .map_err(|e| match e {
        Each::Read(e) => WalkError::Io("read folder", at(""), e),
        Each::Stop(e) => e,
    })?;
    Ok(subs)
}

/// `name` in the folder `dir`, not followed.
#[cfg(target_os = "linux")]
fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Meta> {
    let st = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::BASIC_STATS,
    )?;
    Ok(Meta {
        mode: u32::from(st.stx_mode),
        kind: FileType::from_raw_mode(st.stx_mode.into()),
        stat: StatKey::of_statx(&st),
    })
}

#[cfg(not(target_os = "linux"))]
fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Meta> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(Meta {
        mode: st.st_mode as u32,
        kind: FileType::from_raw_mode(st.st_mode),
        stat: StatKey::of_stat(&st),
    })
}

enum Each<E> {
    Read(io::Error),
    Stop(E),
}

/// The folder reader: on Linux one `getdents64` buffer for every folder (most are read in one
/// call; rustix's `Dir` starts small and allocates a name per entry), elsewhere `Dir`.
struct Buf {
    #[cfg(target_os = "linux")]
    bytes: Vec<std::mem::MaybeUninit<u8>>,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            #[cfg(target_os = "linux")]
            bytes: vec![std::mem::MaybeUninit::<u8>::uninit(); 64 << 10],
        }
    }

    #[cfg(target_os = "linux")]
    fn each_name<E>(
        &mut self,
        fd: BorrowedFd<'_>,
        mut one: impl FnMut(&CStr) -> Result<(), E>,
    ) -> Result<(), Each<E>> {
        let mut entries = rustix::fs::RawDir::new(fd, &mut self.bytes);
        while let Some(entry) = entries.next() {
            let entry = entry.map_err(|e| Each::Read(e.into()))?;
            one(entry.file_name()).map_err(Each::Stop)?;
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn each_name<E>(
        &mut self,
        fd: BorrowedFd<'_>,
        mut one: impl FnMut(&CStr) -> Result<(), E>,
    ) -> Result<(), Each<E>> {
        let mut dir = rustix::fs::Dir::read_from(fd).map_err(|e| Each::Read(e.into()))?;
        while let Some(entry) = dir.next() {
            let entry = entry.map_err(|e| Each::Read(e.into()))?;
            one(entry.file_name()).map_err(Each::Stop)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::fs;

    type Hook = Box<dyn FnMut(&Path)>;

    thread_local! {
        /// Called with a folder's path just before the walk opens it (the swap test's hook).
        static HOOK: RefCell<Option<Hook>> = RefCell::new(None);
    }

    pub(super) fn before_open(path: &Path) {
        HOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(path)
            }
        });
    }

    fn all(root: &Path) -> Result<Vec<(String, Meta)>, WalkError<()>> {
        let mut v = Vec::new();
        walk(open_root(root, true).unwrap(), root, NotUtf8::Refuse, |f| {
            v.push((f.rel(), f.meta));
            Ok(true)
        })?;
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    #[test]
    fn the_walk_sees_what_lstat_sees() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir_all(d.join("a/b/empty")).unwrap();
        fs::write(d.join("a/b/f"), b"hello").unwrap();
        fs::write(d.join("top"), b"").unwrap();
        std::os::unix::fs::symlink("/", d.join("a/link")).unwrap();
        let got = all(d).unwrap();
        let want: Vec<(String, Meta)> = ["a", "a/b", "a/b/empty", "a/b/f", "a/link", "top"]
            .iter()
            .map(|p| {
                let m = fs::symlink_metadata(d.join(p)).unwrap();
                (p.to_string(), Meta::of(&m))
            })
            .collect();
        assert_eq!(got, want);
        assert!(got[4].1.is_symlink() && got[3].1.is_file() && got[0].1.is_dir());
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused_or_skipped() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join(std::ffi::OsStr::from_bytes(b"d\xfe"))).unwrap();
        fs::write(t.path().join("ok"), b"").unwrap();
        match all(t.path()) {
            Err(WalkError::NotUtf8(p)) => assert!(p.as_os_str().as_bytes().ends_with(b"d\xfe")),
            other => panic!("{other:?}"),
        }
        let mut seen = Vec::new();
        walk(
            open_root(t.path(), true).unwrap(),
            t.path(),
            NotUtf8::Skip,
            |f| {
                seen.push(f.rel());
                Ok::<_, ()>(true)
            },
        )
        .unwrap();
        assert_eq!(seen, ["ok"]);
    }

    /// A folder that the walk stat'ed as a folder and that is swapped for a symlink to a
    /// folder outside before the walk enters it: the walk fails there and never reads the
    /// outside folder.
    #[test]
    fn a_folder_swapped_for_a_symlink_mid_walk_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (d, outside) = (t.path().join("d"), t.path().join("outside"));
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/inner"), b"").unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"x").unwrap();
        let (sub, target) = (d.join("sub"), outside.clone());
        HOOK.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |p: &Path| {
                if p == sub {
                    fs::rename(&sub, sub.with_extension("moved")).unwrap();
                    std::os::unix::fs::symlink(&target, &sub).unwrap();
                }
            }))
        });
        let mut seen = Vec::new();
        let r = walk(open_root(&d, true).unwrap(), &d, NotUtf8::Refuse, |f| {
            seen.push(f.rel());
            Ok::<_, ()>(true)
        });
        HOOK.with(|h| *h.borrow_mut() = None);
        match r {
            Err(WalkError::Io("open", p, e)) => {
                assert_eq!(p, d.join("sub"));
                assert!(e.to_string().contains("symlink"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen, ["sub"], "nothing beneath the swapped folder was read");
    }
}
