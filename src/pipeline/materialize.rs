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
use crate::place::{self, Layout, LinkMode, LinkPolicy, MaterializeReport, PrefixRule};
use crate::python::{self, EnvReport, EnvSpec, Interpreter, Resolver};
use crate::store::{Entry, Manifest, Node, ObjectId, Store};
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
    /// A switch replaces the user's edits, keeping each beside the new file, instead of
    /// refusing.
    pub force: bool,
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
            force: false,
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
    let at = Paths::resolve(dest, opts)?;
    let timer = Timer {
        tag: &lock.tag,
        t0: std::time::Instant::now(),
    };
    // 1. Everything into the store first; stop before writing if anything is missing.
    let fetched = fetch(store, lock, dest, opts)?;
    // A model the lock names by sha256 alone is now in the store: by its blake3 from here on.
    let completed = super::version::complete_models(store, lock)?;
    let lock = &completed;
    timer.phase("fetch checked");
    // 2. The environment, found or installed once.
    let env = environment(store, lock, &at, opts, &timer)?;
    // 3. The version at DEST.
    let (version, layout) = compose_version(store, lock, dest, &at, env.as_ref(), opts)?;
    timer.phase("version composed");
    // An object found changed (through a hardlink in DEST, or while placing) goes to
    // quarantine and is fetched again from its sources; a part the lock cannot fetch stays an
    // error. Bounded: each round takes one changed object out.
    let mut rounds = 0;
    let (report, old_venv) = loop {
        match place_version(store, &version, dest, &at, &layout, opts) {
            // (Composing the version may itself have moved a changed object aside: then
            // placing finds it missing, once.)
            Err(e)
                if rounds < 64
                    && (quarantine_changed(store, &e)? || (rounds == 0 && lacks_objects(&e))) =>
            {
                tracing::warn!("{e}; fetching it again");
                rounds += 1;
                fetch(store, lock, dest, opts)?;
            }
            other => break other?,
        }
    };
    timer.phase("version placed");
    let venv = place_outside_env(store, &at, env.as_ref(), old_venv, opts)?;
    // 4. Shared models: added where missing or damaged, never removed (other versions use
    //    the same folder).
    let models = match &at.models_dir {
        Some(dir) if opts.fetch.wants(Part::Models) => {
            Some(place_shared_models(store, lock, dir, opts.models_link)?)
        }
        _ => None,
    };
    let (env, python) = match env {
        Some(e) => (Some(e.report), Some(e.base.executable)),
        None => (None, None),
    };
    Ok(LockReport {
        lock: lock.tag.clone(),
        version: report,
        fetched,
        env,
        python,
        venv,
        models,
    })
}

/// Where a lock's parts go, as absolute paths.
struct Paths {
    dest: PathBuf,
    /// DEST/venv, or `--venv`.
    venv_dir: PathBuf,
    models_dir: Option<PathBuf>,
}

impl Paths {
    fn resolve(dest: &Path, opts: &LockOptions) -> Result<Paths> {
        let dest_abs = std::path::absolute(dest).ctx("resolve", dest)?;
        let venv_dir = match &opts.venv {
            Some(v) => std::path::absolute(v).ctx("resolve", v)?,
            None => dest_abs.join(VENV_DIR),
        };
        let models_dir = match &opts.models_dir {
            Some(m) => Some(std::path::absolute(m).ctx("resolve", m)?),
            None => None,
        };
        Ok(Paths {
            dest: dest_abs,
            venv_dir,
            models_dir,
        })
    }
}

/// Debug-logs how long each phase took.
struct Timer<'a> {
    tag: &'a str,
    t0: std::time::Instant,
}

impl Timer<'_> {
    fn phase(&self, what: &str) {
        tracing::debug!(
            "materialize {}: {what} after {:?}",
            self.tag,
            self.t0.elapsed()
        );
    }
}

/// The environment of a version: how it was found or built, the interpreter it runs on, and
/// its tree rendered for where it goes.
struct Env {
    report: EnvReport,
    base: Interpreter,
    rendered: Manifest,
}

/// 1. Fetch what the store lacks; any part that cannot be had stops everything, before DEST
///    is touched.
fn fetch(store: &Store, lock: &Lockfile, dest: &Path, opts: &LockOptions) -> Result<FetchReport> {
    let fetched = fetch_lock(store, lock, &opts.fetch)?;
    if fetched.failed.is_empty() {
        return Ok(fetched);
    }
    let lines: Vec<String> = fetched
        .failed
        .iter()
        .map(|(what, why)| format!("{what}: {why}"))
        .collect();
    Err(Error::bad_input(
        dest,
        format!(
            "not written: {} part(s) of lock {} are not in the store and could not be fetched{}:\n  {}",
            lines.len(),
            lock.tag,
            if opts.fetch.http.offline { " (offline)" } else { "" },
            lines.join("\n  ")
        ),
    ))
}

/// 2. The environment (if the lock has one and it is wanted): the interpreter, the stored
///    environment (installed once if the store lacks it), rendered for its folder.
fn environment(
    store: &Store,
    lock: &Lockfile,
    at: &Paths,
    opts: &LockOptions,
    timer: &Timer,
) -> Result<Option<Env>> {
    let Some(py) = lock
        .python
        .as_ref()
        .filter(|_| opts.fetch.wants(Part::Python))
    else {
        return Ok(None);
    };
    let py = EnvSpec::from(py);
    let base = python::interpreter::find_for(store, &py, opts.python.as_deref())?;
    timer.phase("interpreter found");
    let (report, rendered) = rendered_env(store, &py, &at.venv_dir, &base, opts.installer)?;
    timer.phase("environment rendered");
    Ok(Some(Env {
        report,
        base,
        rendered,
    }))
}

/// 3a. The version tree (ComfyUI, nodes, the environment unless it goes elsewhere, models
///     unless shared), stored, and the Layout its marker records.
fn compose_version(
    store: &Store,
    lock: &Lockfile,
    dest: &Path,
    at: &Paths,
    env: Option<&Env>,
    opts: &LockOptions,
) -> Result<(Stored, Layout)> {
    let elsewhere = opts.venv.is_some();
    let parts = Parts {
        env: env.filter(|_| !elsewhere).map(|e| e.rendered.clone()),
        env_elsewhere: elsewhere,
        models_dir: at.models_dir.clone(),
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
        venv: opts.venv.as_ref().map(|_| at.venv_dir.clone()),
        models_dir: at.models_dir.clone(),
        python: env.map(|e| e.base.executable.clone()),
        env: env.map(|e| e.report.tree),
        source_data_files: comfyui_data_files(store, lock)?,
    };
    let (tree, _) = store.put_tree(&version.manifest)?;
    let stored = Stored {
        tree,
        manifest: version.manifest,
    };
    Ok((stored, layout))
}

/// A version tree as stored.
struct Stored {
    tree: ObjectId,
    manifest: Manifest,
}

/// 3b. Place the version at DEST, switching it in place from the one it held. Returns the
///     report and where the previous version placed its environment, if outside DEST and
/// ComfyUI's own files inside the data folders (its repo tracks a few there), for the marker:
/// see [`Layout::source_data_files`].
fn comfyui_data_files(store: &Store, lock: &Lockfile) -> Result<Vec<String>> {
    let c = &lock.comfyui;
    let excludes = crate::lockfile::comfyui_excludes();
    let Some(tree) = super::version::source_tree(
        store,
        c.tree,
        c.repo.as_deref(),
        c.commit.as_deref(),
        &excludes,
    )?
    else {
        return Ok(Vec::new());
    };
    // A version limited to other parts (`--only python`) places no ComfyUI tree, and the store
    // need not hold it.
    if !store.has_tree(&tree) {
        return Ok(Vec::new());
    }
    let in_data = |p: &str| {
        crate::lockfile::COMFY_DATA_DIRS
            .iter()
            .any(|d| p.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
    };
    let manifest = store.read_tree(&tree)?;
    Ok(manifest
        .entries
        .iter()
        .filter(|e| in_data(&e.path) && !matches!(e.node, crate::store::Node::Dir))
        .map(|e| e.path.clone())
        .collect())
}

///     somewhere else than now.
fn place_version(
    store: &Store,
    version: &Stored,
    dest: &Path,
    at: &Paths,
    layout: &Layout,
    opts: &LockOptions,
) -> Result<(MaterializeReport, Option<PathBuf>)> {
    let old_venv = place::read_marker(store, &at.dest)?
        .layout
        .venv
        .filter(|old| layout.venv.as_ref() != Some(old));
    let report = place::materialize_laid_out(
        store,
        &version.tree,
        &version.manifest,
        dest,
        &opts.policy(),
        layout,
        opts.force,
    )?;
    Ok((report, old_venv))
}

/// 3c. The environment outside DEST (`--venv`) is a materialized folder of its own; the one
///     the previous version placed elsewhere is removed.
fn place_outside_env(
    store: &Store,
    at: &Paths,
    env: Option<&Env>,
    old_venv: Option<PathBuf>,
    opts: &LockOptions,
) -> Result<Option<MaterializeReport>> {
    let venv = match env.filter(|_| opts.venv.is_some()) {
        // `--force` reaches the environment too: an edit there is kept beside, not refused.
        Some(env) => {
            let (tree, _) = store.put_tree(&env.rendered)?;
            Some(place::materialize_force(
                store,
                &tree,
                &at.venv_dir,
                &LinkPolicy::only(opts.venv_link),
                opts.force,
            )?)
        }
        None => None,
    };
    let old_venv =
        old_venv.filter(|o| place::read_marker(store, o).is_ok_and(|m| m.marker.is_some()));
    if let Some(old) = old_venv {
        let r = place::remove(store, &old, false)?;
        tracing::info!(
            "removed the previous environment at {} ({} entries; {} kept)",
            old.display(),
            r.removed_entries,
            r.kept.len()
        );
    }
    Ok(venv)
}

/// 4. The lock's models under `models/` in the shared folder, repaired in place: added where
///    missing or damaged, nothing removed.
fn place_shared_models(
    store: &Store,
    lock: &Lockfile,
    dir: &Path,
    mode: LinkMode,
) -> Result<MaterializeReport> {
    let models = shared_models(lock)?;
    let (tree, _) = store.put_tree(&models)?;
    std::fs::create_dir_all(dir).ctx("create", dir)?;
    // A warm start finds every model in place: it takes no turn (a lock file is a write on
    // the volume) and changes nothing there.
    let now = place::status_against(store, dir, &models, false)?;
    if now.missing.is_empty() && now.modified.is_empty() && now.store_objects_changed.is_empty() {
        return Ok(MaterializeReport {
            tree: Some(tree),
            dest: dir.to_path_buf(),
            unchanged: now.ok,
            extra: now.extra.len() as u64,
            ..Default::default()
        });
    }
    // Two workers starting at once on one volume would both find a model missing and both
    // create it (the second failing on EEXIST): they take turns, and the second finds it there.
    let dir_key = blake3::hash(
        std::path::absolute(dir)
            .ctx("resolve", dir)?
            .as_os_str()
            .as_encoded_bytes(),
    );
    let _turn = store.lock_named(&format!("models-dir-{}", &dir_key.to_hex()[..32]))?;
    Ok(place::repair_in_place(
        store,
        &tree,
        dir,
        &LinkPolicy::only(mode),
    )?)
}

/// Materialize an environment tree (already rendered for `dir`) at `dir`.
pub fn place_env(
    store: &Store,
    env: &Manifest,
    dir: &Path,
    mode: LinkMode,
) -> Result<MaterializeReport> {
    place_env_with(store, env, dir, &LinkPolicy::only(mode))
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
fn shared_models(lock: &Lockfile) -> Result<Manifest> {
    let mut entries = Vec::new();
    for m in &lock.models {
        if let Some(path) = shared_model_path(&m.path) {
            entries.push(Entry {
                path: path.to_string(),
                node: Node::File {
                    exec: false,
                    size: super::version::model_size(m)?,
                    id: super::version::model_id(m)?,
                },
            });
        }
    }
    let mut m = Manifest { entries };
    m.sort();
    m.entries.dedup_by(|a, b| a.path == b.path);
    Ok(m)
}

/// Whether placing stopped on a store object that changed, now moved to quarantine (placing
/// moves one it reads; one DEST's check found changed through a hardlink is moved here).
fn quarantine_changed(store: &Store, e: &crate::Error) -> Result<bool> {
    use crate::store::Error::{Corrupt, NotFound};
    Ok(match e {
        crate::Error::Store(Corrupt { .. })
        | crate::Error::Place(crate::place::Error::Store(Corrupt { .. })) => true,
        crate::Error::Place(crate::place::Error::ObjectChanged { id, .. }) => {
            for exec in [true, false] {
                match store.checked_object(id, exec) {
                    Ok(_) | Err(Corrupt { .. }) | Err(NotFound(_)) => {}
                    Err(other) => return Err(other.into()),
                }
            }
            !store.has_object(id) || store.checked_object(id, true).is_err()
        }
        _ => false,
    })
}

/// Whether placing stopped because the store lacks objects of the version.
fn lacks_objects(e: &crate::Error) -> bool {
    use crate::store::Error::NotFound;
    matches!(
        e,
        crate::Error::Store(NotFound(_))
            | crate::Error::Place(crate::place::Error::Store(NotFound(_)))
    )
}
