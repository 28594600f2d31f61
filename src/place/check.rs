//! The Checker: each tree entry compared with what DEST holds at its path, through the index's
//! stat cache. A file whose (device, inode, size, mtime, ctime) is unchanged since it was
//! placed or last verified is not read again.

use super::marker::{read_marker, Marker, MARKER_NAME};
use super::scan::{scan, Kind, Scan, Seen};
use crate::place::error::{Error, IoContext, Result};
use crate::store::{Entry, Manifest, Node, ObjectId, StatKey, Store};
use rayon::prelude::*;
use serde::Serialize;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The state of one tree entry in DEST.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum EntryState {
    Ok,
    Missing,
    /// Present but different (content, kind, mode or symlink target).
    Modified {
        reason: String,
    },
    /// A hardlinked (or symlinked) file was written through: the store object itself changed.
    StoreObjectChanged,
}

impl EntryState {
    fn modified(reason: &str) -> EntryState {
        EntryState::Modified {
            reason: reason.into(),
        }
    }
}

/// Checks DEST entries against a tree, using (unless `verify`) the stat cache.
pub(super) struct Checker<'a> {
    pub store: &'a Store,
    pub dest: &'a Path,
    pub verify: bool,
}

/// One entry's check.
pub(super) struct Checked {
    pub state: EntryState,
    pub rehashed: bool,
    /// A fresh stat-cache row, when the content was verified by hashing.
    pub cache: Option<(StatKey, ObjectId)>,
}

impl Checked {
    fn plain(state: EntryState) -> Checked {
        Checked {
            state,
            rehashed: false,
            cache: None,
        }
    }
}

/// What a file entry records.
struct FileNode<'a> {
    exec: bool,
    size: u64,
    id: &'a ObjectId,
}

impl Checker<'_> {
    /// Check every entry; returns states in entry order.
    pub fn check_all(&self, m: &Manifest, scan: &Scan) -> Result<Vec<Checked>> {
        // The stat of each file's content (the target's, for a symlink-mode file), and its
        // stat-cache answer, looked up in one batch.
        let contents: Vec<Option<Seen>> = m
            .entries
            .iter()
            .map(|e| match (&e.node, scan.get(&e.path)) {
                (Node::File { id, exec, .. }, Some(s)) if s.kind == Kind::Symlink => {
                    self.symlink_target(&e.path, id, *exec)
                }
                (Node::File { .. }, Some(s)) => Some(*s),
                _ => None,
            })
            .collect();
        let keys: Vec<StatKey> = contents.iter().flatten().map(|c| c.stat).collect();
        let mut cached = match (self.verify, self.store.index()) {
            (false, Some(index)) => index.lookup_stats(&keys)?,
            _ => vec![None; keys.len()],
        }
        .into_iter();
        let cached: Vec<Option<ObjectId>> = contents
            .iter()
            .map(|c| c.and_then(|_| cached.next().flatten()))
            .collect();
        m.entries
            .par_iter()
            .zip(contents.par_iter())
            .zip(cached.par_iter())
            .map(|((e, content), cached)| {
                self.check_one(e, scan.get(&e.path), content.as_ref(), *cached)
            })
            .collect()
    }

    /// For a file placed as a symlink into the store: the target's stat, if the link points
    /// at the right object.
    fn symlink_target(&self, rel: &str, id: &ObjectId, exec: bool) -> Option<Seen> {
        let target = fs::read_link(self.dest.join(rel)).ok()?;
        let ok = target == self.store.object_path(id, exec)
            || target == self.store.object_path(id, !exec);
        if ok {
            fs::metadata(&target).ok().map(|m| Seen::of(&m))
        } else {
            None
        }
    }

    fn check_one(
        &self,
        e: &Entry,
        seen: Option<&Seen>,
        content: Option<&Seen>,
        cached: Option<ObjectId>,
    ) -> Result<Checked> {
        let Some(seen) = seen else {
            return Ok(Checked::plain(EntryState::Missing));
        };
        let state = match &e.node {
            Node::Dir if seen.is_dir() => EntryState::Ok,
            Node::Dir => EntryState::modified("not a directory"),
            Node::Symlink { target } => self.check_symlink(&e.path, seen, target),
            Node::File { exec, size, id } => {
                let node = FileNode {
                    exec: *exec,
                    size: *size,
                    id,
                };
                return self.check_file(&e.path, seen, content, &node, cached);
            }
        };
        Ok(Checked::plain(state))
    }

    fn check_symlink(&self, rel: &str, seen: &Seen, target: &str) -> EntryState {
        if seen.kind != Kind::Symlink {
            return EntryState::modified("not a symlink");
        }
        match fs::read_link(self.dest.join(rel)) {
            Ok(t) if t.as_os_str() == target => EntryState::Ok,
            _ => EntryState::modified("symlink target differs"),
        }
    }

    /// A file entry: kind, execute bit and size from the stat; content from the stat cache,
    /// else by hashing it.
    fn check_file(
        &self,
        rel: &str,
        seen: &Seen,
        content: Option<&Seen>,
        node: &FileNode,
        cached: Option<ObjectId>,
    ) -> Result<Checked> {
        let Some(meta) = content else {
            return Ok(Checked::plain(EntryState::modified(
                if seen.kind == Kind::Symlink {
                    "symlink does not point at its store object"
                } else {
                    "not a regular file"
                },
            )));
        };
        if meta.kind != Kind::File {
            return Ok(Checked::plain(EntryState::modified("not a regular file")));
        }
        if meta.exec() != node.exec {
            return Ok(Checked::plain(EntryState::modified(
                "executable bit differs",
            )));
        }
        // Whether it is the store object's own inode matters only for a file that differs
        // (two lstats): an intact file vouched for by the stat cache costs no call here.
        if meta.stat.size != node.size {
            return Ok(Checked::plain(
                if self.same_inode_as_object(meta, node.id) {
                    EntryState::StoreObjectChanged
                } else {
                    EntryState::modified("size differs")
                },
            ));
        }
        if cached == Some(*node.id) {
            return Ok(Checked::plain(EntryState::Ok));
        }
        self.rehash(rel, meta, node.id)
    }

    /// Hash the file: intact (and worth a stat-cache row), or changed, and if it shares the
    /// store object's inode, changed in the store too.
    fn rehash(&self, rel: &str, meta: &Seen, id: &ObjectId) -> Result<Checked> {
        let path = self.dest.join(rel);
        let (actual, _) = crate::store::b3_file(&path).ctx("read", &path)?;
        let (state, cache) = if actual == *id {
            (EntryState::Ok, Some((meta.stat, *id)))
        } else if self.same_inode_as_object(meta, id) {
            (EntryState::StoreObjectChanged, None)
        } else {
            (EntryState::modified("content differs"), None)
        };
        Ok(Checked {
            state,
            rehashed: true,
            cache,
        })
    }

    fn same_inode_as_object(&self, meta: &Seen, id: &ObjectId) -> bool {
        [false, true].iter().any(|exec| {
            fs::symlink_metadata(self.store.object_path(id, *exec))
                .map(|o| o.dev() == meta.stat.dev && o.ino() == meta.stat.ino)
                .unwrap_or(false)
        })
    }
}

/// Save stat-cache rows (files verified by hashing, or just placed).
pub(super) fn commit_cache(store: &Store, rows: Vec<(StatKey, ObjectId)>) -> Result<()> {
    if let (Some(index), false) = (store.index(), rows.is_empty()) {
        index.commit(&crate::store::IndexBatch {
            stats: rows,
            ..Default::default()
        })?;
    }
    Ok(())
}

/// A materialized DEST as found on disk: its marker, its tree, one scan, and each entry's state.
pub(super) struct Found {
    pub marker: Marker,
    pub manifest: Manifest,
    pub scan: Scan,
    pub checked: Vec<Checked>,
}

/// Read DEST's marker (refusing a directory without one, with `why` in the message), its tree,
/// scan DEST once and check every entry. The tree is read and parsed while DEST is scanned
/// (two threads: each was about half of a `status`).
pub(super) fn load(store: &Store, dest: &Path, verify: bool, why: &str) -> Result<Found> {
    let marker = read_marker(store, dest)?
        .marker
        .ok_or_else(|| Error::bad_input(dest, format!("no {MARKER_NAME}: {why}")))?;
    let (manifest, scan) = rayon::join(|| store.read_tree(&marker.tree), || scan(dest));
    let (manifest, scan) = (manifest?, scan?);
    let checker = Checker {
        store,
        dest,
        verify,
    };
    let checked = checker.check_all(&manifest, &scan)?;
    Ok(Found {
        marker,
        manifest,
        scan,
        checked,
    })
}
