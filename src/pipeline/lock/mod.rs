//! Versions as lockfiles: scan a ComfyUI install into a `comfystore.lock/1` file, with
//! everything it names put into the store.
//!
//! The ComfyUI source, each custom node and the venv become store trees; models are adopted in
//! place (see [`crate::store::AdoptMode`]). Git repos are locked by commit *and* tree, and a
//! clean repo's tree is exactly its checkout (minus caches), so the tree can be rebuilt from
//! the commit and checked against the lock.

mod claimed;
pub(crate) mod models;
mod python;

pub use claimed::LOCKFILES_DIR;
pub use models::default_hf_caches;
pub use models::skip_name as not_a_model;

use super::python_section::fill_wheels;
use crate::git;
use crate::lockfile::{
    check_tag, comfyui_excludes, redact_url, ComfyUi, CustomNode, Lockfile, Model, Python,
    Registry, DISABLED_DIR,
};
use crate::pipeline::error::{Error, IoContext, Result};
use crate::store::{AdoptMode, ObjectId, Store, CACHE_NAMES};
use claimed::Claimed;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What `lock` scans and how.
#[derive(Clone, Debug, Default)]
pub struct LockOptions {
    pub comfy_dir: PathBuf,
    pub tag: String,
    /// The venv (default: `COMFY_DIR/venv`, `COMFY_DIR/.venv`, `$VIRTUAL_ENV`).
    pub venv: Option<PathBuf>,
    /// Leave the Python environment out (not scanned). A `python` section of the lockfile
    /// being rewritten (`output`) is kept, with a warning, unless `drop_python`.
    pub no_python: bool,
    /// When no venv is scanned, drop the `python` section of the lockfile being rewritten.
    pub drop_python: bool,
    /// Models folder (default `COMFY_DIR/models`).
    pub models_dir: Option<PathBuf>,
    /// `--sources` map of path or sha256 to URLs.
    pub sources: Option<PathBuf>,
    /// More Hugging Face hub caches to look up sources in.
    pub hf_caches: Vec<PathBuf>,
    pub adopt: AdoptMode,
    /// Give packages installed from an index their wheel file, URL and sha256, by pinning
    /// `name==version` of each with `pin` (network, unless offline with local wheels).
    pub pin_wheels: Option<crate::python::PinOptions>,
    /// Where the lockfile will be written: never locked itself, wherever it is.
    pub output: Option<PathBuf>,
}

/// What `lock` did, beyond the lockfile itself.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LockReport {
    /// Repos locked by their tree because they had uncommitted changes.
    pub dirty: Vec<String>,
    pub warnings: Vec<String>,
    pub custom_nodes: usize,
    pub packages: usize,
    pub models: usize,
    pub model_bytes: u64,
    /// How each model got into the store: cached, present, reflink, hardlink, copy.
    pub model_adoption: BTreeMap<&'static str, u64>,
    /// Source files read and hashed, versus vouched for by the stat cache.
    pub hashed_files: u64,
    pub cached_files: u64,
    pub new_objects: u64,
}

/// Scan `opts.comfy_dir` and return its lockfile (canonical and valid), having stored every
/// part of it.
pub fn lock(store: &Store, opts: &LockOptions) -> Result<(Lockfile, LockReport)> {
    let comfy = comfy_dir(opts)?;
    // Held throughout: gc must not collect what we store before a root names it.
    let _writer = store.lock_shared()?;
    let mut report = LockReport::default();
    let mut lock = Lockfile::new(&opts.tag);
    let venv = if opts.no_python {
        None
    } else {
        python::find_venv(&comfy, opts.venv.as_deref())
    };
    let mut claimed = Claimed::new(&comfy, opts.output.as_deref());
    lock.comfyui = lock_comfyui(store, &comfy, venv.as_deref(), &mut claimed, &mut report)?;
    let extra_yaml = comfy.join("extra_model_paths.yaml");
    let extra = if extra_yaml.is_file() {
        models::read_extra_paths(&extra_yaml)?
    } else {
        models::ExtraPaths::default()
    };
    let mut node_dirs = vec![comfy.join("custom_nodes")];
    node_dirs.extend(extra.custom_nodes.iter().cloned());
    lock.custom_nodes = lock_nodes(store, &node_dirs, &claimed, &mut report)?;
    report.custom_nodes = lock.custom_nodes.len();
    match &venv {
        Some(venv) => lock.python = Some(lock_venv(store, venv, opts, &mut report)?),
        None if !opts.no_python => report.warnings.push(
            "no venv found (COMFY_DIR/venv, COMFY_DIR/.venv, $VIRTUAL_ENV): python section left out; pass --venv"
                .into(),
        ),
        None => {}
    }
    if venv.is_none() {
        lock.python = previous_python(opts, &mut report);
    }
    let models_dir = opts
        .models_dir
        .clone()
        .unwrap_or_else(|| comfy.join("models"));
    lock.models = lock_models(store, &models_dir, &extra, opts, &claimed, &mut report)?;
    report.models = lock.models.len();
    report.model_bytes = lock.models.iter().filter_map(|m| m.size).sum();
    lock.canonicalize();
    lock.validate().map_err(|e| {
        Error::bad_input(
            &comfy,
            format!("the scanned install gives an invalid lock: {e}"),
        )
    })?;
    Ok((lock, report))
}

/// No venv was scanned: the `python` section of the lockfile being rewritten is kept (a
/// pinned environment is never dropped without a word), unless `drop_python`.
fn previous_python(opts: &LockOptions, report: &mut LockReport) -> Option<Python> {
    let out = opts.output.as_deref().filter(|p| p.is_file())?;
    let old = match Lockfile::read(out) {
        Ok(l) => l.python?,
        Err(e) => {
            report.warnings.push(format!(
                "{} is not a readable lockfile ({e}); it is replaced",
                out.display()
            ));
            return None;
        }
    };
    if opts.drop_python {
        report.warnings.push(format!(
            "the python section of {} (environment {}) is dropped (--drop-python)",
            out.display(),
            old.tree
                .map_or_else(|| "without a tree".to_string(), |t| t.to_string())
        ));
        None
    } else {
        report.warnings.push(format!(
            "no venv scanned: the python section of {} (environment {}) is kept as it was; pass --drop-python to drop it",
            out.display(),
            old.tree.map_or_else(|| "without a tree".to_string(), |t| t.to_string())
        ));
        Some(old)
    }
}

/// The ComfyUI folder, checked (and the tag with it).
fn comfy_dir(opts: &LockOptions) -> Result<PathBuf> {
    check_tag(&opts.tag).map_err(|e| Error::bad_input(&opts.comfy_dir, e))?;
    let comfy = opts.comfy_dir.canonicalize().ctx("open", &opts.comfy_dir)?;
    if !comfy.is_dir() {
        return Err(Error::bad_input(&comfy, "not a directory"));
    }
    if !comfy.join("main.py").is_file() {
        tracing::warn!("{}: no main.py; is this a ComfyUI folder?", comfy.display());
    }
    Ok(comfy)
}

/// ComfyUI's own source tree: in a git checkout, every file its repo tracks (also under the
/// data folders) and untracked ones outside the data folders, the venv and `lock`'s outputs.
/// A folder `materialize` made has no git to say which files in the data folders are
/// ComfyUI's: its marker lists them. What the tree holds is recorded in `claimed`, so no node
/// or model takes it again.
fn lock_comfyui(
    store: &Store,
    comfy: &Path,
    venv: Option<&Path>,
    claimed: &mut Claimed,
    report: &mut LockReport,
) -> Result<ComfyUi> {
    let mut excludes = comfyui_excludes();
    excludes.extend(claimed.output_excludes());
    if let Some(rel) = venv
        .and_then(|v| v.canonicalize().ok())
        .and_then(|v| v.strip_prefix(comfy).ok().map(Path::to_path_buf))
    {
        if let Some(first) = rel.components().next() {
            excludes.push(first.as_os_str().to_string_lossy().into_owned());
        }
    }
    excludes.sort();
    excludes.dedup();
    // A materialized install has no git; its marker lists ComfyUI's own files in the data
    // folders (materialize recorded them from the comfyui tree).
    let ours = if git::is_repo_root(comfy) {
        Vec::new()
    } else {
        // A file that is no marker at all is only a file of the install: lock warns and goes
        // on without the list. A marker whose fields cannot be trusted is refused, naming it.
        match crate::place::read_marker(store, comfy) {
            Ok(m) => m.layout.source_data_files,
            Err(e @ crate::place::Error::BadMarker { .. }) => {
                report.warnings.push(format!(
                    "{e}; ComfyUI's own files in the data folders are not told apart"
                ));
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (src, tree) = lock_source(store, comfy, &excludes, &ours, "comfyui", report)?;
    if let Some(g) = &src {
        claimed.set_tree(&g.files);
    } else {
        claimed.set_tree(&ours);
        report
            .warnings
            .push("ComfyUI is not a git checkout: locked by its tree only".into());
    }
    Ok(ComfyUi {
        repo: src.as_ref().and_then(|g| g.repo.clone()),
        commit: src.as_ref().map(|g| g.commit.clone()),
        dirty: src.as_ref().is_some_and(|g| g.dirty),
        tree: Some(tree),
    })
}

/// The venv's python section, its packages' wheels filled in where known, stored as a
/// path-independent tree.
fn lock_venv(
    store: &Store,
    venv: &Path,
    opts: &LockOptions,
    report: &mut LockReport,
) -> Result<crate::lockfile::Python> {
    let (mut py, base) = python::inspect(venv)?;
    // What comfystore installed it from: the wheel, URL and sha256 of each package.
    let meta = crate::python::relocate::read_meta_file(venv)?;
    if let Some(meta) = &meta {
        fill_wheels(&mut py.packages, &meta.packages);
    }
    if let Some(pin) = &opts.pin_wheels {
        pin_index_packages(store, venv, &mut py, pin, report)?;
    }
    // Stored path-independent: what names the venv's folder or interpreter is a template.
    let (tree, add) = crate::python::relocate::ingest(store, venv, &base, None)?;
    count(report, &add);
    // Exactly the environment comfystore built from these wheels: a rebuild elsewhere must
    // give the same tree.
    let built = crate::python::find_env(store, &crate::python::EnvSpec::from(&py))?;
    if built == Some(tree) {
        py.built_with = meta.and_then(|m| m.installer);
    }
    py.tree = Some(tree);
    report.packages = py.packages.len();
    Ok(py)
}

/// Fill in wheel, URL and sha256 of the packages an index installed (no `direct_url.json`),
/// with the same resolution `pin` uses: `name==version` of each, for the venv's interpreter,
/// without downloading wheels whose sha256 the index publishes. A package no index offers
/// stays unpinned, with a warning naming it (`show` and `--portable` then say the lock is
/// not portable); the rest are pinned all the same.
fn pin_index_packages(
    store: &Store,
    venv: &Path,
    py: &mut Python,
    pin: &crate::python::PinOptions,
    report: &mut LockReport,
) -> Result<()> {
    py.index_url = pin.index_url.as_deref().map(redact_url);
    py.extra_index_urls = pin.extra_index_urls.iter().map(|u| redact_url(u)).collect();
    let wanted: Vec<(String, String)> = py
        .packages
        .iter()
        .filter(|p| p.wheel.is_none() && p.url.is_none() && !p.version.is_empty())
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let opts = crate::python::PinOptions {
        python: Some(venv.join("bin/python").to_string_lossy().into_owned()),
        no_deps: true,
        record_only: true,
        ..pin.clone()
    };
    let (pinned, refused) = pin_each(store, &wanted, &opts)?;
    fill_wheels(&mut py.packages, &pinned);
    if !refused.is_empty() {
        let shown: Vec<String> = refused
            .iter()
            .take(8)
            .map(|(req, why)| format!("{req} ({why})"))
            .collect();
        let more = refused.len().saturating_sub(shown.len());
        report.warnings.push(format!(
            "{} of {} index-installed packages could not be pinned to a wheel, so a fresh \
             machine cannot install them: {}{}. Name the index they came from \
             (--index-url, --extra-index-url, e.g. https://download.pytorch.org/whl/cpu) or \
             a --wheels-dir; --no-pin-wheels leaves all unpinned",
            refused.len(),
            wanted.len(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// Pinned wheels, and each refused `name==version` with the resolver's reason.
type PinOutcome = (Vec<crate::python::Package>, Vec<(String, String)>);

/// Most resolver runs one pinning may take; past that, what is left is reported unpinned.
const PIN_RUNS: usize = 12;

/// Pin each `(name, version)`: the resolver takes them all at once; when it refuses, the
/// packages its message names are set aside, or else the group is halved, so one package
/// missing from the index leaves the others pinned. Returns the pinned wheels and each
/// refused `name==version` with the resolver's reason.
fn pin_each(
    store: &Store,
    wanted: &[(String, String)],
    opts: &crate::python::PinOptions,
) -> Result<PinOutcome> {
    let work = tempfile::Builder::new()
        .prefix(crate::store::TEMP_PREFIX)
        .tempdir_in(store.tmp_dir())
        .ctx("create a temp folder in", &store.tmp_dir())?;
    let reqs = work.path().join("requirements.txt");
    let line = |(n, v): &(String, String)| format!("{n}=={v}");
    let (mut pinned, mut refused) = (Vec::new(), Vec::new());
    let mut todo = vec![wanted.to_vec()];
    let mut runs = 0;
    while let Some(group) = todo.pop() {
        let body: String = group.iter().map(|p| line(p) + "\n").collect();
        fs::write(&reqs, body).ctx("write", &reqs)?;
        runs += 1;
        let reason = match crate::python::pin(store, &reqs, opts) {
            Ok(r) => {
                pinned.extend(r.pins.python.packages);
                continue;
            }
            Err(e @ (crate::python::Error::Python { .. } | crate::python::Error::Http(_))) => {
                e.to_string()
            }
            Err(e) => return Err(e.into()),
        };
        // What the resolver printed, without our own words ("uv pip compile" names pip).
        let said = reason
            .split_once("failed:")
            .map_or(reason.as_str(), |(_, r)| r);
        let short = said
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("refused")
            .to_string();
        let named: Vec<bool> = group.iter().map(|(n, _)| mentions(said, n)).collect();
        let all_named = named.iter().all(|b| *b);
        if group.len() == 1 || runs >= PIN_RUNS {
            refused.extend(group.iter().map(|p| (line(p), short.clone())));
        } else if named.iter().any(|b| *b) && !all_named {
            let (out, rest): (Vec<_>, Vec<_>) = group.into_iter().zip(named).partition(|(_, n)| *n);
            refused.extend(out.iter().map(|(p, _)| (line(p), short.clone())));
            todo.push(rest.into_iter().map(|(p, _)| p).collect());
        } else {
            let mut a = group;
            let b = a.split_off(a.len() / 2);
            todo.push(a);
            todo.push(b);
        }
    }
    refused.sort();
    Ok((pinned, refused))
}

/// Whether a resolver's message names the package `name` (as a whole word, any spelling
/// PEP 503 folds together).
fn mentions(text: &str, name: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .any(|w| crate::ident::normalize_package_name(w) == name)
}

fn count(report: &mut LockReport, add: &crate::store::AddReport) {
    report.hashed_files += add.hashed_files;
    report.cached_files += add.cached_files;
    report.new_objects += add.new_objects;
}

/// Store a source folder for `lock`, turning what git says into warnings.
fn lock_source(
    store: &Store,
    dir: &Path,
    excludes: &[String],
    also: &[String],
    label: &str,
    report: &mut LockReport,
) -> Result<(Option<git::GitState>, ObjectId)> {
    let (state, add) = git::store_checkout(store, dir, excludes, also)?;
    count(report, &add);
    if let Some(g) = &state {
        if g.dirty {
            report.dirty.push(label.to_string());
            report.warnings.push(format!(
                "{label}: uncommitted changes; locked by its tree {} (commit {} is only its base)",
                add.id,
                &g.commit[..12.min(g.commit.len())]
            ));
        }
        if !g.ignored.is_empty() {
            let shown: Vec<&str> = g.ignored.iter().take(3).map(String::as_str).collect();
            report.warnings.push(format!(
                "{label}: {} git-ignored file(s) not locked (e.g. {})",
                g.ignored.len(),
                shown.join(", ")
            ));
        }
    }
    Ok((state, add.id))
}

/// A node's folder name and whether it is disabled: `X.disabled` or `.disabled/X`.
fn node_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    let list = |d: &Path, disabled: bool, out: &mut Vec<(String, PathBuf, bool)>| -> Result<()> {
        let entries = match fs::read_dir(d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("list", d),
        };
        for e in entries {
            let e = e.ctx("list", d)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || CACHE_NAMES.contains(&name.as_str()) {
                continue;
            }
            match name.strip_suffix(".disabled") {
                Some(base) if !base.is_empty() => out.push((base.to_string(), e.path(), true)),
                _ => out.push((name, e.path(), disabled)),
            }
        }
        Ok(())
    };
    list(dir, false, &mut out)?;
    list(&dir.join(DISABLED_DIR), true, &mut out)?;
    Ok(out)
}

/// Lock every custom node in `dirs` (ComfyUI's `custom_nodes` first, then extra folders).
fn lock_nodes(
    store: &Store,
    dirs: &[PathBuf],
    claimed: &Claimed,
    report: &mut LockReport,
) -> Result<Vec<CustomNode>> {
    let mut nodes: Vec<CustomNode> = Vec::new();
    for dir in dirs {
        for (name, path, disabled) in node_entries(dir)? {
            if !is_users_node(&name, &path, &nodes, claimed, report) {
                continue;
            }
            if let Some(node) = lock_node(store, name, &path, disabled, report)? {
                nodes.push(node);
            }
        }
    }
    Ok(nodes)
}

/// Whether an entry of a nodes folder is a node of the user's: not an `.example` file, not
/// ComfyUI's own (its repo tracks it) or `lock`'s output, not found before.
fn is_users_node(
    name: &str,
    path: &Path,
    nodes: &[CustomNode],
    claimed: &Claimed,
    report: &mut LockReport,
) -> bool {
    if (name.ends_with(".example") && path.is_file()) || claimed.owns(path) {
        return false;
    }
    let label = format!("custom_nodes/{name}");
    let shadowed = if claimed.in_tree(&label) {
        "ComfyUI's own is kept"
    } else if nodes.iter().any(|n| n.name == name) {
        "the first one is locked"
    } else {
        return true;
    };
    report.warnings.push(format!(
        "{label}: found again at {}; {shadowed}",
        path.display()
    ));
    false
}

/// One custom node: a single file, or a folder (by git commit and tree where it is a repo).
fn lock_node(
    store: &Store,
    name: String,
    path: &Path,
    disabled: bool,
    report: &mut LockReport,
) -> Result<Option<CustomNode>> {
    let label = format!("custom_nodes/{name}");
    let meta = fs::metadata(path).ctx("stat", path)?;
    let mut node = CustomNode {
        name,
        disabled,
        ..Default::default()
    };
    if meta.is_file() {
        let add = store.add_file(path)?;
        count(report, &add);
        node.file = Some(add.id);
    } else if meta.is_dir() {
        let (src, tree) = lock_source(store, path, &[], &[], &label, report)?;
        if let Some(g) = src {
            node.repo = g.repo;
            node.commit = Some(g.commit);
            node.dirty = g.dirty;
        }
        node.registry = registry_pack(path);
        node.tree = Some(tree);
    } else {
        return Ok(None);
    }
    Ok(Some(node))
}

/// A Comfy Registry pack, detected as ComfyUI-Manager does: a `.tracking` file and a
/// `pyproject.toml` with `[project] name` and `version`.
fn registry_pack(dir: &Path) -> Option<Registry> {
    if !dir.join(".tracking").is_file() {
        return None;
    }
    let text = fs::read_to_string(dir.join("pyproject.toml")).ok()?;
    let doc: toml::Table = text.parse().ok()?;
    let project = doc.get("project")?.as_table()?;
    Some(Registry {
        id: project.get("name")?.as_str()?.to_ascii_lowercase(),
        version: project.get("version")?.as_str()?.to_string(),
    })
}

/// Whether a file found among models is one: not ComfyUI's own (its repo tracks it, like
/// `models/configs/*.yaml`) or `lock`'s output, and not at a path ComfyUI's tree holds.
fn is_users_model(m: &models::FoundModel, claimed: &Claimed, report: &mut LockReport) -> bool {
    if claimed.owns(&m.abs) {
        return false;
    }
    if claimed.in_tree(&m.path) {
        report.warnings.push(format!(
            "{}: also found at {}; ComfyUI's own is kept",
            m.path,
            m.abs.display()
        ));
        return false;
    }
    true
}

/// Adopt every model into the store and gather its sources.
fn lock_models(
    store: &Store,
    models_dir: &Path,
    extra: &models::ExtraPaths,
    opts: &LockOptions,
    claimed: &Claimed,
    report: &mut LockReport,
) -> Result<Vec<Model>> {
    let mut found = models::discover(models_dir, extra, &mut report.warnings)?;
    found.retain(|m| is_users_model(m, claimed, report));
    let paths: Vec<PathBuf> = found.iter().map(|m| m.abs.clone()).collect();
    // Hardlinks only inside the install, the models folder and the model folders the
    // install's extra_model_paths.yaml declares: a model behind a symlink that leads
    // elsewhere is reflinked or copied, its mode and link count never touched.
    let comfy = opts.comfy_dir.as_path();
    let scope = crate::store::AdoptScope::new(
        [comfy, models_dir]
            .into_iter()
            .chain(extra.models.iter().map(|(_, d)| d.as_path())),
    );
    let adopted = store.adopt_files(&paths, opts.adopt, &scope)?;
    let given = match &opts.sources {
        Some(p) => models::SourceMap::read(p)?,
        None => models::SourceMap::default(),
    };
    let mut hubs = models::default_hf_caches();
    hubs.extend(opts.hf_caches.iter().cloned());
    hubs.extend(found.iter().filter_map(|m| models::hub_of(&m.abs)));
    let hf = models::scan_hf_caches(&hubs);

    let mut out = Vec::with_capacity(found.len());
    for (m, a) in found.iter().zip(&adopted) {
        *report.model_adoption.entry(a.how).or_default() += 1;
        let mut sources: Vec<String> = given
            .lookup(&m.path, &a.sha256)
            .into_iter()
            .chain(hf.get(&a.sha256).cloned())
            .map(|u| redact_url(&u))
            .collect();
        // Remember what we learnt, so the next lock of these bytes knows it too.
        for url in &sources {
            store.add_source(&a.id, url)?;
        }
        // Sorted, so the lock's bytes do not depend on whether --sources was passed this time
        // (preference among sources is the fetcher's business: mirrors first).
        sources.extend(store.sources_of(&a.id)?);
        sources.sort();
        sources.dedup();
        if sources.is_empty() {
            report.warnings.push(format!(
                "{}: no known source; locked by hash only (pass --sources to name one)",
                m.path
            ));
        }
        out.push(Model {
            path: m.path.clone(),
            size: Some(a.size),
            sha256: a.sha256,
            blake3: Some(a.id),
            sources,
        });
    }
    Ok(out)
}
