//! Remove a materialized DEST: exactly what its marker's tree placed (unmodified), then
//! folders left empty, then the marker and the GC root. User files and modified files stay
//! unless `all`.

use super::beneath::Beneath;
use super::check::{load, EntryState, Found};
use super::dest::check_dest;
use super::marker::{read_marker, Marker, MARKER_NAME};
use super::plan::{prunable, tree_dirs, Removal};
use super::scan::extras;
use crate::place::error::{Error, IoContext, Result};
use crate::store::{is_cache_path, Node, Store};
use serde::Serialize;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

/// Result of `remove`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoveReport {
    pub removed_entries: u64,
    pub removed_dirs: u64,
    /// Files the tree does not list (or that were modified), left in place.
    pub kept: Vec<String>,
    pub dest_removed: bool,
}

/// Delete what the marker's tree placed, then the marker and the GC root, then an environment
/// the version placed outside DEST.
pub fn remove(store: &Store, dest: &Path, all: bool) -> Result<RemoveReport> {
    let meta = fs::symlink_metadata(dest).ctx("stat", dest)?;
    if meta.file_type().is_symlink() {
        return Err(Error::bad_input(
            dest,
            "is a symlink; give the real directory",
        ));
    }
    let dest = check_dest(store, dest, false)?;
    let found = load(
        store,
        &dest,
        false,
        "refusing to remove a directory comfystore did not make",
    )?;
    // A materialize killed while writing leaves files that may be half-written copies: they
    // differ from the version like a user's edits do, and cannot be told from them. Keeping
    // them and deleting the marker would leave a DEST no later run accepts; finishing the
    // materialize first tells them apart.
    if !found.marker.complete && !all {
        let differing = found
            .manifest
            .entries
            .iter()
            .zip(&found.checked)
            .filter(|(e, c)| {
                !matches!(e.node, Node::Dir)
                    && found.scan.contains_key(&e.path)
                    && c.state != EntryState::Ok
            })
            .count();
        if differing > 0 {
            return Err(Error::bad_input(
                &dest,
                format!(
                    "the last materialize here did not finish (killed?): {differing} file(s) differ from its version and may be half-written, so nothing was removed; run `comfystore materialize` again to finish it, then remove (or `remove --all` to delete everything)"
                ),
            ));
        }
    }
    let mut report = RemoveReport::default();
    let beneath = Beneath::open(&dest)?;
    remove_placed(store, &beneath, &found, all, &mut report)?;
    if all {
        remove_the_rest(&beneath, &found, &mut report)?;
    } else {
        remove_caches(&beneath, &found, &mut report)?;
    }
    let marker_path = dest.join(MARKER_NAME);
    fs::remove_file(&marker_path).ctx("remove", &marker_path)?;
    // The marker's `root` was checked (DEST's own, or registered to DEST); DEST's own root
    // goes either way.
    store.remove_root(&found.marker.root)?;
    store.remove_root(&super::dest::root_name(&dest))?;
    report.dest_removed = fs::remove_dir(&dest).is_ok();
    remove_outside_venv(store, &found.marker, all, &mut report)?;
    Ok(report)
}

/// The tree's files and symlinks, deepest first; modified ones are kept unless `all`. Never
/// through a symlink: the scan does not descend into one, so a path below one is not seen.
fn remove_placed(
    store: &Store,
    dest: &Beneath,
    found: &Found,
    all: bool,
    report: &mut RemoveReport,
) -> Result<()> {
    let mut order: Vec<_> = found.manifest.entries.iter().zip(&found.checked).collect();
    order.sort_by(|a, b| b.0.path.cmp(&a.0.path));
    let mut unlinked = Vec::new();
    for (e, c) in order {
        if matches!(e.node, Node::Dir) || !found.scan.contains_key(&e.path) {
            continue;
        }
        if c.state != EntryState::Ok && !all {
            report.kept.push(e.path.clone());
            continue;
        }
        let path = dest.path().join(&e.path);
        let (dir, name) = dest.parent_of(&e.path)?;
        dir.unlink(name, false).ctx("remove", &path)?;
        report.removed_entries += 1;
        if let (Node::File { id, exec, .. }, EntryState::Ok, Some(seen)) =
            (&e.node, &c.state, found.scan.get(&e.path))
        {
            unlinked.push((*id, *exec, seen.stat));
        }
    }
    hand_on_rows(store, &unlinked)
}

/// The stat-cache rows of the store objects whose hard links `remove` just deleted. Unlinking
/// moves an inode's ctime, and the stat cache keys on ctime, so without this the next
/// materialize would rehash every object this DEST linked (20 s instead of 3 s for a real
/// ComfyUI version). A row is handed on only for an entry that was checked intact just
/// before, when the object is that very inode and its size and mtime did not move: the only
/// change between is our unlink.
fn hand_on_rows(
    store: &Store,
    unlinked: &[(crate::store::ObjectId, bool, crate::store::StatKey)],
) -> Result<()> {
    let mut rows = Vec::new();
    for (id, exec, was) in unlinked {
        for variant in [*exec, !*exec] {
            let Ok(m) = store.object_lstat(id, variant) else {
                continue;
            };
            let now = m.key;
            if (now.dev, now.ino) == (was.dev, was.ino) {
                if now.size == was.size && now.mtime_ns == was.mtime_ns {
                    rows.push((now, *id));
                }
                break;
            }
        }
    }
    super::check::commit_cache(store, rows)
}

/// `all`: every other file and symlink, then every folder that empties.
fn remove_the_rest(dest: &Beneath, found: &Found, report: &mut RemoveReport) -> Result<()> {
    let extra = extras(&found.manifest, &found.scan);
    report.removed_entries += remove_files(dest, &extra)?;
    let dirs: Vec<&str> = found
        .scan
        .iter()
        .filter(|(_, s)| s.is_dir())
        .map(|(p, _)| p.as_str())
        .collect();
    report.removed_dirs = remove_empty_dirs(dest, &prunable(dirs, &[]));
    Ok(())
}

/// Without `all`: byte-code caches are Python's, derived from what was placed, so they go too;
/// user files are kept; the tree's folders and cache folders go where they empty.
fn remove_caches(dest: &Beneath, found: &Found, report: &mut RemoveReport) -> Result<()> {
    let (caches, user): (Vec<String>, Vec<String>) = extras(&found.manifest, &found.scan)
        .into_iter()
        .partition(|p| is_cache_path(p));
    report.removed_entries += remove_files(dest, &caches)?;
    report.kept.extend(user);
    report.kept.sort();
    let mut dirs = tree_dirs(&found.manifest);
    dirs.extend(
        found
            .scan
            .iter()
            .filter(|(p, s)| s.is_dir() && is_cache_path(p))
            .map(|(p, _)| p.as_str()),
    );
    report.removed_dirs = remove_empty_dirs(dest, &prunable(dirs, &[]));
    Ok(())
}

/// An environment placed outside DEST (`--venv`) belongs to the version: it goes too.
fn remove_outside_venv(
    store: &Store,
    marker: &Marker,
    all: bool,
    report: &mut RemoveReport,
) -> Result<()> {
    let Some(venv) = marker.layout.as_ref().and_then(|l| l.venv.as_ref()) else {
        return Ok(());
    };
    if read_marker(store, venv)?.marker.is_none() {
        return Ok(());
    }
    let r = remove(store, venv, all)?;
    report.removed_entries += r.removed_entries;
    report.removed_dirs += r.removed_dirs;
    report.kept.extend(
        r.kept
            .into_iter()
            .map(|k| format!("{}/{k}", venv.display())),
    );
    Ok(())
}

/// Remove these files (paths in DEST); one already gone is not an error. Returns how many went.
fn remove_files(dest: &Beneath, paths: &[String]) -> Result<u64> {
    let entries: Vec<Removal> = paths
        .iter()
        .map(|p| Removal {
            path: p,
            dir: false,
        })
        .collect();
    remove_entries(dest, &entries)
}

/// Remove these entries in order (a folder only if empty); one already gone, or a folder that
/// is not empty, is passed over. Returns how many went. Each goes through its folder opened
/// beneath DEST without following a symlink, so nothing outside DEST is ever removed.
pub(super) fn remove_entries(dest: &Beneath, entries: &[Removal]) -> Result<u64> {
    let mut n = 0;
    for r in entries {
        let path = dest.path().join(r.path);
        let (dir, name) = match dest.parent_of(r.path) {
            Ok(d) => d,
            // Its folder is gone: so is the entry.
            Err(Error::Io(e)) if e.source.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let res = dir.unlink(name, r.dir);
        match res {
            Ok(()) => n += 1,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty) => {}
            Err(e) => return Err(e).ctx("remove", &path),
        }
    }
    Ok(n)
}

/// Remove these folders in order where they are empty (beneath DEST, never through a
/// symlink); returns how many went.
pub(super) fn remove_empty_dirs(dest: &Beneath, dirs: &[&str]) -> u64 {
    let mut n = 0;
    for d in dirs {
        let gone = dest
            .parent_of(d)
            .is_ok_and(|(dir, name)| dir.unlink(name, true).is_ok());
        if gone {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::{materialize, LinkMode, LinkPolicy};
    use crate::store::{AddOptions, StatKey, StoreOptions};

    /// A hardlinked version removed leaves its objects vouched for under their new ctime, so
    /// the next materialize does not rehash them. Fails without `hand_on_rows`: the unlink
    /// moves the object's ctime past the row the materialize wrote.
    #[test]
    fn remove_hands_on_the_stat_cache_rows_of_the_objects_it_unlinked() {
        let t = tempfile::tempdir().expect("tempdir");
        let src = t.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("a.py"), b"print(1)\n").expect("write");
        let store = Store::open(t.path().join("store"), &StoreOptions::default()).expect("store");
        let tree = store
            .add_tree(&src, &AddOptions::default())
            .expect("add")
            .id;
        let id = crate::store::hash_bytes(b"print(1)\n", false).b3;
        let dest = t.path().join("dest");
        materialize(&store, &tree, &dest, &LinkPolicy::only(LinkMode::Hardlink)).expect("place");
        // Let the unlink below land on a later ctime tick than the link.
        std::thread::sleep(std::time::Duration::from_millis(20));
        remove(&store, &dest, false).expect("remove");
        let obj = store.object_path(&id, false);
        let key = StatKey::of(&fs::symlink_metadata(&obj).expect("object"));
        let index = store.index().expect("index");
        assert_eq!(index.lookup_stats(&[key]).expect("lookup")[0], Some(id));
    }
}
