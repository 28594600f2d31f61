//! `verify LOCK DEST`: is this ComfyUI folder what the lockfile says, and if not, make it so.
//!
//! DEST is compared with the lock's version tree ([`compose`]) through the stat cache,
//! so unchanged files are not read (`full` rehashes them all). With `fix`, whatever the store
//! lacks is fetched first (unless offline), then missing and corrupt files are restored from
//! the store: a materialized DEST is switched or repaired like `materialize` does, any other
//! folder (a ComfyUI install locked in place) is repaired in place without a marker.

use super::fetch::{fetch_lock, FetchOptions, FetchReport};
use super::materialize::place_env_with;
use super::version::{compose, Parts, VENV_DIR};
use crate::lockfile::{Lockfile, Part};
use crate::pipeline::error::Result;
use crate::place::{
    self, status_against, Layout, LinkMode, LinkPolicy, Marker, MaterializeReport, PrefixRule,
    StatusReport,
};
use crate::store::Store;
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
    let wants = |p: Part| opts.fetch.wants(p);
    let dest_abs = std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf());
    let marker = Marker::read(&dest_abs)?;
    let layout = marker
        .as_ref()
        .and_then(|m| m.layout.clone())
        .unwrap_or_default();
    let parts = parts_for(store, lock, &dest_abs, &layout, wants(Part::Python));
    let version = compose(store, lock, wants, &parts)?;
    let mut found = status_against(store, dest, &version.manifest, opts.full)?;
    // An environment placed with `--venv DIR` is checked where it is.
    let outside = match (&layout.venv, wants(Part::Python) && lock.python.is_some()) {
        (Some(dir), true) => Some((dir.clone(), env_for(store, lock, dir, &layout))),
        _ => None,
    };
    let mut outside_broken = false;
    if let Some((dir, env)) = &outside {
        match env {
            Some(env) => {
                let r = status_against(store, dir, env, opts.full)?;
                outside_broken = !r.is_clean();
                merge(&mut found, r, dir);
            }
            None => outside_broken = true,
        }
    }
    // Repos' own `.git` folders and byte-code caches are expected beside a version.
    found
        .extra
        .retain(|p| !crate::store::is_cache_path(p) && !p.split('/').any(|c| c == ".git"));
    let extra_models: Vec<String> = if wants(Part::Models) {
        found
            .extra
            .iter()
            .filter(|p| {
                p.starts_with("models/") && !p.split('/').any(crate::pipeline::lock::not_a_model)
            })
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let mut report = VerifyReport {
        state: VerifyState::Clean,
        lock: lock.tag.clone(),
        dest: dest.to_path_buf(),
        extra_models,
        unchecked: version.missing.clone(),
        found,
        fetched: None,
        repaired: None,
        after: None,
    };
    let broken = |r: &StatusReport, unchecked: &[String]| !r.is_clean() || !unchecked.is_empty();
    if let Some((dir, None)) = &outside {
        report.unchecked.push(format!("python ({})", dir.display()));
    }
    if !broken(&report.found, &report.unchecked) {
        return Ok(report);
    }
    if !opts.fix {
        report.state = VerifyState::Broken;
        return Ok(report);
    }
    // The store must hold every tree and every object the repair writes.
    let needs_fetch = !version.missing.is_empty()
        || version
            .manifest
            .objects()
            .iter()
            .any(|(id, _, _)| !store.has_object(id));
    let version = if needs_fetch {
        report.fetched = Some(fetch_lock(store, lock, &opts.fetch)?);
        let parts = parts_for(store, lock, &dest_abs, &layout, wants(Part::Python));
        compose(store, lock, wants, &parts)?
    } else {
        version
    };
    // Only write what the store can supply; what it cannot stays reported as broken.
    let mut placeable = version.manifest.clone();
    placeable.entries.retain(|e| match &e.node {
        crate::store::Node::File { id, .. } => store.has_object(id),
        _ => true,
    });
    let (tree, _) = store.put_tree(&placeable)?;
    report.repaired = Some(match marker {
        Some(m) => place::materialize(store, &tree, dest, &m.policy)?,
        None => place::repair_in_place(store, &tree, dest, &default_policy())?,
    });
    let mut after = status_against(store, dest, &version.manifest, false)?;
    if let Some((dir, Some(env))) = &outside {
        if outside_broken {
            let policy = Marker::read(dir)?.map(|m| m.policy).unwrap_or(LinkPolicy {
                default: LinkMode::Auto,
                rules: Vec::new(),
            });
            place_env_with(store, env, dir, &policy)?;
        }
        merge(&mut after, status_against(store, dir, env, false)?, dir);
    }
    report.state = if broken(&after, &version.missing) {
        VerifyState::Broken
    } else {
        VerifyState::Fixed
    };
    report.unchecked = version.missing;
    report.after = Some(after);
    Ok(report)
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
fn env_for(
    store: &Store,
    lock: &Lockfile,
    dir: &Path,
    layout: &Layout,
) -> Option<crate::store::Manifest> {
    let py = crate::python::EnvSpec::from(lock.python.as_ref()?);
    let py = &py;
    let env = (|| -> Result<Option<crate::store::Manifest>> {
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
