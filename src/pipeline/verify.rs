//! `verify LOCK DEST`: is this ComfyUI folder what the lockfile says, and if not, make it so.
//!
//! DEST is compared with the lock's version tree ([`compose`]) through the stat cache,
//! so unchanged files are not read (`full` rehashes them all). With `fix`, whatever the store
//! lacks is fetched first (unless offline), then missing and corrupt files are restored from
//! the store: a materialized DEST is switched or repaired like `materialize` does, any other
//! folder (a ComfyUI install locked in place) is repaired in place without a marker.

use super::fetch::{fetch_lock, FetchOptions, FetchReport};
use super::materialize::place_env_with;
use super::version::{compose, Parts, Version, VENV_DIR};
use crate::lockfile::{Lockfile, Part};
use crate::pipeline::error::Result;
use crate::place::{
    self, status_against, Layout, LinkMode, LinkPolicy, Marked, MaterializeReport, PrefixRule,
    StatusReport,
};
use crate::store::{Manifest, Store};
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
    /// Parts that could not be checked: the store lacks their tree.
    pub unchecked: Vec<String>,
    pub fetched: Option<FetchReport>,
    pub repaired: Option<MaterializeReport>,
    /// The check after the fix, when there was one.
    pub after: Option<StatusReport>,
}

/// Check DEST against `lock`, and repair it with `opts.fix`.
pub fn verify(
    store: &Store,
    lock: &Lockfile,
    dest: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let dest_abs = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let Marked { marker, layout } = place::read_marker(&dest_abs)?;
    let v = Verifier {
        store,
        lock,
        dest,
        dest_abs,
        layout,
        opts,
    };
    // 1. Check DEST, and an environment placed outside it, against the lock's version.
    let version = v.compose()?;
    let mut found = status_against(store, dest, &version.manifest, opts.full)?;
    let outside = v.check_outside(&mut found)?;
    let mut report = v.report(found, &version, outside.as_ref());
    if !broken(&report.found, &report.unchecked) {
        return Ok(report);
    }
    if !opts.fix {
        report.state = VerifyState::Broken;
        return Ok(report);
    }
    // 2. Fetch what the store lacks, restore what is missing or corrupt, check again.
    let version = v.fetch_if_needed(version, &mut report)?;
    report.repaired = Some(v.restore(&version, marker.map(|m| m.policy))?);
    let after = v.check_again(&version, outside.as_ref())?;
    report.state = if broken(&after, &version.missing) {
        VerifyState::Broken
    } else {
        VerifyState::Fixed
    };
    report.unchecked = version.missing;
    report.after = Some(after);
    Ok(report)
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

    /// 1c. The report of the check: user files that belong beside a version left out of
    ///     `extra`, models the lock does not list picked out.
    fn report(
        &self,
        mut found: StatusReport,
        version: &Version,
        outside: Option<&Outside>,
    ) -> VerifyReport {
        // Repos' own `.git` folders and byte-code caches are expected beside a version.
        found
            .extra
            .retain(|p| !crate::store::is_cache_path(p) && !p.split('/').any(|c| c == ".git"));
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
        if let Some(Outside { dir, env: None, .. }) = outside {
            unchecked.push(format!("python ({})", dir.display()));
        }
        VerifyReport {
            state: VerifyState::Clean,
            lock: self.lock.tag.clone(),
            dest: self.dest.to_path_buf(),
            extra_models,
            unchecked,
            found,
            fetched: None,
            repaired: None,
            after: None,
        }
    }

    /// 2a. The store must hold every tree and every object the repair writes: fetch (and
    ///     compose again) if it does not.
    fn fetch_if_needed(&self, version: Version, report: &mut VerifyReport) -> Result<Version> {
        let needs_fetch = !version.missing.is_empty()
            || version
                .manifest
                .objects()
                .iter()
                .any(|(id, _, _)| !self.store.has_object(id));
        if !needs_fetch {
            return Ok(version);
        }
        report.fetched = Some(fetch_lock(self.store, self.lock, &self.opts.fetch)?);
        self.compose()
    }

    /// 2b. Write what the store can supply (what it cannot stays reported as broken): a
    ///     materialized DEST is switched or repaired with its own policy, any other folder
    ///     is repaired in place.
    fn restore(&self, version: &Version, policy: Option<LinkPolicy>) -> Result<MaterializeReport> {
        let mut placeable = version.manifest.clone();
        placeable.entries.retain(|e| match &e.node {
            crate::store::Node::File { id, .. } => self.store.has_object(id),
            _ => true,
        });
        let (tree, _) = self.store.put_tree(&placeable)?;
        Ok(match policy {
            Some(policy) => place::materialize(self.store, &tree, self.dest, &policy),
            None => place::repair_in_place(self.store, &tree, self.dest, &default_policy()),
        }?)
    }

    /// 2c. The check after the fix; an environment outside DEST that was broken is placed
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
                let policy = place::read_marker(dir)?
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
