//! `fetch LOCK`: make the store complete for a lockfile.
//!
//! In order: trees from an offline mirror's bundles; trees rebuilt from git (checked against
//! the lock's tree ids); then models (and wheels) downloaded in parallel, local mirror files
//! and HTTP mirrors first, each verified against the lock's hashes. Finally the lock's
//! content is pinned by the GC root `lock/<tag>`.

use super::mirror::layout as mirror;
use super::version::{complete_models, source_tree};
use crate::git::{fetch_tree, GitCredentials, GitSource};
use crate::http::{Download, Downloaded, Expect, Fetcher, HttpOptions, FILE_SCHEME};
use crate::lockfile::{Lockfile, Part};
use crate::pipeline::error::Result;
use crate::store::{ObjectId, Root, Store};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

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
    /// A bucket written by `push`, tried before every other source.
    pub remote: Option<super::remote::Remote>,
    /// Source parts (`comfyui`, `custom_nodes/NAME`) `verify` found intact in DEST by their
    /// tree id: not fetched, though the store lacks them.
    pub intact: Vec<String>,
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
    /// What came from the remote (`--remote`), when one was asked for and the store lacked
    /// anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<super::remote::PullReport>,
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
    /// A Comfy Registry node's id and version, when that is all the lock says of it.
    registry: Option<(String, String)>,
}

/// The lock's source trees; where the lock names none, the tree an earlier fetch recorded for
/// the repo and commit.
fn source_trees(store: &Store, lock: &Lockfile) -> Result<Vec<LockedTree>> {
    let c = &lock.comfyui;
    let mut v = vec![LockedTree {
        label: "comfyui".into(),
        tree: c.tree,
        repo: c.repo.clone(),
        commit: c.commit.clone(),
        dirty: c.dirty,
        excludes: crate::lockfile::comfyui_excludes(),
        registry: None,
    }];
    for n in lock.custom_nodes.iter().filter(|n| n.file.is_none()) {
        v.push(LockedTree {
            label: format!("custom_nodes/{}", n.name),
            tree: n.tree,
            repo: n.repo.clone(),
            commit: n.commit.clone(),
            dirty: n.dirty,
            excludes: Vec::new(),
            registry: n
                .registry
                .as_ref()
                .map(|r| (r.id.clone(), r.version.clone())),
        });
    }
    for t in v.iter_mut().filter(|t| !t.dirty) {
        let (repo, commit) = (t.repo.as_deref(), t.commit.as_deref());
        t.tree = source_tree(store, t.tree, repo, commit, &t.excludes)?;
    }
    Ok(v)
}

/// Fetch what `lock` names and the store lacks, then pin it with the root `lock/<tag>`.
pub fn fetch_lock(store: &Store, lock: &Lockfile, opts: &FetchOptions) -> Result<FetchReport> {
    // Held throughout: gc must not collect what we fetch before the root names it. As a
    // reader's lock: a version fully in a store this process may only read needs no write,
    // and what does write (a download, a git tree) asks for write access first.
    let _writer = store.lock_reading()?;
    let mut f = Fetch {
        store,
        lock,
        opts,
        report: FetchReport::default(),
    };
    f.pull_remote()?;
    f.import_mirror_bundles()?;
    if opts.wants(Part::Nodes) {
        let git = f.git_sources()?;
        f.trees_from_git(git)?;
        f.single_file_nodes();
    }
    let mut items = Vec::new();
    if opts.wants(Part::Python) {
        items.extend(f.wheel_downloads()?);
    }
    if opts.wants(Part::Models) {
        items.extend(f.model_downloads()?);
    }
    f.download(&items)?;
    add_lock_root(store, &complete_models(store, lock)?, &f.report)?;
    Ok(f.report)
}

/// One fetch: what it works from, and what it has found and done so far.
struct Fetch<'a> {
    store: &'a Store,
    lock: &'a Lockfile,
    opts: &'a FetchOptions,
    report: FetchReport,
}

impl Fetch<'_> {
    /// What the store lacks, from the remote first. What the bucket lacks (or cannot give) is
    /// left to the other sources; a bucket that cannot be reached is a warning.
    fn pull_remote(&mut self) -> Result<()> {
        let Some(remote) = &self.opts.remote else {
            return Ok(());
        };
        let mut ids = Vec::new();
        let mut git = Vec::new();
        if self.opts.wants(Part::Nodes) {
            git = super::remote::treeless_sources(self.lock);
            for t in source_trees(self.store, self.lock)? {
                ids.extend(t.tree);
            }
            ids.extend(self.lock.custom_nodes.iter().filter_map(|n| n.file));
        }
        if self.opts.wants(Part::Python) {
            ids.extend(self.lock.python.as_ref().and_then(|p| p.tree));
        }
        ids.retain(|id| !self.store.has_tree(id) && !self.store.has_object(id));
        let mut models = Vec::new();
        if self.opts.wants(Part::Models) {
            for m in &self.lock.models {
                let have = match m.blake3 {
                    Some(id) => self.store.has_object(&id),
                    None => self.store.lookup_sha256(&m.sha256)?.is_some(),
                };
                if !have {
                    models.push((m.sha256, m.blake3));
                }
            }
        }
        git.retain(|g| {
            !matches!(
                self.store.git_tree(&g.repo, &g.commit, &g.excludes),
                Ok(Some(_))
            )
        });
        if ids.is_empty() && models.is_empty() && git.is_empty() {
            return Ok(());
        }
        let jobs = self.opts.http.jobs.clamp(1, 16);
        match super::remote::pull_rooted(
            self.store,
            remote,
            &ids,
            &models,
            &git,
            jobs,
            self.opts.http.offline,
            None,
        ) {
            Ok(r) => {
                for (what, why) in &r.failed {
                    tracing::info!("remote {}: {what}: {why}", remote.url());
                }
                self.report.remote = Some(r);
            }
            Err(e) => tracing::warn!("remote {}: {e}; trying the other sources", remote.url()),
        }
        Ok(())
    }

    /// Trees from an offline mirror's bundles, when the store lacks any the lock wants.
    fn import_mirror_bundles(&mut self) -> Result<()> {
        let trees_missing = (self.opts.wants(Part::Nodes)
            && source_trees(self.store, self.lock)?
                .iter()
                .any(|t| missing_tree(self.store, &t.tree)))
            || (self.opts.wants(Part::Python) && python_missing(self.store, self.lock)?);
        if trees_missing {
            for dir in &self.opts.mirror_dirs {
                self.report.imported.extend(mirror::import_bundles(
                    self.store,
                    dir,
                    &self.lock.tag,
                )?);
            }
        }
        Ok(())
    }

    /// The missing source trees git can rebuild; the others are reported as failed, with why.
    fn git_sources(&mut self) -> Result<Vec<GitSource>> {
        let mut git = Vec::new();
        for t in source_trees(self.store, self.lock)?
            .into_iter()
            .filter(|t| missing_tree(self.store, &t.tree) && !self.opts.intact.contains(&t.label))
        {
            let what = match t.tree {
                Some(id) => format!("tree {} ({id})", t.label),
                None => format!("tree {} (not in the lock)", t.label),
            };
            self.report.needed.push(what);
            match (&t.repo, &t.commit) {
                _ if t.dirty => self.report.failed.push((
                    t.label,
                    "locked from uncommitted changes: only a bundle or mirror of its tree can restore it".into(),
                )),
                (Some(repo), Some(commit)) if self.opts.http.offline => self.report.failed.push((
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
                _ => {
                    let why = match &t.registry {
                        Some((id, version)) => crate::lockfile::registry_gap(id, version),
                        None => "no repo and commit to fetch it from: import a bundle or mirror".into(),
                    };
                    self.report.failed.push((t.label, why));
                }
            }
        }
        Ok(git)
    }

    /// The wheels to download: all the store lacks with `all_wheels`, else only when the
    /// environment is missing (they are what rebuilds it). Packages no wheel pins are reported.
    fn wheel_downloads(&mut self) -> Result<Vec<Download>> {
        let python_missing = python_missing(self.store, self.lock)?;
        if python_missing {
            self.report
                .needed
                .push("environment (installed from the wheels)".into());
            unpinned_packages(self.lock, &mut self.report);
        }
        let mut items = Vec::new();
        if !(self.opts.all_wheels || python_missing) {
            return Ok(items);
        }
        for (file, sha, url) in self.lock.pinned_wheels() {
            if self
                .store
                .lookup_sha256(&sha)?
                .is_some_and(|b3| self.store.has_object(&b3))
            {
                continue;
            }
            self.report.needed.push(format!("wheel {file}"));
            let in_mirror = |d: &Path| mirror::wheel_path(d, &file);
            items.push(Download {
                label: format!("wheels/{file}"),
                sources: sources(self.opts, in_mirror, &sha, url),
                expect: Expect {
                    sha256: Some(sha),
                    ..Default::default()
                },
            });
        }
        Ok(items)
    }

    /// The models the store lacks; identical models (same content at two paths) are downloaded
    /// once. A model the lock names by sha256 alone is found by it.
    fn model_downloads(&mut self) -> Result<Vec<Download>> {
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in &self.lock.models {
            let have = match m.blake3 {
                Some(id) if self.store.has_object(&id) => {
                    // The alias is part of a published download: a run killed before writing
                    // it left the object without it.
                    self.store.ensure_alias(&m.sha256, &id)?;
                    true
                }
                Some(_) => false,
                None => self
                    .store
                    .lookup_sha256(&m.sha256)?
                    .is_some_and(|b3| self.store.has_object(&b3)),
            };
            if have {
                continue;
            }
            self.report.needed.push(format!("model {}", m.path));
            if !seen.insert(m.sha256) {
                continue;
            }
            self.report.needed_bytes += m.size.unwrap_or(0);
            let in_mirror = |d: &Path| d.join(&m.path);
            items.push(Download {
                label: m.path.clone(),
                sources: sources(self.opts, in_mirror, &m.sha256, m.sources.iter().cloned()),
                expect: Expect {
                    sha256: Some(m.sha256),
                    blake3: m.blake3,
                    size: m.size,
                },
            });
        }
        Ok(items)
    }

    /// Rebuild trees from git, `jobs` at a time, each checked against the lock's tree id and
    /// recorded for its repo and commit (so a lock without tree ids finds it again).
    fn trees_from_git(&mut self, git: Vec<GitSource>) -> Result<()> {
        if !git.is_empty() {
            self.store.writable()?;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.opts.http.jobs.clamp(1, 16))
            .build()
            .map_err(|e| crate::http::Error::Download {
                what: "git".into(),
                reason: e.to_string(),
            })?;
        let creds = GitCredentials::from_env();
        // Repositories done: git runs quietly, so their bytes are not known as they come.
        let bar =
            self.store
                .reporter()
                .start("git", Some(git.len() as u64), crate::report::Unit::Items);
        let results: Vec<_> = pool.install(|| {
            git.par_iter()
                .map(|g| {
                    let r = fetch_tree_once(self.store, g, &creds);
                    bar.inc(1);
                    r
                })
                .collect()
        });
        bar.finish();
        for (g, r) in git.into_iter().zip(results) {
            match r {
                // Another process sharing the store rebuilt it while this one waited.
                Ok(None) => {}
                Ok(Some(tree)) => {
                    self.report.trees.push(FetchedTree {
                        label: g.label,
                        tree,
                        repo: crate::secret::redact_url(&g.repo),
                        commit: g.commit,
                    });
                }
                Err(e) => self.report.failed.push((g.label, e.to_string())),
            }
        }
        Ok(())
    }

    /// Single-file nodes the store lacks: nothing but a bundle or mirror has them.
    fn single_file_nodes(&mut self) {
        for n in &self.lock.custom_nodes {
            let label = format!("custom_nodes/{}", n.name);
            if self.opts.intact.contains(&label) {
                continue;
            }
            if let Some(id) = n.file.filter(|id| !self.store.has_object(id)) {
                self.report.needed.push(format!("file {label}"));
                self.report.failed.push((
                    label,
                    format!("single-file node {id} has no source: import a bundle or mirror"),
                ));
            }
        }
    }

    /// Download the items in parallel, reporting each as downloaded or failed.
    fn download(&mut self, items: &[Download]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        // One error naming the store and the missing permission, not one per file.
        self.store.writable()?;
        // A lock's file:// sources are read only beneath the allowed folders and the mirrors
        // (folders, and `file://` mirror URLs).
        let mut http = self.opts.http.clone();
        if let Some(roots) = http.file_roots.as_mut() {
            roots.extend(self.opts.mirror_dirs.iter().cloned());
            roots.extend(
                self.opts
                    .mirror_urls
                    .iter()
                    .filter_map(|u| u.strip_prefix(FILE_SCHEME))
                    .map(PathBuf::from),
            );
        }
        let fetcher = Fetcher::new(http)?;
        for (item, r) in items.iter().zip(fetcher.download_all(self.store, items)) {
            match r {
                Ok(d) => self.report.downloaded.push(d),
                Err(e) => self.report.failed.push((item.label.clone(), e.to_string())),
            }
        }
        Ok(())
    }
}

/// Rebuild a tree from git and record it for its repo and commit, unless another process
/// sharing the store did so while this one waited for its named lock (then `None`).
fn fetch_tree_once(
    store: &Store,
    g: &GitSource,
    creds: &GitCredentials,
) -> crate::git::Result<Option<ObjectId>> {
    let root = crate::store::git_tree_root(&g.repo, &g.commit, &g.excludes);
    let _single = store.lock_named(&root.replace('/', "-"))?;
    let recorded = store.git_tree(&g.repo, &g.commit, &g.excludes)?;
    if recorded.is_some_and(|t| g.expect.is_none_or(|want| want == t)) {
        return Ok(None);
    }
    let tree = fetch_tree(store, g, creds)?;
    store.record_git_tree(&g.repo, &g.commit, &g.excludes, tree)?;
    Ok(Some(tree))
}

/// Whether the store lacks a tree (or the lock names none).
fn missing_tree(store: &Store, t: &Option<ObjectId>) -> bool {
    t.is_none_or(|t| !store.has_tree(&t))
}

/// Whether the lock has an environment the store holds neither as the lock's tree nor as one
/// installed earlier for the same wheels.
fn python_missing(store: &Store, lock: &Lockfile) -> Result<bool> {
    match &lock.python {
        Some(py) => Ok(crate::python::find_env(store, &py.into())?.is_none()),
        None => Ok(false),
    }
}

/// Packages no wheel pins (VCS, editable, unpinned) cannot be installed.
fn unpinned_packages(lock: &Lockfile, report: &mut FetchReport) {
    let Some(py) = &lock.python else { return };
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

/// Where to look for a file, in order: the offline mirrors (`in_mirror` of each folder), the
/// HTTP mirrors by SHA-256, then the file's own sources.
fn sources(
    opts: &FetchOptions,
    in_mirror: impl Fn(&Path) -> PathBuf,
    sha: &crate::store::Sha256,
    own: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut sources: Vec<String> = opts
        .mirror_dirs
        .iter()
        .map(|d| format!("{FILE_SCHEME}{}", in_mirror(d).display()))
        .collect();
    sources.extend(by_sha256(&opts.mirror_urls, sha));
    sources.extend(own);
    sources
}

/// Pin what the store holds of `lock` with the GC root `lock/<tag>` (as `fetch` does), e.g.
/// after a `pull`.
pub fn pin_lock(store: &Store, lock: &Lockfile) -> Result<()> {
    let _writer = store.lock_shared()?;
    add_lock_root(
        store,
        &complete_models(store, lock)?,
        &FetchReport::default(),
    )
}

/// Pin what the store now holds with `lock/<tag>` (with the trees recorded for repo and commit
/// where the lock names none), keeping the lockfile path a `lock` run recorded.
fn add_lock_root(store: &Store, lock: &Lockfile, report: &FetchReport) -> Result<()> {
    let mut ids: Vec<_> = lock.store_ids();
    ids.extend(
        source_trees(store, lock)?
            .into_iter()
            .filter_map(|t| t.tree),
    );
    ids.retain(|id| store.has_tree(id) || store.has_object(id));
    ids.extend(report.downloaded.iter().map(|d| d.id));
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let name = format!("lock/{}", lock.tag);
    let old = store.read_root(&name)?;
    // Another lock with the same tag may have made this root: what it kept stays kept (a root
    // never silently stops protecting content; `lock` replaces it, saying so).
    if let Some(old) = &old {
        ids.extend(
            old.ids
                .iter()
                .filter(|id| store.has_tree(id) || store.has_object(id)),
        );
        ids.sort();
        ids.dedup();
    }
    let path = old.and_then(|r| r.path);
    let root = Root {
        ids,
        path,
        ..Default::default()
    };
    store.add_root_if_writable(&name, &root)?;
    Ok(())
}

/// `<mirror>/<sha256>` for every HTTP mirror.
fn by_sha256(mirrors: &[String], sha: &crate::store::Sha256) -> Vec<String> {
    mirrors
        .iter()
        .map(|p| format!("{}/{}", p.trim_end_matches('/'), sha.hex()))
        .collect()
}
