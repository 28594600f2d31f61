//! The planner: from the tree, the scan of DEST and the check of each entry, decide what to
//! create, replace, remove and keep, and what the marker will say. Deciding does no I/O: a
//! [`Plan`] is plain data that the executor (`apply`) carries out, so a plan can be made, and
//! measured, without a disk.

use super::check::EntryState;
use super::dest::root_name;
use super::link::LinkPolicy;
use super::marker::{Layout, Marker};
use super::scan::{extra_paths, Scan};
use crate::place::error::{Error, Result};
use crate::store::{Entry, Manifest, Node, ObjectId};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// What the planner decides from.
pub struct PlanInput<'a> {
    /// The tree to place, and its manifest.
    pub tree: &'a ObjectId,
    pub manifest: &'a Manifest,
    /// DEST, canonical: messages name paths in it, and a new GC root is named by it.
    pub dest: &'a Path,
    pub store_root: &'a Path,
    pub policy: &'a LinkPolicy,
    /// DEST as scanned, and each entry of `manifest` as the Checker found it against that
    /// scan (in entry order).
    pub scan: &'a Scan,
    pub states: &'a [EntryState],
    /// What the previous version drops, when DEST held another tree.
    pub dropped: Option<Dropped<'a>>,
    /// DEST is or becomes a materialized directory (a marker and a GC root); false for a
    /// repair in place.
    pub marked: bool,
    /// DEST's marker before this run.
    pub previous: Option<&'a Marker>,
    /// The Layout to record; `None` keeps the previous marker's.
    pub layout: Option<&'a Layout>,
    /// Files and symlinks this run would replace that are not what the previous version
    /// placed there (the user edited them, or put them there): a switch refuses them, named,
    /// unless `force`.
    pub edited: &'a [String],
    /// Replace `edited` anyway, keeping each one beside the new entry.
    pub force: bool,
}

/// The previous version's entries that the new tree does not list.
pub struct Dropped<'a> {
    /// The previous version's tree: its folders the new tree does not imply are pruned.
    pub old: &'a Manifest,
    /// Its entries the new tree drops ([`dropped`]), and each one's state in DEST.
    pub entries: &'a Manifest,
    pub states: &'a [EntryState],
}

/// What to do to DEST, in the order the executor does it.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The marker (none for a repair in place): written incomplete before the first change
    /// and complete after the last, unless nothing changes.
    pub marker: Option<MarkerPlan>,
    /// Entries of the previous version to remove, deepest first.
    pub remove: Vec<Removal<'a>>,
    /// Folders of the previous version the new tree does not imply: removed where empty,
    /// deepest first.
    pub prune: Vec<&'a str>,
    /// Folders to create, shallowest level first: a parent exists before its children.
    pub mkdirs: Vec<Vec<&'a str>>,
    /// Entries to write, in entry order.
    pub write: Vec<Write<'a>>,
    /// Entries left alone (intact files and symlinks, and every folder entry).
    pub unchanged: u64,
    /// Entries of the previous version the user changed: kept.
    pub kept_modified: Vec<String>,
    /// Edited files the new version replaces (`force`): each is kept beside it first.
    pub keep_aside: Vec<&'a str>,
    /// Files and symlinks in DEST that the tree does not list.
    pub extra: u64,
}

/// The marker a materialize leaves.
#[derive(Debug)]
pub struct MarkerPlan {
    pub marker: Marker,
    /// False when the same version is already complete and intact: a run that changes
    /// nothing writes nothing (and keeps the counts of what placed the files).
    pub write: bool,
    /// The previous marker's root, when it is not DEST's own (a moved DEST, an older name):
    /// `read_marker` vouched that it stands for this DEST or for nothing, so it goes once
    /// DEST's own root is written.
    pub drop_root: Option<String>,
}

/// An entry of the previous version to remove.
#[derive(Debug)]
pub struct Removal<'a> {
    pub path: &'a str,
    /// A folder entry (removed only if empty).
    pub dir: bool,
}

/// An entry to write.
#[derive(Debug)]
pub struct Write<'a> {
    pub entry: &'a Entry,
    /// Something differing is at the path: write beside it and rename over it.
    pub replace: bool,
}

/// Decide what materializing (or repairing) DEST takes, refusing before anything is written
/// what would write through a symlink, over a user's folder, or from a changed store object.
pub fn plan<'a>(input: &PlanInput<'a>) -> Result<Plan<'a>> {
    let (remove, kept_modified) = sort_dropped(input);
    let dirs = tree_dirs(input.manifest);
    refuse_conflicts(input, &dirs, &remove)?;
    let write = writes(input.manifest, input.states);
    if !input.edited.is_empty() && !input.force {
        return Err(Error::Edited {
            dest: input.dest.to_path_buf(),
            paths: input.edited.to_vec(),
        });
    }
    Ok(Plan {
        keep_aside: input.edited.iter().map(String::as_str).collect(),
        marker: input
            .marked
            .then(|| decide_marker(input, remove.is_empty())),
        prune: match &input.dropped {
            Some(d) => prunable(tree_dirs(d.old), &dirs),
            None => Vec::new(),
        },
        mkdirs: by_depth(&dirs),
        unchanged: (input.manifest.entries.len() - write.len()) as u64,
        extra: extra_paths(input.manifest, input.scan).count() as u64,
        remove,
        kept_modified,
        write,
    })
}

/// The entries of `old` that `new` does not list, in `old`'s order.
pub fn dropped(old: &Manifest, new: &Manifest) -> Manifest {
    let new_paths: HashSet<&str> = new.entries.iter().map(|e| e.path.as_str()).collect();
    Manifest {
        entries: old
            .entries
            .iter()
            .filter(|e| !new_paths.contains(e.path.as_str()))
            .cloned()
            .collect(),
    }
}

/// Folders a tree implies: every ancestor of every entry, plus its empty-folder entries;
/// sorted.
pub fn tree_dirs(m: &Manifest) -> Vec<&str> {
    let mut dirs: Vec<&str> = Vec::new();
    let mut prev = "";
    for e in &m.entries {
        // In a sorted tree the paths under a folder are contiguous, so only the ancestors the
        // previous entry does not share are new: no set of every ancestor of every entry.
        let mut end = 0;
        while let Some(i) = e.path[end..].find('/') {
            let dir = &e.path[..end + i];
            if !prev.starts_with(dir) || prev.as_bytes().get(dir.len()) != Some(&b'/') {
                dirs.push(dir);
            }
            end += i + 1;
        }
        if matches!(e.node, Node::Dir) {
            dirs.push(&e.path);
        }
        prev = &e.path;
    }
    // A folder entry, or an unsorted tree, may repeat a folder.
    dirs.sort_unstable();
    dirs.dedup();
    dirs
}

/// The folders of `dirs` that `keep` does not list, deepest first.
pub fn prunable<'a>(dirs: Vec<&'a str>, keep: &[&str]) -> Vec<&'a str> {
    let keep: HashSet<&str> = keep.iter().copied().collect();
    let mut v: Vec<&str> = dirs.into_iter().filter(|d| !keep.contains(d)).collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}

/// Dropped entries the user left alone are removed (deepest first); changed ones are kept.
fn sort_dropped<'a>(input: &PlanInput<'a>) -> (Vec<Removal<'a>>, Vec<String>) {
    let mut remove = Vec::new();
    let mut kept = Vec::new();
    if let Some(d) = &input.dropped {
        let entries: &'a Manifest = d.entries;
        for (e, state) in entries.entries.iter().zip(d.states) {
            match state {
                EntryState::Ok => remove.push(Removal {
                    path: &e.path,
                    dir: input.scan.get(&e.path).is_some_and(|s| s.is_dir()),
                }),
                EntryState::Missing => {}
                _ => kept.push(e.path.clone()),
            }
        }
    }
    remove.sort_by(|a, b| b.path.cmp(a.path));
    (remove, kept)
}

/// Refuse to write through a symlink or a file where the tree has a folder (unless it is a
/// dropped entry about to go), over a folder where it has a file, or from a store object that
/// was changed in place.
fn refuse_conflicts(input: &PlanInput, dirs: &[&str], remove: &[Removal]) -> Result<()> {
    let removable: HashSet<&str> = remove.iter().map(|r| r.path).collect();
    for d in dirs {
        if input
            .scan
            .get(*d)
            .is_some_and(|s| !s.is_dir() && !removable.contains(d))
        {
            return Err(Error::bad_input(input.dest.join(d), "must be a directory for this tree, but is a file or symlink here; refusing to write through it"));
        }
    }
    for (e, state) in input.manifest.entries.iter().zip(input.states) {
        if let (EntryState::StoreObjectChanged, Node::File { id, .. }) = (state, &e.node) {
            return Err(Error::ObjectChanged {
                id: *id,
                path: input.dest.join(&e.path),
            });
        }
        // An intact entry is no folder, and a missing one is nothing: only a differing file
        // or symlink may have a folder in its place.
        let differs = !matches!(state, EntryState::Ok | EntryState::Missing);
        let leaf = matches!(e.node, Node::File { .. } | Node::Symlink { .. });
        if differs && leaf && input.scan.get(&e.path).is_some_and(|s| s.is_dir()) {
            return Err(Error::bad_input(
                input.dest.join(&e.path),
                "is a directory where the tree has a file; refusing to replace it",
            ));
        }
    }
    Ok(())
}

/// The marker DEST gets: the GC root named by DEST's own path (never the marker's word), the Layout
/// given (else the one the version was placed with), and, for the same version again, the
/// previous counts and no write unless something changes.
fn decide_marker(input: &PlanInput, nothing_removed: bool) -> MarkerPlan {
    let previous = input.previous;
    let root = root_name(input.dest);
    let mut marker = Marker::new(*input.tree, input.store_root, root, input.policy.clone());
    marker.layout = input
        .layout
        .cloned()
        .or_else(|| previous.and_then(|p| p.layout.clone()));
    let same = previous.filter(|p| {
        p.complete
            && p.root == marker.root
            && p.tree == *input.tree
            && p.policy == *input.policy
            && p.layout == marker.layout
    });
    if let Some(p) = same {
        marker.used = p.used.clone();
    }
    let intact = input.states.iter().all(|s| *s == EntryState::Ok);
    MarkerPlan {
        drop_root: previous
            .map(|p| p.root.clone())
            .filter(|r| *r != marker.root),
        marker,
        write: !(same.is_some() && nothing_removed && intact),
    }
}

/// Entries that are missing or differ (folders aside: they are made level by level).
fn writes<'a>(m: &'a Manifest, states: &[EntryState]) -> Vec<Write<'a>> {
    m.entries
        .iter()
        .zip(states)
        .filter(|(e, s)| **s != EntryState::Ok && !matches!(e.node, Node::Dir))
        .map(|(entry, s)| Write {
            entry,
            replace: *s != EntryState::Missing,
        })
        .collect()
}

/// Folders by depth, shallowest first: each level is made in parallel after the one above it
/// (mkdir, the filesystem's inode allocator, is a large part of placing a venv).
fn by_depth<'a>(dirs: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut levels: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for d in dirs {
        levels.entry(d.matches('/').count()).or_default().push(d);
    }
    levels.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[(&str, bool)]) -> Manifest {
        let mut m = Manifest {
            entries: paths
                .iter()
                .map(|(p, dir)| Entry {
                    path: p.to_string(),
                    node: if *dir {
                        Node::Dir
                    } else {
                        Node::Symlink { target: "x".into() }
                    },
                })
                .collect(),
        };
        m.sort();
        m
    }

    #[test]
    fn tree_dirs_lists_each_folder_once_in_byte_order() {
        // `a/b-x` sorts between `a/b` and `a/b/…`: the folder `a/b` is not contiguous.
        let m = tree(&[
            ("a/b", true),
            ("a/b-x/d", false),
            ("a/b/c/e", false),
            ("a/b/f", false),
            ("a/bc/g", false),
            ("z", true),
        ]);
        assert_eq!(tree_dirs(&m), ["a", "a/b", "a/b-x", "a/b/c", "a/bc", "z"]);
    }
}
