//! fsck: rehash every object (in parallel), check every tree and alias, and optionally move
//! what is corrupt to `quarantine/` so it can be fetched or added again.

use super::durable::{self, TEMP_PREFIX};
use super::gc::scan_store;
use super::hash;
use super::id::ObjectId;
use super::object::{MODE_EXEC, MODE_PLAIN};
use super::Store;
use crate::store::error::{IoContext, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;
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
    /// `corrupt-object`, `corrupt-tree`, `missing-object`, `bad-mode`, `bad-alias`,
    /// `dangling-root`, `stray-file`.
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
        let scan = scan_store(self)?;
        let mut report = FsckReport::default();
        let total: u64 = scan.object_files.iter().map(|f| f.size).sum();
        let bar = self
            .reporter()
            .start("fsck", Some(total), crate::report::Unit::Bytes);
        let results: Vec<Option<FsckProblem>> = scan
            .object_files
            .par_iter()
            .map(|f| {
                let r = match hash::b3_file(&f.path) {
                    Ok((id, _)) if id == f.id => None,
                    Ok((id, _)) => Some(FsckProblem {
                        kind: "corrupt-object",
                        path: f.path.clone(),
                        detail: format!("content hashes to {id}, not {}", f.id),
                    }),
                    Err(e) => Some(FsckProblem {
                        kind: "corrupt-object",
                        path: f.path.clone(),
                        detail: format!("cannot read: {e}"),
                    }),
                };
                bar.inc(f.size);
                r
            })
            .collect();
        bar.finish();
        report.objects_checked = scan.object_files.len() as u64;
        report.bytes_checked = total;

        let mut corrupt: HashSet<PathBuf> = HashSet::new();
        for p in results.into_iter().flatten() {
            corrupt.insert(p.path.clone());
            report.problems.push(p);
        }
        for f in &scan.object_files {
            if corrupt.contains(&f.path) {
                continue;
            }
            let want = if f.exec { MODE_EXEC } else { MODE_PLAIN };
            let mode = fs::symlink_metadata(&f.path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(want);
            if mode != want {
                report.problems.push(FsckProblem {
                    kind: "bad-mode",
                    path: f.path.clone(),
                    detail: format!("mode {mode:o}, expected {want:o}"),
                });
                if opts.repair {
                    fs::set_permissions(&f.path, fs::Permissions::from_mode(want))
                        .ctx("chmod", &f.path)?;
                }
            }
        }
        // Objects that remain good, for the reference checks below.
        let good: HashSet<ObjectId> = scan
            .object_files
            .iter()
            .filter(|f| !corrupt.contains(&f.path))
            .map(|f| f.id)
            .collect();

        for t in &scan.tree_files {
            report.trees_checked += 1;
            match self.read_tree(&t.id) {
                Err(e) => {
                    corrupt.insert(t.path.clone());
                    report.problems.push(FsckProblem {
                        kind: "corrupt-tree",
                        path: t.path.clone(),
                        detail: e.to_string(),
                    });
                }
                Ok(m) => {
                    for e in &m.entries {
                        if let super::Node::File { id, .. } = &e.node {
                            if !good.contains(id) {
                                report.problems.push(FsckProblem {
                                    kind: "missing-object",
                                    path: t.path.clone(),
                                    detail: format!("tree {} entry {:?} needs {id}, which is missing or corrupt", t.id, e.path),
                                });
                            }
                        }
                    }
                }
            }
        }

        for ((sha, id), (_, path)) in scan.aliases.iter().zip(&scan.alias_files) {
            let problem = if !good.contains(id) {
                Some(format!("{sha} points to {id}, which is missing or corrupt"))
            } else if opts.sha256 {
                let digests = self
                    .open_object(id)
                    .and_then(|mut f| hash::stream(&mut f, None, true).ctx("read", path));
                match digests {
                    Ok(d) if d.sha256 == Some(*sha) => None,
                    Ok(d) => Some(format!("{id} has SHA-256 {:?}, not {sha}", d.sha256)),
                    Err(e) => Some(e.to_string()),
                }
            } else {
                None
            };
            if let Some(detail) = problem {
                report.problems.push(FsckProblem {
                    kind: "bad-alias",
                    path: path.clone(),
                    detail,
                });
                if opts.repair {
                    let _ = fs::remove_file(path);
                }
            }
        }
        // Roots whose content is gone: gc would keep nothing for them.
        for (name, root) in self.list_roots()? {
            for id in &root.ids {
                let tree_ok = scan.trees.contains(id) && !corrupt.contains(&self.tree_path(id));
                if !tree_ok && !good.contains(id) {
                    report.problems.push(FsckProblem {
                        kind: "dangling-root",
                        path: self.root().join("roots").join(&name),
                        detail: format!("root {name:?} names {id}, which is missing or corrupt"),
                    });
                }
            }
        }
        for p in &scan.stray {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            report.problems.push(FsckProblem {
                kind: "stray-file",
                path: p.clone(),
                detail: "not a store file".into(),
            });
            if opts.repair && name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(p);
            }
        }

        if opts.repair {
            let mut objs = Vec::new();
            let mut trees = Vec::new();
            for f in scan
                .object_files
                .iter()
                .filter(|f| corrupt.contains(&f.path))
            {
                report.quarantined.push(self.quarantine(&f.path)?);
                objs.push(f.id);
            }
            for t in scan.tree_files.iter().filter(|t| corrupt.contains(&t.path)) {
                report.quarantined.push(self.quarantine(&t.path)?);
                trees.push(t.id);
            }
            if let Some(index) = self.index() {
                objs.retain(|id| !self.has_object(id));
                index.remove(&objs, &trees)?;
            }
        }
        Ok(report)
    }

    /// Move a damaged file to `quarantine/` under a unique name; returns the new path.
    fn quarantine(&self, path: &Path) -> Result<PathBuf> {
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
