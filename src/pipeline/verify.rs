//! `verify LOCK DEST`: is this ComfyUI folder what the lockfile says, and if not, make it so.
//!
//! DEST is compared with the lock's version tree ([`compose`]) through the stat cache,
//! so unchanged files are not read (`full` rehashes them all). A source part whose tree the
//! store lacks (ComfyUI, a custom node) is checked by hashing its folder in DEST: a tree id is
//! a hash, so comparing needs no stored object and writes none. With `fix`, whatever the store
//! lacks, except the parts found intact, is fetched (unless offline), then missing and
//! corrupt files are restored from the store: a materialized DEST
//! is switched or repaired like `materialize` does, any other folder (a ComfyUI install locked
//! in place), or a version the store cannot wholly supply, is repaired in place.

use super::fetch::{fetch_lock, FetchOptions, FetchReport};
use super::materialize::place_env_with;
use super::version::{compose, node_path, Parts, Version, EXTRA_MODEL_PATHS, VENV_DIR};
use crate::lockfile::{comfyui_excludes, Lockfile, Part};
use crate::pipeline::error::{IoContext, Result};
use crate::place::{
    self, status_against, status_against_scanned, Layout, LinkMode, LinkPolicy, Marked, Marker,
    MaterializeReport, PrefixRule, Scanned, StatusReport,
};
use crate::store::{Manifest, ObjectId, Store};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Rehash every file instead of trusting unchanged stat data.
    pub full: bool,
    /// Restore what is missing or corrupt.
    pub fix: bool,
    /// Parts to check, sources for `fix`, and whether the network may be used.
    pub fetch: FetchOptions,
}

/// The outcome, as the exit code tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyState {
    /// Nothing was wrong.
    Clean,
    /// Something was wrong and `fix` repaired all of it.
    Fixed,
    /// Something is still wrong (or could not be checked).
    Broken,
}

/// What `verify` found and did.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub state: VerifyState,
    pub lock: String,
    pub dest: PathBuf,
    /// The check before any fix.
    pub found: StatusReport,
    /// Model files under `models/` that the lock does not list.
    pub extra_models: Vec<String>,
    /// Parts that could not be checked: the store lacks their tree and DEST cannot be hashed
    /// against it (the environment).
    pub unchecked: Vec<String>,
    /// Source parts whose tree the store lacked, checked by hashing their folder in DEST.
    pub by_hash: Vec<HashedPart>,
    pub fetched: Option<FetchReport>,
    pub repaired: Option<MaterializeReport>,
    /// The check after the fix, when there was one.
    pub after: Option<StatusReport>,
}

/// What hashing a part in DEST found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartState {
    /// DEST gives the lock's id.
    Ok,
    /// DEST gives another id: a file was changed, added or removed.
    Modified,
    /// DEST does not have the part's folder (or file).
    Missing,
}

/// A source part (`comfyui`, `custom_nodes/NAME`) whose tree, or single file, the store
/// lacks, checked by its id: the lock's, and the one DEST gives.
#[derive(Clone, Debug, Serialize)]
pub struct HashedPart {
    pub part: String,
    pub state: PartState,
    pub expected: ObjectId,
    /// `None` when DEST does not have it.
    pub got: Option<ObjectId>,
    /// Its path under DEST ("" for ComfyUI at the top).
    #[serde(skip)]
    base: String,
    /// Top-level names left out of its tree (ComfyUI's data folders and venvs).
    #[serde(skip)]
    excludes: Vec<String>,
    /// A single-file node: the id is the file's, not a tree's.
    #[serde(skip)]
    file: bool,
}

impl HashedPart {
    /// Whether a path of DEST belongs to this part.
    fn owns(&self, path: &str) -> bool {
        if self.base.is_empty() {
            let top = path.split('/').next().unwrap_or("");
            !self.excludes.iter().any(|e| e == top)
        } else {
            path.strip_prefix(self.base.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
    }
}

/// Check DEST against `lock`, and repair it with `opts.fix`.
pub fn verify(
    store: &Store,
    lock: &Lockfile,
    dest: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    // A model the lock names by sha256 alone is checked by the blake3 the store knows for it.
    let completed = super::version::complete_models(store, lock)?;
    let lock = &completed;
    let dest_abs = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let Marked { marker, layout } = place::read_marker(store, &dest_abs)?;
    let v = Verifier {
        store,
        lock,
        dest,
        dest_abs,
        layout,
        opts,
    };
    // 1. Check DEST, and an environment placed outside it, against the lock's version; hash
    //    the parts the store lacks.
    // DEST is scanned while the version is composed (two threads).
    let (version, scanned) = rayon::join(|| v.compose(), || place::scan_ahead(dest));
    let version = version?;
    let (found, outside) = v.check(&version, Some(scanned?))?;
    let by_hash = v.hash_parts(&version.missing)?;
    let mut report = v.report(found, &version, outside.as_ref(), by_hash);
    if !report.is_broken() {
        return Ok(report);
    }
    if !opts.fix {
        report.state = VerifyState::Broken;
        return Ok(report);
    }
    // 2. Fetch what the store lacks and is not intact in DEST, name the files of parts that
    //    hashed different, restore what is missing or corrupt, check again.
    v.quarantine_changed(&version, &report)?;
    let version = v.fetch_if_needed(version, &mut report)?;
    v.name_files(&version, outside.as_ref(), &mut report)?;
    report.repaired = Some(v.restore(&version, marker.as_ref())?);
    let after = v.check_again(&version, outside.as_ref())?;
    let unchecked = report.not_intact(&version.missing);
    report.state = if broken(&after, &unchecked) {
        VerifyState::Broken
    } else {
        VerifyState::Fixed
    };
    report.unchecked = unchecked;
    report.after = Some(after);
    Ok(report)
}

impl VerifyReport {
    /// Whether the check found anything wrong, or could not check everything.
    fn is_broken(&self) -> bool {
        broken(&self.found, &self.unchecked)
            || self.by_hash.iter().any(|h| h.state != PartState::Ok)
    }

    /// The parts the store lacks (`missing`) less those DEST holds intact.
    fn not_intact(&self, missing: &[String]) -> Vec<String> {
        let intact = self.intact();
        missing
            .iter()
            .filter(|m| !intact.contains(m))
            .cloned()
            .collect()
    }

    /// The parts checked by hash and found intact.
    fn intact(&self) -> Vec<String> {
        self.by_hash
            .iter()
            .filter(|h| h.state == PartState::Ok)
            .map(|h| h.part.clone())
            .collect()
    }
}

/// Whether a check found anything wrong, or could not check everything.
fn broken(r: &StatusReport, unchecked: &[String]) -> bool {
    !r.is_clean() || !unchecked.is_empty()
}

/// One `verify` of DEST against a lock, laid out as DEST's marker says (else the default).
struct Verifier<'a> {
    store: &'a Store,
    lock: &'a Lockfile,
    dest: &'a Path,
    dest_abs: PathBuf,
    layout: Layout,
    opts: &'a VerifyOptions,
}

/// An environment placed with `--venv DIR`, checked where it is.
struct Outside {
    dir: PathBuf,
    /// What it should hold; `None` when the store or the machine cannot supply it.
    env: Option<Manifest>,
    /// It was found incomplete or damaged (or could not be checked).
    broken: bool,
}

impl Verifier<'_> {
    fn wants(&self, p: Part) -> bool {
        self.opts.fetch.wants(p)
    }

    /// The lock's version tree as DEST was laid out.
    fn compose(&self) -> Result<Version> {
        let parts = parts_for(
            self.store,
            self.lock,
            &self.dest_abs,
            &self.layout,
            self.wants(Part::Python),
        );
        compose(self.store, self.lock, |p| self.wants(p), &parts)
    }

    /// 1a. DEST against `version`, and the environment placed outside it.
    fn check(
        &self,
        version: &Version,
        scanned: Option<Scanned>,
    ) -> Result<(StatusReport, Option<Outside>)> {
        let (manifest, full) = (&version.manifest, self.opts.full);
        let mut found = match scanned {
            Some(s) => status_against_scanned(self.store, s, manifest, full)?,
            None => status_against(self.store, self.dest, manifest, full)?,
        };
        let outside = self.check_outside(&mut found)?;
        Ok((found, outside))
    }

    /// 1b. The environment placed outside DEST, if any: checked, and folded into `found`.
    fn check_outside(&self, found: &mut StatusReport) -> Result<Option<Outside>> {
        let wanted = self.wants(Part::Python) && self.lock.python.is_some();
        let Some(dir) = self.layout.venv.clone().filter(|_| wanted) else {
            return Ok(None);
        };
        let env = env_for(self.store, self.lock, &dir, &self.layout);
        let broken = match &env {
            Some(env) => {
                let r = status_against(self.store, &dir, env, self.opts.full)?;
                let broken = !r.is_clean();
                merge(found, r, &dir);
                broken
            }
            None => true,
        };
        Ok(Some(Outside { dir, env, broken }))
    }

    /// 1c. The source parts among `missing` (those whose tree or file the store lacks), each
    ///     hashed in DEST and compared with the lock.
    fn hash_parts(&self, missing: &[String]) -> Result<Vec<HashedPart>> {
        let lock = self.lock;
        let mut parts = Vec::new();
        if let Some(tree) = lock
            .comfyui
            .tree
            .filter(|_| missing.iter().any(|m| m == "comfyui"))
        {
            let mut excludes = comfyui_excludes();
            if self.layout.models_dir.is_some() {
                // Ours, written for the shared models folder: not ComfyUI's.
                excludes.push(EXTRA_MODEL_PATHS.into());
            }
            parts.push(part("comfyui".into(), String::new(), excludes, tree, false));
        }
        for n in &lock.custom_nodes {
            let label = format!("custom_nodes/{}", n.name);
            let id = n.file.map(|f| (f, true)).or(n.tree.map(|t| (t, false)));
            if let Some((id, file)) = id.filter(|_| missing.contains(&label)) {
                parts.push(part(label, node_path(n), Vec::new(), id, file));
            }
        }
        for p in &mut parts {
            p.got = self.hash_part(p)?;
            p.state = match p.got {
                None => PartState::Missing,
                Some(got) if got == p.expected => PartState::Ok,
                Some(_) => PartState::Modified,
            };
        }
        // Outside a git checkout, ComfyUI's tracked files inside the data folders
        // (`models/configs/*.yaml`, `custom_nodes/websocket_image_save.py`, …) cannot be told
        // from the user's files there unless DEST's marker lists them (materialize records
        // them). Without that list a difference says nothing: the part stays unchecked, and
        // its tree, once fetched, decides.
        let vouched =
            crate::git::is_repo_root(self.dest) || !self.layout.source_data_files.is_empty();
        parts.retain(|p| p.part != "comfyui" || vouched || p.state == PartState::Ok);
        Ok(parts)
    }

    /// The id DEST gives a part (with the same selection and excludes `lock` used), or
    /// `None` when DEST does not have it. Nothing is written to the store.
    fn hash_part(&self, p: &HashedPart) -> Result<Option<ObjectId>> {
        let path = self.dest.join(&p.base);
        Ok(if p.file && path.is_file() {
            Some(crate::store::b3_file(&path).ctx("read", &path)?.0)
        } else if !p.file && path.is_dir() {
            let rehash = self.opts.full;
            // ComfyUI's own files in the data folders, as materialize recorded them.
            let also: &[String] = if p.part == "comfyui" {
                &self.layout.source_data_files
            } else {
                &[]
            };
            Some(crate::git::checkout_tree_id(
                self.store,
                &path,
                &p.excludes,
                also,
                rehash,
            )?)
        } else {
            None
        })
    }

    /// 1d. The report of the check: user files that belong beside a version, and the files
    ///     of parts checked by hash, left out of `extra`; models the lock does not list
    ///     picked out.
    fn report(
        &self,
        mut found: StatusReport,
        version: &Version,
        outside: Option<&Outside>,
        by_hash: Vec<HashedPart>,
    ) -> VerifyReport {
        // Repos' own `.git` folders and byte-code caches are expected beside a version.
        found.extra.retain(|p| {
            !crate::store::is_cache_path(p)
                && !p.split('/').any(|c| c == ".git")
                && !by_hash.iter().any(|h| h.owns(p))
        });
        let extra_models: Vec<String> = if self.wants(Part::Models) {
            found
                .extra
                .iter()
                .filter(|p| {
                    p.starts_with("models/")
                        && !p.split('/').any(crate::pipeline::lock::not_a_model)
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let mut unchecked = version.missing.clone();
        unchecked.retain(|m| !by_hash.iter().any(|h| h.part == *m));
        if let Some(Outside { dir, env: None, .. }) = outside {
            unchecked.push(format!("python ({})", dir.display()));
        }
        VerifyReport {
            state: VerifyState::Clean,
            lock: self.lock.tag.clone(),
            dest: self.dest.to_path_buf(),
            extra_models,
            unchecked,
            by_hash,
            found,
            fetched: None,
            repaired: None,
            after: None,
        }
    }

    /// 2b. When a part that hashed different could be fetched, check DEST again before the
    ///     repair, so the report names its files and not only the part.
    fn name_files(
        &self,
        version: &Version,
        outside: Option<&Outside>,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let fetched = report
            .by_hash
            .iter()
            .any(|p| p.state != PartState::Ok && !version.missing.contains(&p.part));
        if !fetched {
            return Ok(());
        }
        let (found, _) = self.check(version, None)?;
        let again = self.report(found, version, outside, Vec::new());
        report.found = again.found;
        report.extra_models = again.extra_models;
        Ok(())
    }

    /// 2a. The store must hold every tree and every object the repair writes: fetch (and
    ///     compose again) if it does not, leaving out the parts DEST holds intact.
    /// 2a. Store objects changed through a hardlink in DEST: checking them moves them to
    ///     quarantine, so the fetch below downloads them again (where the lock has sources)
    ///     and the restore replaces DEST's changed copy with a file of the sound object.
    fn quarantine_changed(&self, version: &Version, report: &VerifyReport) -> Result<()> {
        let changed: std::collections::HashSet<&str> = report
            .found
            .store_objects_changed
            .iter()
            .map(String::as_str)
            .collect();
        for e in &version.manifest.entries {
            if let crate::store::Node::File { id, exec, .. } = &e.node {
                if changed.contains(e.path.as_str()) {
                    match self.store.checked_object(id, *exec) {
                        Ok(_)
                        | Err(crate::store::Error::Corrupt { .. })
                        | Err(crate::store::Error::NotFound(_)) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        }
        Ok(())
    }

    fn fetch_if_needed(&self, version: Version, report: &mut VerifyReport) -> Result<Version> {
        let needs_fetch = !report.not_intact(&version.missing).is_empty()
            || version
                .manifest
                .objects()
                .iter()
                .any(|(id, _, _)| !self.store.has_object(id));
        if !needs_fetch {
            return Ok(version);
        }
        let opts = FetchOptions {
            intact: report.intact(),
            ..self.opts.fetch.clone()
        };
        report.fetched = Some(fetch_lock(self.store, self.lock, &opts)?);
        self.compose()
    }

    /// 2c. Write what the store can supply (what it cannot stays reported as broken): a
    ///     materialized DEST is switched or repaired with its own policy when the store holds
    ///     the whole version and the tree DEST held; anything else is repaired in place, which
    ///     removes nothing (a partial switch would remove what the store cannot supply).
    fn restore(&self, version: &Version, marker: Option<&Marker>) -> Result<MaterializeReport> {
        let mut placeable = version.manifest.clone();
        placeable.entries.retain(|e| match &e.node {
            crate::store::Node::File { id, .. } => self.store.has_object(id),
            _ => true,
        });
        let whole =
            version.missing.is_empty() && placeable.entries.len() == version.manifest.entries.len();
        let (tree, _) = self.store.put_tree(&placeable)?;
        Ok(match marker {
            Some(m) if whole && self.store.has_tree(&m.tree) => {
                place::materialize(self.store, &tree, self.dest, &m.policy)
            }
            Some(m) => place::repair_in_place(self.store, &tree, self.dest, &m.policy),
            None => place::repair_in_place(self.store, &tree, self.dest, &default_policy()),
        }?)
    }

    /// 2d. The check after the fix; an environment outside DEST that was broken is placed
    ///     again first, with the policy it was made with.
    fn check_again(&self, version: &Version, outside: Option<&Outside>) -> Result<StatusReport> {
        let mut after = status_against(self.store, self.dest, &version.manifest, false)?;
        if let Some(Outside {
            dir,
            env: Some(env),
            broken,
        }) = outside
        {
            if *broken {
                let policy = place::read_marker(self.store, dir)?
                    .marker
                    .map_or_else(|| LinkPolicy::only(LinkMode::Auto), |m| m.policy);
                place_env_with(self.store, env, dir, &policy)?;
            }
            merge(
                &mut after,
                status_against(self.store, dir, env, false)?,
                dir,
            );
        }
        Ok(after)
    }
}

/// A part to hash, not hashed yet.
fn part(
    label: String,
    base: String,
    excludes: Vec<String>,
    id: ObjectId,
    file: bool,
) -> HashedPart {
    HashedPart {
        part: label,
        state: PartState::Missing,
        expected: id,
        got: None,
        base,
        excludes,
        file,
    }
}

/// The parts of the version at DEST as it was laid out: the environment rendered for
/// DEST/venv on the interpreter the marker names (else one that fits), the shared models
/// folder. An environment that cannot be rendered is left out, and reported unchecked.
fn parts_for(
    store: &Store,
    lock: &Lockfile,
    dest: &Path,
    layout: &Layout,
    want_env: bool,
) -> Parts {
    let inside = want_env && layout.venv.is_none();
    Parts {
        env: if inside {
            env_for(store, lock, &dest.join(VENV_DIR), layout)
        } else {
            None
        },
        env_elsewhere: layout.venv.is_some(),
        models_dir: layout.models_dir.clone(),
    }
}

/// The environment as it should be at `dir`: the stored tree the marker names (else the one
/// for the lock's wheels), rendered for the interpreter the marker names (else one that fits).
/// `None`, with a warning, when the store or the machine cannot supply it.
fn env_for(store: &Store, lock: &Lockfile, dir: &Path, layout: &Layout) -> Option<Manifest> {
    let py = crate::python::EnvSpec::from(lock.python.as_ref()?);
    let py = &py;
    let env = (|| -> Result<Option<Manifest>> {
        let placed = layout.env.filter(|t| store.has_tree(t));
        let Some(tree) =
            placed.map_or_else(|| crate::python::find_env(store, py), |t| Ok(Some(t)))?
        else {
            return Ok(None);
        };
        let base = match &layout.python {
            Some(p) => crate::python::interpreter::probe_cached(store, p)?,
            None => crate::python::interpreter::find_for(store, py, None)?,
        };
        let manifest = store.read_tree(&tree)?;
        Ok(Some(crate::python::render(store, &manifest, dir, &base)?))
    })();
    env.unwrap_or_else(|e| {
        tracing::warn!("environment not checked: {e}");
        None
    })
}

/// Fold the check of an environment placed outside DEST into DEST's, its paths prefixed by
/// its folder.
fn merge(into: &mut StatusReport, other: StatusReport, dir: &Path) {
    let p = |v: Vec<String>| v.into_iter().map(move |x| format!("{}/{x}", dir.display()));
    into.complete &= other.complete;
    into.entries += other.entries;
    into.ok += other.ok;
    into.rehashed += other.rehashed;
    into.missing.extend(p(other.missing));
    into.modified.extend(p(other.modified));
    into.store_objects_changed
        .extend(p(other.store_objects_changed));
}

/// How a repair places files in a folder comfystore did not make: source and environment
/// files as editable reflinks or copies; models as reflinks, else hardlinks (read-only, shared
/// with the store, as `lock` adopted them), else copies.
fn default_policy() -> LinkPolicy {
    LinkPolicy {
        default: LinkMode::Reflink,
        rules: vec![PrefixRule {
            prefix: "models".into(),
            mode: LinkMode::Auto,
        }],
    }
}
