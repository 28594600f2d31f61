//! The remote tier: a store's content in a Google Cloud Storage bucket, in the store's own
//! layout under a prefix (store-layout.md, "Remote tier").
//!
//! - [`push`]: the closure of some trees and objects (and a lock's models, their SHA-256
//!   aliases and source records, and the lock file) up to the bucket. Only what the bucket
//!   lacks is sent (one listing of the prefix says what it has); every upload is a conditional
//!   create (`ifGenerationMatch=0`), so concurrent pushers are safe, and a name already taken
//!   by the same bytes (metadata `b3`) is success.
//! - [`pull`]: trees first (each verified against its id on arrival), then the objects they
//!   name that the store lacks, each verified by BLAKE3 and size through the store's checked put
//!   before it is published; trees are published last, after their objects.
//!
//! Every bucket object carries the custom metadata `b3`, the BLAKE3 of its bytes; objects
//! also carry `sha256` when the store knows it.

use crate::gcs::{self, Client, Listed, Put};
use crate::lockfile::Lockfile;
use crate::pipeline::error::{Error, Result};
use crate::store::{Manifest, ObjectId, Sha256, Store};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// The largest tree manifest a pull reads into memory.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The largest alias, source record or lock a pull reads.
const MAX_SMALL_BYTES: u64 = 1 << 20;

/// A prefix of a bucket: `gs://BUCKET/PREFIX`.
#[derive(Clone)]
pub struct Remote {
    client: Arc<Client>,
    prefix: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url())
    }
}

/// `gs://BUCKET/PREFIX` → (bucket, prefix without surrounding slashes).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("gs://").ok_or_else(|| {
        Error::bad_input(url, "a remote is gs://BUCKET/PREFIX (PREFIX may be empty)")
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    if bucket.is_empty() || prefix.split('/').any(|c| c == "." || c == "..") {
        return Err(Error::bad_input(url, "not gs://BUCKET/PREFIX"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl Remote {
    pub fn new(client: Arc<Client>, prefix: &str) -> Remote {
        Remote {
            client,
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// `gs://BUCKET/PREFIX`.
    pub fn url(&self) -> String {
        self.client.gs_uri(&self.prefix)
    }

    /// Check that the credentials hold what a push (`create`: also storage.objects.create) or
    /// a pull needs on the bucket (testIamPermissions); `Some(why)` when the check could not
    /// run (an emulator without IAM).
    pub fn preflight(&self, create: bool) -> Result<Option<String>> {
        let mut wanted = vec!["storage.objects.list", "storage.objects.get"];
        if create {
            wanted.push("storage.objects.create");
        }
        match runtime()?.block_on(self.client.preflight(&wanted))? {
            gcs::Preflight::Granted => Ok(None),
            gcs::Preflight::Skipped(why) => Ok(Some(why)),
        }
    }

    /// The bucket object of a store-relative name.
    fn name(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// Every object under the prefix, by store-relative name.
    async fn listing(&self) -> Result<BTreeMap<String, Listed>> {
        let base = self.name("");
        Ok(self
            .client
            .list(&base)
            .await?
            .into_iter()
            .filter_map(|l| Some((l.name.strip_prefix(&base)?.to_string(), l)))
            .collect())
    }
}

/// `objects/b3/xx/rest`.
fn object_rel(id: &ObjectId) -> String {
    let h = id.hex();
    format!("objects/b3/{}/{}", &h[..2], &h[2..])
}

/// `trees/b3/xx/rest`.
fn tree_rel(id: &ObjectId) -> String {
    let h = id.hex();
    format!("trees/b3/{}/{}", &h[..2], &h[2..])
}

/// `aliases/sha256/xx/rest`.
fn alias_rel(sha: &Sha256) -> String {
    let h = sha.hex();
    format!("aliases/sha256/{}/{}", &h[..2], &h[2..])
}

/// `sources/xx/<64 hex>.<16 hex of BLAKE3(url)>`, as in the store.
fn source_rel(id: &ObjectId, url: &str) -> String {
    let h = id.hex();
    let key = blake3::hash(url.as_bytes()).to_hex();
    format!("sources/{}/{h}.{}", &h[..2], &key[..16])
}

/// `git-trees/<32 hex>`: which tree a repo and commit gave (the store's `git-tree/` root of
/// the same key), so a lock naming a source by repo and commit alone finds its tree.
fn git_tree_rel(g: &GitSource) -> String {
    let root = crate::store::git_tree_root(&g.repo, &g.commit, &g.excludes);
    format!("git-trees/{}", root.trim_start_matches("git-tree/"))
}

/// A source part a lock names by repo and commit without a tree id.
#[derive(Clone, Debug)]
pub struct GitSource {
    pub repo: String,
    pub commit: String,
    /// The top-level names its tree leaves out.
    pub excludes: Vec<String>,
}

/// The lock's clean source parts named by repo and commit alone.
pub fn treeless_sources(lock: &Lockfile) -> Vec<GitSource> {
    let mut v = Vec::new();
    let c = &lock.comfyui;
    if let (None, Some(repo), Some(commit), false) = (c.tree, &c.repo, &c.commit, c.dirty) {
        v.push(GitSource {
            repo: repo.clone(),
            commit: commit.clone(),
            excludes: crate::lockfile::comfyui_excludes(),
        });
    }
    for n in lock.custom_nodes.iter().filter(|n| n.file.is_none()) {
        if let (None, Some(repo), Some(commit), false) = (n.tree, &n.repo, &n.commit, n.dirty) {
            v.push(GitSource {
                repo: repo.clone(),
                commit: commit.clone(),
                excludes: Vec::new(),
            });
        }
    }
    v
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Gcs(gcs::Error::Config(format!("runtime: {e}"))))
}

/// One thing to upload.
enum Body {
    Bytes(Vec<u8>),
    /// An object of the store (read when its turn comes).
    Object(ObjectId),
}

struct Upload {
    rel: String,
    body: Body,
    size: u64,
    sha256: Option<Sha256>,
}

/// What `push` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushReport {
    pub remote: String,
    pub trees: u64,
    pub objects: u64,
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    pub skipped: u64,
    pub skipped_bytes: u64,
    /// The lock file's bucket object, when a lock was pushed.
    pub lock: Option<String>,
}

/// A lock's models as (SHA-256, object) pairs.
pub type ModelAliases = Vec<(Sha256, ObjectId)>;

/// The ids a lock names that the store holds (models named by SHA-256 alone found by it), and
/// its models' (SHA-256, object) pairs.
pub fn lock_ids(store: &Store, lock: &Lockfile) -> Result<(Vec<ObjectId>, ModelAliases)> {
    let mut ids = lock.store_ids();
    let mut aliases = Vec::new();
    for m in &lock.models {
        let id = match m.blake3 {
            Some(id) => Some(id),
            None => store.lookup_sha256(&m.sha256)?,
        };
        if let Some(id) = id {
            ids.push(id);
            aliases.push((m.sha256, id));
        }
    }
    ids.sort();
    ids.dedup();
    Ok((ids, aliases))
}

/// Upload the closure of `ids` (and `lock`'s models, aliases and its bytes) to `remote`,
/// `jobs` uploads at a time.
pub fn push(
    store: &Store,
    remote: &Remote,
    ids: &[ObjectId],
    lock: Option<&Lockfile>,
    jobs: usize,
) -> Result<PushReport> {
    let mut report = PushReport {
        remote: remote.url(),
        ..Default::default()
    };
    let mut ids = ids.to_vec();
    let mut aliases: BTreeMap<Sha256, ObjectId> = BTreeMap::new();
    let mut records = Vec::new();
    if let Some(lock) = lock {
        let (more, a) = lock_ids(store, lock)?;
        ids.extend(more);
        aliases.extend(a);
        for g in treeless_sources(lock) {
            if let Some(t) = store.git_tree(&g.repo, &g.commit, &g.excludes)? {
                ids.push(t);
                let bytes = format!("{t}\n").into_bytes();
                records.push(Upload {
                    rel: git_tree_rel(&g),
                    size: bytes.len() as u64,
                    body: Body::Bytes(bytes),
                    sha256: None,
                });
            }
        }
    }
    ids.sort();
    ids.dedup();
    // The closure: trees with their bytes, objects with their sizes.
    let mut uploads = Vec::new();
    let mut objects: BTreeMap<ObjectId, u64> = BTreeMap::new();
    for id in &ids {
        if store.has_tree(id) {
            let bytes = store.tree_bytes(id)?;
            let m = Manifest::parse(&bytes, &id.to_string())?;
            for (oid, size, _) in m.objects() {
                objects.insert(oid, size);
            }
            report.trees += 1;
            uploads.push(Upload {
                rel: tree_rel(id),
                size: bytes.len() as u64,
                body: Body::Bytes(bytes),
                sha256: None,
            });
        } else if let Some(path) = store
            .find_object(id, false)
            .or_else(|| store.find_object(id, true))
        {
            let size = std::fs::metadata(&path)
                .map_err(|e| Error::io("stat", path.clone(), e))?
                .len();
            objects.insert(*id, size);
        } else {
            return Err(Error::NotFound(id.to_string()));
        }
    }
    let by_object: HashMap<ObjectId, Sha256> = aliases.iter().map(|(s, i)| (*i, *s)).collect();
    for (id, size) in &objects {
        let sha = match by_object.get(id) {
            Some(s) => Some(*s),
            None => store.sha256_of(id)?,
        };
        if let Some(sha) = sha {
            aliases.insert(sha, *id);
        }
        for url in store.sources_of(id)? {
            let bytes = format!("{url}\n").into_bytes();
            uploads.push(Upload {
                rel: source_rel(id, &url),
                size: bytes.len() as u64,
                body: Body::Bytes(bytes),
                sha256: None,
            });
        }
        uploads.push(Upload {
            rel: object_rel(id),
            body: Body::Object(*id),
            size: *size,
            sha256: sha,
        });
    }
    report.objects = objects.len() as u64;
    for (sha, id) in &aliases {
        let bytes = format!("{id}\n").into_bytes();
        uploads.push(Upload {
            rel: alias_rel(sha),
            size: bytes.len() as u64,
            body: Body::Bytes(bytes),
            sha256: None,
        });
    }
    if let Some(lock) = lock {
        let bytes = lock.to_canonical();
        let rel = format!("locks/{}.lock.json", blake3::hash(&bytes).to_hex());
        report.lock = Some(remote.client.gs_uri(&remote.name(&rel)));
        uploads.push(Upload {
            rel,
            size: bytes.len() as u64,
            body: Body::Bytes(bytes),
            sha256: None,
        });
    }
    uploads.extend(records);

    let rt = runtime()?;
    rt.block_on(async {
        let have = remote.listing().await?;
        let (todo, present): (Vec<_>, Vec<_>) = uploads
            .into_iter()
            .partition(|u| !have.contains_key(&u.rel));
        report.skipped = present.len() as u64;
        report.skipped_bytes = present.iter().map(|u| u.size).sum();
        let bar = store.reporter().start(
            "push",
            Some(todo.iter().map(|u| u.size).sum()),
            crate::report::Unit::Bytes,
        );
        // Objects go up before the trees that name them, and trees before the aliases,
        // records and locks that name them.
        let mut batches: [Vec<Upload>; 3] = Default::default();
        for u in todo {
            let i = match u.body {
                Body::Object(_) => 0,
                Body::Bytes(_) if u.rel.starts_with("trees/") => 1,
                Body::Bytes(_) => 2,
            };
            batches[i].push(u);
        }
        for batch in batches {
            let results: Vec<Result<(Put, u64)>> = stream::iter(batch)
                .map(|u| {
                    let bar = &bar;
                    async move {
                        // The bar moves as GCS takes the bytes; a name already there counts
                        // whole at once.
                        let r = upload(store, remote, u, &|n| bar.inc(n)).await;
                        if let Ok((Put::AlreadyThere, n)) = &r {
                            bar.inc(*n);
                        }
                        r
                    }
                })
                .buffer_unordered(jobs.max(1))
                .collect()
                .await;
            for r in results {
                match r? {
                    (Put::Created, n) => {
                        report.uploaded += 1;
                        report.uploaded_bytes += n;
                    }
                    (Put::AlreadyThere, n) => {
                        report.skipped += 1;
                        report.skipped_bytes += n;
                    }
                }
            }
        }
        bar.finish();
        Ok::<(), Error>(())
    })?;
    Ok(report)
}

/// Upload one item; its outcome and size.
async fn upload(
    store: &Store,
    remote: &Remote,
    u: Upload,
    sent: &(dyn Fn(u64) + Sync),
) -> Result<(Put, u64)> {
    // A store object is read from its open file a chunk at a time and hashed as it goes up:
    // one whose bytes no longer hash to its id (root writing through a hardlink while it is
    // pushed) is abandoned before GCS finishes it, never published under a name its bytes
    // no longer have.
    let (data, b3) = match u.body {
        Body::Bytes(b) => {
            let b3 = blake3::hash(&b).to_hex().to_string();
            (gcs::Data::Bytes(b.into()), b3)
        }
        Body::Object(id) => {
            let exec = store.find_object(&id, false).is_none();
            let path = store.checked_object(&id, exec)?;
            let f = std::fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?;
            let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
            let data = gcs::Data::File {
                file: std::sync::Arc::new(f),
                path,
                len,
                b3: id.0,
            };
            (data, id.hex())
        }
    };
    let mut meta = json!({ "b3": b3 });
    if let Some(sha) = u.sha256 {
        meta["sha256"] = json!(sha.hex());
    }
    let put = remote
        .client
        .create_counted(
            &remote.name(&u.rel),
            data,
            "application/octet-stream",
            &meta,
            "b3",
            sent,
        )
        .await?;
    Ok((put, u.size))
}

/// What `pull` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PullReport {
    pub remote: String,
    /// Trees and objects pulled.
    pub trees: u64,
    pub objects: u64,
    pub bytes: u64,
    /// Trees and objects the store had already.
    pub present: u64,
    pub aliases: u64,
    pub sources: u64,
    /// (what, why) of everything not pulled.
    pub failed: Vec<(String, String)>,
}

impl PullReport {
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Fill the store from `remote` with the closure of `ids` and the objects of `models` (by
/// SHA-256, or by id when known), `jobs` downloads at a time. With `offline` nothing is
/// fetched: what the store lacks is reported as failed.
pub fn pull(
    store: &Store,
    remote: &Remote,
    ids: &[ObjectId],
    models: &[(Sha256, Option<ObjectId>)],
    jobs: usize,
    offline: bool,
) -> Result<PullReport> {
    pull_rooted(store, remote, ids, models, &[], jobs, offline, None)
}

/// [`pull`], with the trees the bucket recorded for `git` sources (recorded in the store as
/// `fetch` records them), then the GC root `root` naming those of `ids` the store holds,
/// written under the same writers' lock as the content (gc cannot collect it in between).
#[allow(clippy::too_many_arguments)]
pub fn pull_rooted(
    store: &Store,
    remote: &Remote,
    ids: &[ObjectId],
    models: &[(Sha256, Option<ObjectId>)],
    git: &[GitSource],
    jobs: usize,
    offline: bool,
    root: Option<&str>,
) -> Result<PullReport> {
    if let Some(name) = root {
        crate::store::check_root_name(name)?;
    }
    let _writer = store.lock_shared()?;
    let report = pull_locked(store, remote, ids, models, git, jobs, offline)?;
    if let Some(name) = root {
        let mut kept: Vec<ObjectId> = ids
            .iter()
            .filter(|id| store.has_tree(id) || store.has_object(id))
            .copied()
            .collect();
        kept.sort();
        kept.dedup();
        if !kept.is_empty() {
            store.add_root(
                name,
                &crate::store::Root {
                    ids: kept,
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(report)
}

fn pull_locked(
    store: &Store,
    remote: &Remote,
    ids: &[ObjectId],
    models: &[(Sha256, Option<ObjectId>)],
    git: &[GitSource],
    jobs: usize,
    offline: bool,
) -> Result<PullReport> {
    let mut report = PullReport {
        remote: remote.url(),
        ..Default::default()
    };
    if offline {
        for id in ids {
            if !store.has_tree(id) && !store.has_object(id) {
                report.failed.push((
                    id.to_string(),
                    format!("offline: would pull from {}", remote.url()),
                ));
            }
        }
        return Ok(report);
    }
    let rt = runtime()?;
    // Checking and storing a downloaded object (hashing it) runs on a thread of this scope, so
    // the other downloads keep going meanwhile.
    std::thread::scope(|scope| {
        rt.block_on(pull_async(
            scope,
            store,
            remote,
            ids,
            models,
            git,
            jobs,
            &mut report,
        ))
    })?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn pull_async<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: &'scope Store,
    remote: &Remote,
    ids: &[ObjectId],
    models: &[(Sha256, Option<ObjectId>)],
    git: &[GitSource],
    jobs: usize,
    report: &mut PullReport,
) -> Result<()> {
    let have = remote.listing().await?;
    // Trees the bucket recorded for sources named by repo and commit alone.
    let mut ids = ids.to_vec();
    let mut recorded = Vec::new();
    for g in git {
        if store.git_tree(&g.repo, &g.commit, &g.excludes)?.is_some() {
            continue;
        }
        let rel = git_tree_rel(g);
        if !have.contains_key(&rel) {
            continue;
        }
        if let Some(b) = remote
            .client
            .get(&remote.name(&rel), MAX_SMALL_BYTES)
            .await?
        {
            if let Ok(t) = String::from_utf8_lossy(&b).trim().parse::<ObjectId>() {
                ids.push(t);
                recorded.push((g, t));
            }
        }
    }
    let ids = &ids[..];
    // Objects wanted: id → (size when known, sha256 for its alias, whether a tree names it
    // executable: it is stored so, as `import` does, or placing it would copy its bytes into
    // the other mode's variant and keep both).
    let mut wanted: BTreeMap<ObjectId, (Option<u64>, Option<Sha256>, bool)> = BTreeMap::new();
    let mut trees: Vec<(ObjectId, Manifest)> = Vec::new();
    for (sha, id) in models {
        let id = match id {
            Some(id) => Some(*id),
            None => match store.lookup_sha256(sha)? {
                Some(id) => Some(id),
                None => read_alias(remote, &have, sha).await?,
            },
        };
        match id {
            Some(id) => {
                wanted.entry(id).or_default().1 = Some(*sha);
            }
            None => report
                .failed
                .push((sha.to_string(), "no alias in the bucket".into())),
        }
    }
    // Trees first, each verified on arrival.
    for id in ids {
        if store.has_tree(id) {
            report.present += 1;
            for (oid, size, exec) in store.read_tree(id)?.objects() {
                let w = wanted.entry(oid).or_default();
                w.0 = Some(size);
                w.2 |= exec;
            }
            continue;
        }
        let rel = tree_rel(id);
        if have.contains_key(&rel) {
            match fetch_tree(remote, &rel, id).await {
                Ok(m) => {
                    for (oid, size, exec) in m.objects() {
                        let w = wanted.entry(oid).or_default();
                        w.0 = Some(size);
                        w.2 |= exec;
                    }
                    trees.push((*id, m));
                }
                Err(e) => report.failed.push((format!("tree {id}"), e.to_string())),
            }
        } else if have.contains_key(&object_rel(id)) || store.has_object(id) {
            wanted.entry(*id).or_default();
        } else {
            report
                .failed
                .push((id.to_string(), format!("not in {}", remote.url())));
        }
    }
    // Then the objects the store lacks, verified through the store's checked put.
    let mut todo = Vec::new();
    for (id, (size, sha, exec)) in &wanted {
        if store.has_object(id) {
            report.present += 1;
            if let Some(sha) = sha {
                store.ensure_alias(sha, id)?;
            }
            continue;
        }
        let rel = object_rel(id);
        let Some(listed) = have.get(&rel) else {
            report
                .failed
                .push((id.to_string(), format!("not in {}", remote.url())));
            continue;
        };
        // The alias: the lock's SHA-256, else the one the bucket's object carries (checked
        // against the bytes on arrival either way).
        let sha = sha.or_else(|| {
            listed.metadata["sha256"]
                .as_str()
                .and_then(Sha256::from_hex)
        });
        todo.push(Wanted {
            id: *id,
            size: size.unwrap_or(listed.size),
            sha,
            exec: *exec,
            rel,
        });
    }
    let bar = store.reporter().start(
        "pull",
        Some(todo.iter().map(|w| w.size).sum()),
        crate::report::Unit::Bytes,
    );
    let results: Vec<(ObjectId, Result<u64>)> = stream::iter(todo)
        .map(|want| {
            let bar = &bar;
            async move {
                // The bar moves as the bytes land (a 2 GiB model is not one jump).
                let r = fetch_object(scope, store, remote, &want, bar.as_ref()).await;
                (want.id, r)
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    bar.finish();
    let mut pulled = Vec::new();
    for (id, r) in results {
        match r {
            Ok(n) => {
                report.objects += 1;
                report.bytes += n;
                pulled.push(id);
            }
            Err(e) => report.failed.push((id.to_string(), e.to_string())),
        }
    }
    for (id, (_, sha, _)) in &wanted {
        if let Some(sha) = sha.filter(|_| pulled.contains(id)) {
            store.ensure_alias(&sha, id)?;
            report.aliases += 1;
        }
    }
    // Their sources.
    for id in &pulled {
        let prefix = format!("sources/{}/{}.", &id.hex()[..2], id.hex());
        // A range of the sorted listing, not a scan of it: a scan per object made a pull of
        // a 20k-object tree 20k x 20k string comparisons.
        let named = have
            .range(prefix.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix));
        for rel in named {
            if let Some(b) = remote
                .client
                .get(&remote.name(rel), MAX_SMALL_BYTES)
                .await?
            {
                let url = String::from_utf8_lossy(&b).trim().to_string();
                if !url.is_empty() {
                    store.add_source(id, &url)?;
                    report.sources += 1;
                }
            }
        }
    }
    // Trees last, once every object they name is in the store and durable.
    store.sync()?;
    for (id, m) in trees {
        let missing = m.objects().iter().any(|(o, _, _)| !store.has_object(o));
        if missing {
            report.failed.push((
                format!("tree {id}"),
                "not published: some of its objects could not be pulled".into(),
            ));
            continue;
        }
        let (got, _) = store.put_tree(&m)?;
        if got != id {
            report
                .failed
                .push((format!("tree {id}"), format!("stored as {got}")));
            continue;
        }
        report.trees += 1;
    }
    for (g, t) in recorded {
        if store.has_tree(&t) {
            store.record_git_tree(&g.repo, &g.commit, &g.excludes, t)?;
        }
    }
    Ok(())
}

/// The object an alias in the bucket names.
async fn read_alias(
    remote: &Remote,
    have: &BTreeMap<String, Listed>,
    sha: &Sha256,
) -> Result<Option<ObjectId>> {
    let rel = alias_rel(sha);
    if !have.contains_key(&rel) {
        return Ok(None);
    }
    let Some(b) = remote
        .client
        .get(&remote.name(&rel), MAX_SMALL_BYTES)
        .await?
    else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(&b).trim().parse().ok())
}

/// A manifest from the bucket, verified: its BLAKE3 is `id`, and it parses.
async fn fetch_tree(remote: &Remote, rel: &str, id: &ObjectId) -> Result<Manifest> {
    let name = remote.name(rel);
    let bytes = remote
        .client
        .get(&name, MAX_MANIFEST_BYTES)
        .await?
        .ok_or_else(|| Error::NotFound(remote.client.gs_uri(&name)))?;
    let actual = ObjectId(*blake3::hash(&bytes).as_bytes());
    if actual != *id {
        return Err(crate::store::Error::Mismatch {
            what: remote.client.gs_uri(&name),
            expected: id.to_string(),
            actual: actual.to_string(),
        }
        .into());
    }
    Ok(Manifest::parse(&bytes, &id.to_string())?)
}

/// An object `pull` must bring: its id, size, expected SHA-256, the mode to store it with and
/// its name under the prefix.
struct Wanted {
    id: ObjectId,
    size: u64,
    sha: Option<Sha256>,
    exec: bool,
    rel: String,
}

/// An object from the bucket into the store, published only if its BLAKE3 is `id`, its size
/// `size` and (when given) its SHA-256 `sha`.
async fn fetch_object<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: &'scope Store,
    remote: &Remote,
    want: &Wanted,
    bar: &dyn crate::report::Progress,
) -> Result<u64> {
    let Wanted {
        id,
        size,
        sha,
        exec,
        rel,
    } = want;
    let (id, size, sha, exec) = (*id, *size, *sha, *exec);
    let name = remote.name(rel);
    let uri = remote.client.gs_uri(&name);
    // Streamed straight into the store's temp file by a thread of this scope, hashed as it
    // lands and published only if it checks out: each byte written once (it used to go to an
    // unnamed file first, then be read back and copied through the checked put).
    let (tx, rx) = std::sync::mpsc::sync_channel::<crate::http::Chunk>(64);
    let (done, stored) = tokio::sync::oneshot::channel();
    let shown = uri.clone();
    scope.spawn(move || {
        let mut reader = crate::http::ChannelReader::new(rx);
        let _ = done.send(store_checked(
            store,
            &mut reader,
            &shown,
            &id,
            size,
            sha,
            exec,
        ));
    });
    let mut sink = crate::http::ChannelWriter(tx);
    let got = {
        let mut counted = crate::report::ProgressWrite::new(&mut sink, bar);
        remote.client.get_into(&name, size, &mut counted).await
    };
    match got {
        Ok(true) => drop(sink),
        // The store thread is told, so it drops its temp file rather than publish it.
        Ok(false) => {
            let _ = sink.0.send(Err("not in the bucket".into()));
            return Err(Error::NotFound(uri));
        }
        Err(e) => {
            // A store thread that stopped first (a full disk) holds the cause.
            if sink.0.send(Err(e.to_string())).is_err() {
                if let Ok(Err(cause)) = stored.await {
                    return Err(cause);
                }
            }
            return Err(e.into());
        }
    }
    stored
        .await
        .map_err(|_| Error::Gcs(gcs::Error::Config("the store's thread ended".into())))?
}

/// A downloaded object (read from `src`, from `uri`) into the store (executable when `exec`),
/// published only if its BLAKE3 is `id`, its size `size` and (when given) its SHA-256 `sha`.
fn store_checked(
    store: &Store,
    src: &mut dyn std::io::Read,
    uri: &str,
    id: &ObjectId,
    size: u64,
    sha: Option<Sha256>,
    exec: bool,
) -> Result<u64> {
    let check = |d: &crate::store::Digests| -> crate::store::Result<()> {
        let mismatch = |expected: String, actual: String| crate::store::Error::Mismatch {
            what: uri.to_string(),
            expected,
            actual,
        };
        if d.b3 != *id {
            return Err(mismatch(id.to_string(), d.b3.to_string()));
        }
        if d.size != size {
            return Err(mismatch(
                format!("{size} bytes"),
                format!("{} bytes", d.size),
            ));
        }
        if let (Some(want), Some(got)) = (sha, d.sha256) {
            if want != got {
                return Err(mismatch(want.to_string(), got.to_string()));
            }
        }
        Ok(())
    };
    let put = store.put_reader_checked(src, exec, sha.is_some(), Path::new(uri), &check)?;
    Ok(put.digests.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls() {
        assert_eq!(
            parse_url("gs://b-1/a/b/").unwrap(),
            ("b-1".to_string(), "a/b".to_string())
        );
        assert_eq!(
            parse_url("gs://bucket").unwrap(),
            ("bucket".to_string(), String::new())
        );
        assert!(parse_url("s3://bucket/x").is_err());
        assert!(parse_url("gs:///x").is_err());
        assert!(parse_url("gs://b/../x").is_err());
    }

    #[test]
    fn names_follow_the_store_layout() {
        let id: ObjectId = "b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
            .parse()
            .unwrap();
        assert_eq!(
            object_rel(&id),
            "objects/b3/af/1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert!(tree_rel(&id).starts_with("trees/b3/af/"));
        let src = source_rel(&id, "https://example.com/x");
        assert!(src.starts_with("sources/af/af1349"), "{src}");
        assert_eq!(src.rsplit('.').next().unwrap().len(), 16);
    }
}
