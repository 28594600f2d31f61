//! What DEST holds, from one walk that never follows a symlink. Checking, planning and
//! removing all start from the same scan, so they agree on what is there.
//!
//! A scan is plain data (kind, permission bits, stat key per path), not `fs::Metadata`, so a
//! plan can be made from one built in memory (tests, benches) as well as from a disk.

use crate::place::error::{Error, Result};
use crate::store::{Manifest, StatKey, MARKER_NAME};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
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
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Seen {
            kind,
            mode: meta.mode(),
            stat: StatKey::of(meta),
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

/// Every path under DEST (relative, `/`-separated) except the marker, with its stat.
pub type Scan = HashMap<String, Seen>;

/// lstat every path under DEST except the marker; an absent DEST is empty.
pub fn scan(dest: &Path) -> Result<Scan> {
    let mut out = HashMap::new();
    if !dest.exists() {
        return Ok(out);
    }
    for e in walkdir::WalkDir::new(dest).follow_links(false).min_depth(1) {
        let e = e.map_err(|e| {
            let path = e.path().unwrap_or(dest).to_path_buf();
            Error::io("walk", path, e.into())
        })?;
        let rel = e.path().strip_prefix(dest).unwrap_or(e.path());
        let Some(rel) = rel.to_str() else { continue };
        if rel == MARKER_NAME {
            continue;
        }
        let meta = e
            .metadata()
            .map_err(|err| Error::io("stat", e.path().to_path_buf(), err.into()))?;
        out.insert(rel.to_string(), Seen::of(&meta));
    }
    Ok(out)
}

/// Files and symlinks in DEST that the tree does not list (user files), in no order.
pub fn extra_paths<'a>(m: &'a Manifest, scan: &'a Scan) -> impl Iterator<Item = &'a str> {
    let listed: HashSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
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
