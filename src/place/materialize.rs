//! Make DEST hold a tree: create it, repair it, or switch it from the tree it held before.
//! Survey (the trees, one scan, the checks) → [`plan`](super::plan) → [`apply`](super::apply).
//! Only missing or differing entries are written; files the user added are never touched.

use super::apply::{Executor, MaterializeReport};
use super::check::{Checker, EntryState};
use super::dest::check_dest;
use super::link::LinkPolicy;
use super::marker::{read_marker, Layout, Marker, MARKER_NAME};
use super::plan::{self, Dropped, PlanInput};
use super::scan::scan;
use crate::place::error::{Error, IoContext, Result};
use crate::store::{Manifest, ObjectId, Store};
use std::fs;
use std::path::Path;

/// Make DEST hold `tree` (a materialized directory, with a marker and a GC root).
pub fn materialize(
    store: &Store,
    tree: &ObjectId,
    dest: &Path,
    policy: &LinkPolicy,
) -> Result<MaterializeReport> {
    Placement::new(tree, dest, policy).apply(store)
}

/// [`materialize`]; with `force`, a switch replaces files the user edited, keeping each
/// beside the new one (`NAME.comfystore-kept-<unix time>`) instead of refusing.
pub fn materialize_force(
    store: &Store,
    tree: &ObjectId,
    dest: &Path,
    policy: &LinkPolicy,
    force: bool,
) -> Result<MaterializeReport> {
    Placement {
        force,
        ..Placement::new(tree, dest, policy)
    }
    .apply(store)
}

/// [`materialize_force`], recording where the lock's other parts went (`layout`) in the
/// marker. `manifest` is the tree's manifest, which the caller just stored (not read again).
pub fn materialize_laid_out(
    store: &Store,
    tree: &ObjectId,
    manifest: &Manifest,
    dest: &Path,
    policy: &LinkPolicy,
    layout: &Layout,
    force: bool,
) -> Result<MaterializeReport> {
    Placement {
        manifest: Some(manifest),
        layout: Some(layout),
        force,
        ..Placement::new(tree, dest, policy)
    }
    .apply(store)
}

/// Write the missing or differing entries of `tree` into DEST, an install that was not
/// materialized (no marker), leaving everything else alone: no marker, no GC root, nothing
/// removed. `verify --fix` repairs a user's own ComfyUI folder this way.
pub fn repair_in_place(
    store: &Store,
    tree: &ObjectId,
    dest: &Path,
    policy: &LinkPolicy,
) -> Result<MaterializeReport> {
    Placement {
        marked: false,
        ..Placement::new(tree, dest, policy)
    }
    .apply(store)
}

/// What to place where, and how.
struct Placement<'a> {
    tree: &'a ObjectId,
    /// The tree's manifest when the caller has it (else it is read from the store).
    manifest: Option<&'a Manifest>,
    dest: &'a Path,
    policy: &'a LinkPolicy,
    /// DEST is or becomes a materialized directory (a marker and a GC root); false for
    /// `repair_in_place`.
    marked: bool,
    /// The Layout to record in the marker (else the previous marker's is kept).
    layout: Option<&'a Layout>,
    /// A switch may replace the user's edits (each kept beside the new entry).
    force: bool,
}

impl<'a> Placement<'a> {
    /// A plain materialize: marked, the manifest read from the store, the Layout kept.
    fn new(tree: &'a ObjectId, dest: &'a Path, policy: &'a LinkPolicy) -> Self {
        Placement {
            tree,
            manifest: None,
            dest,
            policy,
            marked: true,
            layout: None,
            force: false,
        }
    }

    fn apply(&self, store: &Store) -> Result<MaterializeReport> {
        // Reading the tree, scanning DEST and checking what is there take seconds on a big
        // tree before the first entry is placed: a spinner meanwhile.
        let planning = store
            .reporter()
            .start("planning", None, crate::report::Unit::Wait);
        let read;
        let manifest = match self.manifest {
            Some(m) => m,
            None => {
                read = store.read_tree(self.tree)?;
                &read
            }
        };
        check_placeable(self.tree, manifest)?;
        // gc must not delete the objects while we link them (a reader's lock: placing from a
        // store this process may only read works).
        let _lock = store.lock_reading()?;
        let dest = check_dest(store, self.dest, true)?;
        let beneath = super::beneath::Beneath::open(&dest)?;
        let previous = self.previous_marker(store, &dest)?;
        let old = match &previous {
            Some(p) if p.tree != *self.tree => Some(store.read_tree(&p.tree)?),
            _ => None,
        };
        let scan = scan(&dest)?;
        let checker = Checker {
            store,
            dest: &dest,
            verify: false,
        };
        let states = states_of(&checker, manifest, &scan)?;
        // Old entries the new tree drops: removed if the user did not change them.
        let dropped = old.as_ref().map(|old| plan::dropped(old, manifest));
        let dropped_states = match &dropped {
            Some(d) => states_of(&checker, d, &scan)?,
            None => Vec::new(),
        };
        let edited = match (&previous, &old) {
            (Some(p), Some(old)) if p.complete => {
                edited_files(&checker, manifest, &states, old, &scan)?
            }
            _ => Vec::new(),
        };
        let plan = plan::plan(&PlanInput {
            tree: self.tree,
            manifest,
            dest: &dest,
            store_root: store.root(),
            policy: self.policy,
            scan: &scan,
            states: &states,
            dropped: old
                .as_ref()
                .zip(dropped.as_ref())
                .map(|(old, entries)| Dropped {
                    old,
                    entries,
                    states: &dropped_states,
                }),
            marked: self.marked,
            previous: previous.as_ref(),
            layout: self.layout,
            edited: &edited,
            force: self.force,
        })?;
        let sources = super::apply::sources(store, self.tree, manifest, &plan.write)?;
        planning.finish();
        Executor {
            store,
            tree: self.tree,
            dest: &dest,
            beneath: &beneath,
            policy: self.policy,
            sources: &sources,
        }
        .execute(plan)
    }

    /// DEST's marker before this run (a materialize only), refusing to materialize over a
    /// folder that has files and no marker.
    fn previous_marker(&self, store: &Store, dest: &Path) -> Result<Option<Marker>> {
        if !self.marked {
            return Ok(None);
        }
        let previous = read_marker(store, dest)?.marker;
        if previous.is_none() && has_files_besides_marker_temps(dest)? {
            return Err(Error::bad_input(
                dest,
                format!(
                    "directory is not empty and has no {MARKER_NAME}; refusing to materialize over it"
                ),
            ));
        }
        Ok(previous)
    }
}

/// Whether `dest` holds anything but temp files of the marker's first write (a materialize
/// killed while writing it leaves only `.tmp-<32 hex>`, and its rerun must not refuse DEST);
/// those are removed.
fn has_files_besides_marker_temps(dest: &Path) -> Result<bool> {
    let mut temps = Vec::new();
    for e in fs::read_dir(dest).ctx("list", dest)? {
        let e = e.ctx("list", dest)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = name
            .strip_prefix(crate::store::TEMP_PREFIX)
            .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ours || !e.file_type().ctx("stat", &e.path())?.is_file() {
            return Ok(true);
        }
        temps.push(e.path());
    }
    for t in temps {
        let _ = fs::remove_file(t);
    }
    Ok(false)
}

/// Refuse a tree that lists the marker's name (the objects are looked for with the plan:
/// [`sources`](super::apply::sources)).
fn check_placeable(tree: &ObjectId, manifest: &Manifest) -> Result<()> {
    if let Some(e) = manifest.entries.iter().find(|e| e.path == MARKER_NAME) {
        return Err(crate::store::Error::BadManifest {
            id: tree.to_string(),
            reason: format!("{:?} is reserved for the materialize marker", e.path),
        }
        .into());
    }
    Ok(())
}

/// A switch from `old`: the files and symlinks the new tree would replace that are not what
/// `old` placed there. An entry `old` lists at the same path is compared with `old`'s entry
/// (through the stat cache): intact means the previous version's file, which may go. A path
/// `old` does not list holds the user's own file.
fn edited_files(
    checker: &Checker,
    manifest: &Manifest,
    states: &[EntryState],
    old: &Manifest,
    scan: &super::scan::Scan,
) -> Result<Vec<String>> {
    use crate::store::Node;
    let replaced: Vec<&str> = manifest
        .entries
        .iter()
        .zip(states)
        .filter(|(e, s)| {
            matches!(s, EntryState::Modified { .. })
                && !matches!(e.node, Node::Dir)
                && scan.get(&e.path).is_some_and(|seen| !seen.is_dir())
        })
        .map(|(e, _)| e.path.as_str())
        .collect();
    if replaced.is_empty() {
        return Ok(Vec::new());
    }
    let by_path: std::collections::HashMap<&str, &crate::store::Entry> =
        old.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let previous = Manifest {
        entries: replaced
            .iter()
            .filter_map(|p| by_path.get(p).map(|e| (*e).clone()))
            .collect(),
    };
    let intact: std::collections::HashSet<&str> = previous
        .entries
        .iter()
        .zip(states_of(checker, &previous, scan)?)
        .filter(|(_, s)| *s == EntryState::Ok)
        .map(|(e, _)| e.path.as_str())
        .collect();
    Ok(replaced
        .into_iter()
        .filter(|p| !intact.contains(p))
        .map(str::to_string)
        .collect())
}

/// Each entry's state in DEST (the stat-cache rows of this check are not saved: a materialize
/// saves the rows of what it places).
fn states_of(checker: &Checker, m: &Manifest, scan: &super::scan::Scan) -> Result<Vec<EntryState>> {
    Ok(checker
        .check_all(m, scan)?
        .into_iter()
        .map(|c| c.state)
        .collect())
}
