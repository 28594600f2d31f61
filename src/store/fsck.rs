//! fsck: rehash every object (in parallel), check every tree and alias, and optionally move
//! what is corrupt to `quarantine/` so it can be fetched or added again.

use super::durable::{self, TEMP_PREFIX};
use super::gc::{scan_store, StoreScan};
use super::hash;
use super::id::ObjectId;
use super::object::{MODE_EXEC, MODE_PLAIN};
use super::Store;
use crate::store::error::{IoContext, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How fsck runs.
#[derive(Clone, Debug, Default)]
pub struct FsckOptions {
    /// Move corrupt objects and trees to `quarantine/`, fix modes, drop stale aliases.
    pub repair: bool,
    /// Also recompute SHA-256 of every object that has a SHA-256 alias.
    pub sha256: bool,
}

/// One thing wrong with the store.
#[derive(Clone, Debug, Serialize)]
pub struct FsckProblem {
    /// `corrupt-object`, `corrupt-tree`, `missing-object`, `bad-size` (a tree gives a file a
    /// size its object does not have), `bad-mode`, `bad-alias`, `missing-alias` (with
    /// `repair`: the index knows an object's SHA-256 but its alias file is gone; restored after
    /// rehashing), `dangling-root`, `stray-file`.
    pub kind: &'static str,
    pub path: PathBuf,
    pub detail: String,
}

/// What fsck checked and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    pub objects_checked: u64,
    pub bytes_checked: u64,
    pub trees_checked: u64,
    pub problems: Vec<FsckProblem>,
    pub quarantined: Vec<PathBuf>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Check the whole store.
    pub fn fsck(&self, opts: &FsckOptions) -> Result<FsckReport> {
        // Repairs move files: keep gc and writers' publication out meanwhile.
        let _lock = if opts.repair {
            self.lock_exclusive(true)?
        } else {
            None
        };
        let mut check = Fsck {
            store: self,
            opts,
            scan: scan_store(self)?,
            report: FsckReport::default(),
            corrupt: HashSet::new(),
            good: HashMap::new(),
        };
        check.rehash_objects();
        check.object_modes()?;
        check.trees();
        check.aliases();
        if opts.repair {
            check.restore_aliases()?;
        }
        check.dangling_roots()?;
        check.stray_files();
        if opts.repair {
            check.quarantine_corrupt()?;
        }
        Ok(check.report)
    }

    /// Move a damaged file to `quarantine/` under a unique name; returns the new path.
    pub(crate) fn quarantine(&self, path: &Path) -> Result<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let shard = path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let dest = self
            .root()
            .join("quarantine")
            .join(format!("{shard}{name}.{}", durable::unique_name("")));
        fs::rename(path, &dest).ctx("quarantine", path)?;
        Ok(dest)
    }
}

fn problem(kind: &'static str, path: &Path, detail: String) -> FsckProblem {
    FsckProblem {
        kind,
        path: path.to_path_buf(),
        detail,
    }
}

/// One fsck run: what the scan found, and what the checks so far made of it.
struct Fsck<'a> {
    store: &'a Store,
    opts: &'a FsckOptions,
    scan: StoreScan,
    report: FsckReport,
    /// Object and tree files found damaged.
    corrupt: HashSet<PathBuf>,
    /// Objects that remain good, with their sizes, for the reference checks.
    good: HashMap<ObjectId, u64>,
}

impl Fsck<'_> {
    /// Rehash every object, in parallel; the good ones are what trees may reference.
    fn rehash_objects(&mut self) {
        let files = &self.scan.object_files;
        let total: u64 = files.iter().map(|f| f.size).sum();
        let bar = self
            .store
            .reporter()
            .start("fsck", Some(total), crate::report::Unit::Bytes);
        let results: Vec<Option<FsckProblem>> = files
            .par_iter()
            .map(|f| {
                let detail = match hash::b3_file_counted(&f.path, bar.as_ref()) {
                    Ok((id, _)) if id == f.id => None,
                    Ok((id, _)) => Some(format!("content hashes to {id}, not {}", f.id)),
                    Err(e) => Some(format!("cannot read: {e}")),
                };
                detail.map(|detail| FsckProblem {
                    kind: "corrupt-object",
                    path: f.path.clone(),
                    detail,
                })
            })
            .collect();
        bar.finish();
        self.report.objects_checked = files.len() as u64;
        self.report.bytes_checked = total;
        for p in results.into_iter().flatten() {
            self.corrupt.insert(p.path.clone());
            self.report.problems.push(p);
        }
        self.good = files
            .iter()
            .filter(|f| !self.corrupt.contains(&f.path))
            .map(|f| (f.id, f.size))
            .collect();
    }

    /// Intact objects with the wrong mode (fixed with `repair`).
    fn object_modes(&mut self) -> Result<()> {
        for f in &self.scan.object_files {
            if self.corrupt.contains(&f.path) {
                continue;
            }
            let want = if f.exec { MODE_EXEC } else { MODE_PLAIN };
            let mode = fs::symlink_metadata(&f.path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(want);
            if mode != want {
                let detail = format!("mode {mode:o}, expected {want:o}");
                self.report
                    .problems
                    .push(problem("bad-mode", &f.path, detail));
                if self.opts.repair {
                    fs::set_permissions(&f.path, fs::Permissions::from_mode(want))
                        .ctx("chmod", &f.path)?;
                }
            }
        }
        Ok(())
    }

    /// Every tree parses and names only good objects.
    fn trees(&mut self) {
        let store = self.store;
        for t in &self.scan.tree_files {
            let (id, path) = (t.id, &t.path);
            self.report.trees_checked += 1;
            match store.read_tree(&id) {
                Err(e) => {
                    self.corrupt.insert(path.clone());
                    let p = problem("corrupt-tree", path, e.to_string());
                    self.report.problems.push(p);
                }
                Ok(m) => {
                    for e in &m.entries {
                        if let super::Node::File { id: oid, size, .. } = &e.node {
                            match self.good.get(oid) {
                                None => {
                                    let detail = format!(
                                        "tree {id} entry {:?} needs {oid}, which is missing or corrupt",
                                        e.path
                                    );
                                    let p = problem("missing-object", path, detail);
                                    self.report.problems.push(p);
                                }
                                Some(actual) if actual != size => {
                                    // Every materialize would "repair" this file again; with
                                    // --repair the lying tree goes to quarantine.
                                    self.corrupt.insert(path.clone());
                                    let detail = format!(
                                        "tree {id} entry {:?} says {oid} has {size} bytes; it has {actual}",
                                        e.path
                                    );
                                    self.report.problems.push(problem("bad-size", path, detail));
                                }
                                Some(_) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    /// SHA-256 aliases point to good objects (and, with `sha256`, to the right ones).
    fn aliases(&mut self) {
        for ((sha, id), (_, path)) in self.scan.aliases.iter().zip(&self.scan.alias_files) {
            let (sha, id) = (*sha, *id);
            let found = if !self.good.contains_key(&id) {
                Some(format!("{sha} points to {id}, which is missing or corrupt"))
            } else if self.opts.sha256 {
                // The object was just rehashed (it is good): read it as it is, and never
                // move anything aside without --repair.
                let digests = self
                    .store
                    .find_object(&id, false)
                    .ok_or_else(|| crate::store::Error::NotFound(id.to_string()))
                    .and_then(|p| fs::File::open(&p).ctx("open", &p))
                    .and_then(|mut f| hash::stream(&mut f, None, true).ctx("read", path));
                match digests {
                    Ok(d) if d.sha256 == Some(sha) => None,
                    Ok(d) => Some(format!("{id} has SHA-256 {:?}, not {sha}", d.sha256)),
                    Err(e) => Some(e.to_string()),
                }
            } else {
                None
            };
            if let Some(detail) = found {
                self.report
                    .problems
                    .push(problem("bad-alias", path, detail));
                if self.opts.repair {
                    let _ = fs::remove_file(path);
                }
            }
        }
    }

    /// With `repair`: alias files the index knows of but that are gone (a process killed
    /// between publishing a download and writing its alias), written again once the object's
    /// SHA-256 is computed and matches.
    fn restore_aliases(&mut self) -> Result<()> {
        let Some(index) = self.store.index() else {
            return Ok(());
        };
        let have: HashSet<_> = self.scan.aliases.iter().map(|(sha, _)| *sha).collect();
        let mut ids: Vec<ObjectId> = self.good.keys().copied().collect();
        ids.sort();
        for id in ids {
            let Some(sha) = index.object_sha256(&id)? else {
                continue;
            };
            if have.contains(&sha) {
                continue;
            }
            let path = self.store.alias_path(&sha);
            let detail = match self.store.ensure_alias(&sha, &id) {
                Ok(_) => format!("{sha} (of {id}) had no alias file; restored"),
                Err(e) => format!("{sha} (of {id}) has no alias file and cannot get one: {e}"),
            };
            self.report
                .problems
                .push(problem("missing-alias", &path, detail));
        }
        Ok(())
    }

    /// Roots whose content is gone: gc would keep nothing for them.
    fn dangling_roots(&mut self) -> Result<()> {
        let store = self.store;
        for (name, root) in store.list_roots()? {
            for id in &root.ids {
                let tree_ok =
                    self.scan.trees.contains(id) && !self.corrupt.contains(&store.tree_path(id));
                if !tree_ok && !self.good.contains_key(id) {
                    self.report.problems.push(problem(
                        "dangling-root",
                        &store.root().join("roots").join(&name),
                        format!("root {name:?} names {id}, which is missing or corrupt"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Files in the store's folders that are not store files (leftover temps are removed
    /// with `repair`).
    fn stray_files(&mut self) {
        for p in &self.scan.stray {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let found = problem("stray-file", p, "not a store file".into());
            self.report.problems.push(found);
            if self.opts.repair && name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(p);
            }
        }
    }

    /// Move corrupt objects and trees to `quarantine/` and out of the index.
    fn quarantine_corrupt(&mut self) -> Result<()> {
        let store = self.store;
        let mut objs = Vec::new();
        let mut trees = Vec::new();
        for f in self.scan.object_files.iter() {
            if self.corrupt.contains(&f.path) {
                self.report.quarantined.push(store.quarantine(&f.path)?);
                objs.push(f.id);
            }
        }
        for t in self.scan.tree_files.iter() {
            if self.corrupt.contains(&t.path) {
                self.report.quarantined.push(store.quarantine(&t.path)?);
                trees.push(t.id);
            }
        }
        if let Some(index) = store.index() {
            objs.retain(|id| !store.has_object(id));
            index.remove(&objs, &trees)?;
        }
        Ok(())
    }
}
