//! `fetch LOCK`: make the store complete for a lockfile.
//!
//! In order: trees from an offline mirror's bundles; trees rebuilt from git (checked against
//! the lock's tree ids); then models (and wheels) downloaded in parallel, local mirror files
//! and HTTP mirrors first, each verified against the lock's hashes. Finally the lock's
//! content is pinned by the GC root `lock/<tag>`.

use super::mirror::layout as mirror;
use crate::git::{fetch_tree, GitSource};
use crate::http::{Download, Downloaded, Expect, Fetcher, HttpOptions, FILE_SCHEME};
use crate::lockfile::{Lockfile, Part};
use crate::pipeline::error::Result;
use crate::store::{ObjectId, Root, Store};
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;

/// Where to look and how.
#[derive(Clone, Debug, Default)]
pub struct FetchOptions {
    /// Only this part.
    pub only: Option<Part>,
    /// HTTP mirrors holding files by SHA-256 (`<url>/<sha256>`), tried before a file's sources.
    pub mirror_urls: Vec<String>,
    /// Offline mirrors written by `mirror`, tried before anything else.
    pub mirror_dirs: Vec<PathBuf>,
    pub http: HttpOptions,
    /// Download every pinned wheel. Otherwise wheels are fetched only when the environment
    /// tree is missing (they are what rebuilds it).
    pub all_wheels: bool,
}

impl FetchOptions {
    pub fn wants(&self, p: Part) -> bool {
        self.only.is_none_or(|o| o == p)
    }
}

/// A tree rebuilt from git.
#[derive(Clone, Debug, Serialize)]
pub struct FetchedTree {
    pub label: String,
    pub tree: ObjectId,
    pub repo: String,
    pub commit: String,
}

/// What `fetch` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FetchReport {
    /// Everything the store lacked, as `kind name`.
    pub needed: Vec<String>,
    /// Bytes of the files (models, wheels) the store lacked, where the lock knows their size.
    pub needed_bytes: u64,
    /// Offline-mirror bundles imported.
    pub imported: Vec<PathBuf>,
    pub trees: Vec<FetchedTree>,
    pub downloaded: Vec<Downloaded>,
    /// (what, why) of everything still missing.
    pub failed: Vec<(String, String)>,
}

impl FetchReport {
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// A source tree the lock names: its label, tree, repo, commit, dirtiness, and the top-level
/// names its tree leaves out.
struct LockedTree {
    label: String,
    tree: Option<ObjectId>,
    repo: Option<String>,
    commit: Option<String>,
    dirty: bool,
    excludes: Vec<String>,
}

fn source_trees(lock: &Lockfile) -> Vec<LockedTree> {
    let mut v = vec![LockedTree {
        label: "comfyui".into(),
        tree: lock.comfyui.tree,
        repo: lock.comfyui.repo.clone(),
        commit: lock.comfyui.commit.clone(),
        dirty: lock.comfyui.dirty,
        excludes: crate::lockfile::comfyui_excludes(),
    }];
    for n in lock.custom_nodes.iter().filter(|n| n.file.is_none()) {
        v.push(LockedTree {
            label: format!("custom_nodes/{}", n.name),
            tree: n.tree,
            repo: n.repo.clone(),
            commit: n.commit.clone(),
            dirty: n.dirty,
            excludes: Vec::new(),
        });
    }
    v
}

/// Fetch what `lock` names and the store lacks, then pin it with the root `lock/<tag>`.
pub fn fetch_lock(store: &Store, lock: &Lockfile, opts: &FetchOptions) -> Result<FetchReport> {
    let mut report = FetchReport::default();
    // Held throughout: gc must not collect what we fetch before the root names it.
    let _writer = store.lock_shared()?;
    let missing_tree = |t: &Option<ObjectId>| t.is_none_or(|t| !store.has_tree(&t));
    // The environment, when the store has neither the lock's tree nor one installed earlier
    // for the same wheels (asked again after a mirror's bundles are imported).
    let python_missing = || -> Result<bool> {
        match &lock.python {
            Some(py) => Ok(crate::python::find_env(store, &py.into())?.is_none()),
            None => Ok(false),
        }
    };
    let trees_missing = (opts.wants(Part::Nodes)
        && source_trees(lock).iter().any(|t| missing_tree(&t.tree)))
        || (opts.wants(Part::Python) && python_missing()?);
    if trees_missing {
        for dir in &opts.mirror_dirs {
            report
                .imported
                .extend(mirror::import_bundles(store, dir, &lock.tag)?);
        }
    }

    let mut rebuilt: Vec<ObjectId> = Vec::new();
    if opts.wants(Part::Nodes) {
        let mut git = Vec::new();
        for t in source_trees(lock)
            .into_iter()
            .filter(|t| missing_tree(&t.tree))
        {
            let what = match t.tree {
                Some(id) => format!("tree {} ({id})", t.label),
                None => format!("tree {} (not in the lock)", t.label),
            };
            report.needed.push(what);
            match (&t.repo, &t.commit) {
                _ if t.dirty => report.failed.push((
                    t.label,
                    "locked from uncommitted changes: only a bundle or mirror of its tree can restore it".into(),
                )),
                (Some(repo), Some(commit)) if opts.http.offline => report.failed.push((
                    t.label,
                    format!("offline: would fetch {}@{commit}", crate::secret::redact_url(repo)),
                )),
                (Some(repo), Some(commit)) => git.push(GitSource {
                    label: t.label,
                    repo: repo.clone(),
                    commit: commit.clone(),
                    expect: t.tree,
                    excludes: t.excludes,
                }),
                _ => report.failed.push((
                    t.label,
                    "no repo and commit to fetch it from: import a bundle or mirror".into(),
                )),
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.http.jobs.clamp(1, 16))
            .build()
            .map_err(|e| crate::http::Error::Download {
                what: "git".into(),
                reason: e.to_string(),
            })?;
        let results: Vec<_> =
            pool.install(|| git.par_iter().map(|g| fetch_tree(store, g)).collect());
        for (g, r) in git.into_iter().zip(results) {
            match r {
                Ok(tree) => {
                    rebuilt.push(tree);
                    report.trees.push(FetchedTree {
                        label: g.label,
                        tree,
                        repo: crate::secret::redact_url(&g.repo),
                        commit: g.commit,
                    });
                }
                Err(e) => report.failed.push((g.label, e.to_string())),
            }
        }
        for n in &lock.custom_nodes {
            if let Some(id) = n.file.filter(|id| !store.has_object(id)) {
                let label = format!("custom_nodes/{}", n.name);
                report.needed.push(format!("file {label}"));
                report.failed.push((
                    label,
                    format!("single-file node {id} has no source: import a bundle or mirror"),
                ));
            }
        }
    }

    let mut items: Vec<Download> = Vec::new();
    if opts.wants(Part::Python) {
        let python_missing = python_missing()?;
        if python_missing {
            report
                .needed
                .push("environment (installed from the wheels)".into());
            // Packages no wheel pins (VCS, editable, unpinned) cannot be installed.
            if let Some(py) = &lock.python {
                for p in py
                    .packages
                    .iter()
                    .filter(|p| p.wheel.is_none() || p.sha256.is_none())
                {
                    report.failed.push((
                        format!("python/{}", p.name),
                        format!(
                            "{} {} is not pinned to a wheel ({}), and the store lacks the environment: pin it with `comfystore pin`, or import a bundle or mirror",
                            p.name,
                            p.version,
                            p.url.as_deref().unwrap_or("installed from an index")
                        ),
                    ));
                }
            }
        }
        if opts.all_wheels || python_missing {
            for (file, sha, url) in lock.pinned_wheels() {
                if store
                    .lookup_sha256(&sha)?
                    .is_some_and(|b3| store.has_object(&b3))
                {
                    continue;
                }
                let label = format!("wheels/{file}");
                report.needed.push(format!("wheel {file}"));
                let mut sources: Vec<String> = opts
                    .mirror_dirs
                    .iter()
                    .map(|d| format!("{FILE_SCHEME}{}", mirror::wheel_path(d, &file).display()))
                    .collect();
                sources.extend(by_sha256(&opts.mirror_urls, &sha));
                sources.extend(url);
                items.push(Download {
                    label,
                    sources,
                    expect: Expect {
                        sha256: Some(sha),
                        ..Default::default()
                    },
                });
            }
        }
    }
    if opts.wants(Part::Models) {
        let mut seen = std::collections::HashSet::new();
        for m in lock.models.iter().filter(|m| !store.has_object(&m.blake3)) {
            report.needed.push(format!("model {}", m.path));
            // Identical models (same content at two paths) are downloaded once.
            if !seen.insert(m.blake3) {
                continue;
            }
            report.needed_bytes += m.size;
            let mut sources: Vec<String> = opts
                .mirror_dirs
                .iter()
                .map(|d| format!("{FILE_SCHEME}{}", d.join(&m.path).display()))
                .collect();
            sources.extend(by_sha256(&opts.mirror_urls, &m.sha256));
            sources.extend(m.sources.iter().cloned());
            items.push(Download {
                label: m.path.clone(),
                sources,
                expect: Expect {
                    sha256: Some(m.sha256),
                    blake3: Some(m.blake3),
                    size: Some(m.size),
                },
            });
        }
    }
    if !items.is_empty() {
        let fetcher = Fetcher::new(opts.http.clone())?;
        for (item, r) in items.iter().zip(fetcher.download_all(store, &items)) {
            match r {
                Ok(d) => report.downloaded.push(d),
                Err(e) => report.failed.push((item.label.clone(), e.to_string())),
            }
        }
    }
    // Pin what the store now holds, keeping the lockfile path a `lock` run recorded.
    let mut ids: Vec<_> = lock
        .store_ids()
        .into_iter()
        .filter(|id| store.has_tree(id) || store.has_object(id))
        .collect();
    ids.extend(rebuilt);
    ids.extend(report.downloaded.iter().map(|d| d.id));
    ids.sort();
    ids.dedup();
    if !ids.is_empty() {
        let name = format!("lock/{}", lock.tag);
        let path = store
            .list_roots()?
            .into_iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, r)| r.path);
        store.add_root(&name, &Root { ids, path })?;
    }
    Ok(report)
}

/// `<mirror>/<sha256>` for every HTTP mirror.
fn by_sha256(mirrors: &[String], sha: &crate::store::Sha256) -> Vec<String> {
    mirrors
        .iter()
        .map(|p| format!("{}/{}", p.trim_end_matches('/'), sha.hex()))
        .collect()
}
