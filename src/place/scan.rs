//! What DEST holds, from one walk that never follows a symlink. Checking, planning and
//! removing all start from the same scan, so they agree on what is there.
//!
//! A scan is plain data (kind, permission bits, stat key per path), not `fs::Metadata`, so a
//! plan can be made from one built in memory (tests, benches) as well as from a disk.

use super::beneath::Beneath;
use crate::place::error::{Error, Result};
use crate::store::{Manifest, StatKey, MARKER_NAME};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

/// What is at a path, as lstat sees it: a symlink is a symlink, whatever it points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A socket, FIFO or device: never something a tree placed.
    Other,
}

/// One path's stat, as much of it as checks and plans read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: Kind,
    /// `st_mode` (only the execute bits are compared).
    pub mode: u32,
    /// Device, inode, size and times: the stat cache's key, and what "same inode" compares.
    pub stat: StatKey,
}

impl Seen {
    pub fn of(meta: &fs::Metadata) -> Seen {
        Seen::of_meta(crate::store::walk::Meta::of(meta))
    }

    /// From what the walk saw of a name (not followed).
    pub fn of_meta(m: crate::store::walk::Meta) -> Seen {
        let kind = if m.is_dir() {
            Kind::Dir
        } else if m.is_symlink() {
            Kind::Symlink
        } else if m.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Seen {
            kind,
            mode: m.mode,
            stat: m.stat,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// Whether any execute bit is set.
    pub fn exec(&self) -> bool {
        self.mode & 0o111 != 0
    }
}

/// Every path under DEST (relative, `/`-separated) except the marker, with its stat. Keyed
/// with foldhash: the 28k-entry real version spent 3 % of a `status` in SipHash of this map.
pub type Scan = HashMap<String, Seen, foldhash::fast::RandomState>;

/// lstat every path under DEST except the marker; an absent DEST is empty.
///
/// Like `find`, through folder handles ([`crate::store::walk`]): each folder is read
/// (`getdents64`, into one reused buffer) and its entries stat'ed (`statx`) relative to the
/// folder's handle, so the kernel resolves one name per call instead of the whole path
/// (`link_path_walk` was 4 % and `__d_lookup_rcu` 7 % of a `status` with path-based lstats; on
/// a network volume each path component is a round trip). DEST itself is opened without
/// following a symlink ([`Beneath::open`]) and each folder beneath it from its parent's handle
/// with `O_NOFOLLOW`: a folder swapped for a symlink during the scan fails the scan rather
/// than leading it elsewhere. A name that is not UTF-8 is left out (no tree can list it, nor
/// anything beneath it).
pub fn scan(dest: &Path) -> Result<Scan> {
    use crate::store::walk::{self, NotUtf8, WalkError};
    let mut out = Scan::default();
    if !dest.exists() {
        return Ok(out);
    }
    let top = Beneath::open(dest)?.dir("")?.into_fd();
    walk::walk(top, dest, NotUtf8::Skip, |e| {
        if e.dir_rel.is_empty() && e.name == MARKER_NAME {
            return Ok::<_, std::convert::Infallible>(false);
        }
        out.insert(e.rel(), Seen::of_meta(e.meta));
        Ok(true)
    })
    .map_err(|e| match e {
        WalkError::Io(_, path, source) => Error::io("scan", path, source),
        WalkError::NotUtf8(path) => Error::bad_input(path, "file name is not valid UTF-8"),
        WalkError::Visit(never) => match never {},
    })?;
    Ok(out)
}

/// Files and symlinks in DEST that the tree does not list (user files), in no order.
pub fn extra_paths<'a>(m: &'a Manifest, scan: &'a Scan) -> impl Iterator<Item = &'a str> {
    let listed: HashSet<&str, foldhash::fast::RandomState> =
        m.entries.iter().map(|e| e.path.as_str()).collect();
    scan.iter()
        .filter(move |(p, s)| !s.is_dir() && !listed.contains(p.as_str()))
        .map(|(p, _)| p.as_str())
}

/// [`extra_paths`], sorted.
pub fn extras(m: &Manifest, scan: &Scan) -> Vec<String> {
    let mut v: Vec<String> = extra_paths(m, scan).map(str::to_string).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    /// What the scan was before it went through folder handles: walkdir and a path-based
    /// lstat per entry. The two must agree.
    fn by_paths(dest: &Path) -> Vec<(String, Seen)> {
        let mut v: Vec<(String, Seen)> = walkdir::WalkDir::new(dest)
            .follow_links(false)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap())
            .filter_map(|e| {
                let rel = e.path().strip_prefix(dest).unwrap().to_str()?.to_string();
                let meta = fs::symlink_metadata(e.path()).unwrap();
                (rel != MARKER_NAME).then(|| (rel, Seen::of(&meta)))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn the_scan_sees_what_lstat_sees_and_never_enters_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let (d, outside) = (t.path().join("d"), t.path().join("outside"));
        fs::create_dir_all(d.join("a/b/empty")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"x").unwrap();
        fs::write(d.join("a/b/f"), b"hello").unwrap();
        fs::write(d.join("top"), b"").unwrap();
        // Only DEST's own marker is left out, not a file of that name further down.
        fs::write(d.join(MARKER_NAME), b"{}").unwrap();
        fs::write(d.join("a").join(MARKER_NAME), b"{}").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("a/link")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
        // A name that is not UTF-8 (no tree can list it), and a folder of that name.
        fs::write(d.join(OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
        fs::create_dir(d.join(OsStr::from_bytes(b"dir\xfe"))).unwrap();
        fs::write(d.join(OsStr::from_bytes(b"dir\xfe/inner")), b"x").unwrap();

        let s = scan(&d).unwrap();
        let mut got: Vec<(String, Seen)> = s.iter().map(|(k, v)| (k.clone(), *v)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, by_paths(&d));
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        let marker_below = format!("a/{MARKER_NAME}");
        assert_eq!(
            names,
            [
                "a",
                marker_below.as_str(),
                "a/b",
                "a/b/empty",
                "a/b/f",
                "a/link",
                "dangling",
                "top"
            ]
        );
        assert_eq!(s["a/link"].kind, Kind::Symlink);
        assert_eq!(s["a/b/f"].stat.size, 5);
        assert!(scan(&t.path().join("absent")).unwrap().is_empty());
    }
}
