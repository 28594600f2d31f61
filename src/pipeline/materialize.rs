//! `materialize LOCK DEST`: a lockfile to a ComfyUI install that runs.
//!
//! In order, and nothing is written to DEST before the last step:
//! 1. fetch what the store lacks (git trees, wheels, models), or with `--offline` list it
//!    and stop;
//! 2. find the environment (the lock's tree, or one installed earlier for the same wheels),
//!    else install it once from the store's wheels;
//! 3. render the environment's path-bearing files for DEST/venv and this machine's
//!    interpreter, compose the version tree, and materialize it (switching DEST in place
//!    when it held another version);
//! 4. place shared models (`--models-dir`) without removing anything there.

use super::fetch::{fetch_lock, FetchOptions, FetchReport};
use super::version::{compose, shared_model_path, Parts, MODELS_DIR, VENV_DIR};
use crate::lockfile::{Lockfile, Part};
use crate::pipeline::error::{Error, IoContext, Result};
use crate::place::{self, Layout, LinkMode, LinkPolicy, Marker, MaterializeReport, PrefixRule};
use crate::python::{self, EnvReport, EnvSpec, Interpreter, Resolver};
use crate::store::{Entry, Manifest, Node, Store};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How to lay a lock out.
#[derive(Clone, Debug)]
pub struct LockOptions {
    /// Put the environment here instead of DEST/venv.
    pub venv: Option<PathBuf>,
    /// Put models (those under `models/`) in this shared folder and point ComfyUI at it.
    pub models_dir: Option<PathBuf>,
    /// Source trees (ComfyUI, nodes): editable, so reflink, else copy.
    pub link: LinkMode,
    /// The environment: reflink, else hardlink (read-only use).
    pub venv_link: LinkMode,
    /// Models: reflink, else hardlink, else symlink.
    pub models_link: LinkMode,
    /// More PREFIX=MODE rules; they win over the three classes.
    pub rules: Vec<PrefixRule>,
    /// The base interpreter (path, program or version); found by the lock's version if unset.
    pub python: Option<String>,
    /// Which installer builds an environment the store lacks.
    pub installer: Resolver,
    pub fetch: FetchOptions,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            venv: None,
            models_dir: None,
            link: LinkMode::Reflink,
            venv_link: LinkMode::Auto,
            models_link: LinkMode::Share,
            rules: Vec::new(),
            python: None,
            installer: Resolver::Auto,
            fetch: FetchOptions::default(),
        }
    }
}

impl LockOptions {
    /// The link policy of the version at DEST: one rule per class, then the user's rules.
    pub fn policy(&self) -> LinkPolicy {
        let mut rules = vec![
            PrefixRule {
                prefix: VENV_DIR.into(),
                mode: self.venv_link,
            },
            PrefixRule {
                prefix: MODELS_DIR.into(),
                mode: self.models_link,
            },
        ];
        rules.extend(self.rules.iter().cloned());
        LinkPolicy {
            default: self.link,
            rules,
        }
    }
}

/// What `materialize LOCK DEST` did.
#[derive(Clone, Debug, Serialize)]
pub struct LockReport {
    pub lock: String,
    #[serde(flatten)]
    pub version: MaterializeReport,
    pub fetched: FetchReport,
    /// The environment, and whether it was installed now.
    pub env: Option<EnvReport>,
    /// The base interpreter the environment runs on.
    pub python: Option<PathBuf>,
    /// The environment placed outside DEST (`--venv`).
    pub venv: Option<MaterializeReport>,
    /// Models placed in the shared folder (`--models-dir`).
    pub models: Option<MaterializeReport>,
}

/// Make DEST the version `lock` pins. See the module docs for the order of things.
pub fn materialize_lock(
    store: &Store,
    lock: &Lockfile,
    dest: &Path,
    opts: &LockOptions,
) -> Result<LockReport> {
    let dest_abs = std::path::absolute(dest).ctx("resolve", dest)?;
    let venv_dir = match &opts.venv {
        Some(v) => std::path::absolute(v).ctx("resolve", v)?,
        None => dest_abs.join(VENV_DIR),
    };
    let models_dir = match &opts.models_dir {
        Some(m) => Some(std::path::absolute(m).ctx("resolve", m)?),
        None => None,
    };

    let t0 = std::time::Instant::now();
    let phase =
        |what: &str| tracing::debug!("materialize {}: {what} after {:?}", lock.tag, t0.elapsed());
    // 1. Everything into the store first; stop before writing if anything is missing.
    let fetched = fetch_lock(store, lock, &opts.fetch)?;
    phase("fetch checked");
    if !fetched.failed.is_empty() {
        let lines: Vec<String> = fetched
            .failed
            .iter()
            .map(|(what, why)| format!("{what}: {why}"))
            .collect();
        return Err(Error::bad_input(
            dest,
            format!(
                "not written: {} part(s) of lock {} are not in the store and could not be fetched{}:\n  {}",
                lines.len(),
                lock.tag,
                if opts.fetch.http.offline { " (offline)" } else { "" },
                lines.join("\n  ")
            ),
        ));
    }

    // 2. The environment, found or installed once.
    let wants_env = opts.fetch.wants(Part::Python) && lock.python.is_some();
    let (env, base, rendered) = match (&lock.python, wants_env) {
        (Some(py), true) => {
            let py = EnvSpec::from(py);
            let base = python::interpreter::find_for(store, &py, opts.python.as_deref())?;
            phase("interpreter found");
            let (env, rendered) = rendered_env(store, &py, &venv_dir, &base, opts.installer)?;
            phase("environment rendered");
            (Some(env), Some(base), Some(rendered))
        }
        _ => (None, None, None),
    };

    // 3. The version at DEST.
    let elsewhere = opts.venv.is_some();
    let parts = Parts {
        env: if elsewhere { None } else { rendered.clone() },
        env_elsewhere: elsewhere,
        models_dir: models_dir.clone(),
    };
    let version = compose(store, lock, |p| opts.fetch.wants(p), &parts)?;
    if !version.missing.is_empty() {
        return Err(Error::bad_input(
            dest,
            format!(
                "not written: the store lacks {}",
                version.missing.join(", ")
            ),
        ));
    }
    let layout = Layout {
        venv: opts.venv.as_ref().map(|_| venv_dir.clone()),
        models_dir: models_dir.clone(),
        python: base.as_ref().map(|b| b.executable.clone()),
        env: env.as_ref().map(|e| e.tree),
    };
    let (tree, _) = store.put_tree(&version.manifest)?;
    phase("version composed");
    // An environment the previous version placed outside DEST, somewhere else than now.
    let old_venv = Marker::read(&dest_abs)
        .ok()
        .flatten()
        .and_then(|m| m.layout.and_then(|l| l.venv))
        .filter(|old| layout.venv.as_ref() != Some(old));
    let report = place::materialize_laid_out(
        store,
        &tree,
        &version.manifest,
        dest,
        &opts.policy(),
        &layout,
    )?;
    phase("version placed");

    // The environment outside DEST is a materialized folder of its own.
    let venv = match (elsewhere, &rendered) {
        (true, Some(env)) => Some(place_env(store, env, &venv_dir, opts.venv_link)?),
        _ => None,
    };
    if let Some(old) = old_venv.filter(|o| Marker::read(o).is_ok_and(|m| m.is_some())) {
        let r = place::remove(store, &old, false)?;
        tracing::info!(
            "removed the previous environment at {} ({} entries; {} kept)",
            old.display(),
            r.removed_entries,
            r.kept.len()
        );
    }

    // 4. Shared models: added where missing or damaged, never removed (other versions use
    //    the same folder).
    let models = match &models_dir {
        Some(dir) if opts.fetch.wants(Part::Models) => {
            let manifest = shared_models(lock);
            let (tree, _) = store.put_tree(&manifest)?;
            std::fs::create_dir_all(dir).ctx("create", dir)?;
            Some(place::repair_in_place(
                store,
                &tree,
                dir,
                &LinkPolicy {
                    default: opts.models_link,
                    rules: Vec::new(),
                },
            )?)
        }
        _ => None,
    };
    Ok(LockReport {
        lock: lock.tag.clone(),
        version: report,
        fetched,
        env,
        python: base.map(|b| b.executable),
        venv,
        models,
    })
}

/// Materialize an environment tree (already rendered for `dir`) at `dir`.
pub fn place_env(
    store: &Store,
    env: &Manifest,
    dir: &Path,
    mode: LinkMode,
) -> Result<MaterializeReport> {
    place_env_with(
        store,
        env,
        dir,
        &LinkPolicy {
            default: mode,
            rules: Vec::new(),
        },
    )
}

/// [`place_env`] with a whole link policy (a repair keeps the one the folder was made with).
pub fn place_env_with(
    store: &Store,
    env: &Manifest,
    dir: &Path,
    policy: &LinkPolicy,
) -> Result<MaterializeReport> {
    let (tree, _) = store.put_tree(env)?;
    Ok(place::materialize(store, &tree, dir, policy)?)
}

/// Render the environment of `py` for a venv at `dir` on `base`, installing it first if the
/// store lacks it.
pub fn rendered_env(
    store: &Store,
    py: &EnvSpec,
    dir: &Path,
    base: &Interpreter,
    installer: Resolver,
) -> Result<(EnvReport, Manifest)> {
    let env = python::ensure_env(store, py, base, installer)?;
    let manifest = store.read_tree(&env.tree)?;
    let rendered = python::render(store, &manifest, dir, base)?;
    Ok((env, rendered))
}

/// The lock's models under `models/`, as a tree relative to the shared models folder.
fn shared_models(lock: &Lockfile) -> Manifest {
    let mut m = Manifest {
        entries: lock
            .models
            .iter()
            .filter_map(|m| {
                Some(Entry {
                    path: shared_model_path(&m.path)?.to_string(),
                    node: Node::File {
                        exec: false,
                        size: m.size,
                        id: m.blake3,
                    },
                })
            })
            .collect(),
    };
    m.sort();
    m.entries.dedup_by(|a, b| a.path == b.path);
    m
}
