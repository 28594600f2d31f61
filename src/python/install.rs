//! Installed environments, kept in the store: a pinned package set is installed once per
//! (interpreter, platform, wheels), with no network, and every later use links that tree.
//!
//! The key is a hash of the implementation, minor version, ABI, platform and the sorted wheel
//! sha256s; the GC root `env/<key>` maps it to the environment tree, so the mapping lives in
//! the store's files like everything else (and `root rm env/<key>` lets gc take it).

use super::interpreter::{self, Interpreter};
use super::pin::{symlink_object, Resolver};
use super::relocate;
use super::spec::EnvSpec;
use super::tool;
use crate::process::Process;
use crate::python::error::{Error, IoContext, Result};
use crate::store::{ObjectId, Prehash, Root, Store};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// Configuration that would make an installer look elsewhere than the wheels we hand it.
const INSTALLER_ENV: &[&str] = &[
    "PIP_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_REQUIRE_VIRTUALENV",
    "PIP_TARGET",
    "PIP_PREFIX",
    "PIP_USER",
    "UV_FIND_LINKS",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_COMPILE_BYTECODE",
    "UV_LINK_MODE",
    "UV_CACHE_DIR",
    "UV_NO_CACHE",
    "VIRTUAL_ENV",
    "PYTHONPATH",
];

/// How an environment was obtained.
#[derive(Clone, Debug, Serialize)]
pub struct EnvReport {
    /// The stored (path-independent) environment tree.
    pub tree: ObjectId,
    /// Installed now, rather than found in the store.
    pub built: bool,
    /// `uv` or `pip`, when built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installer: Option<&'static str>,
}

/// The store key of a package set: `None` if a package is not pinned to a wheel by sha256.
pub fn env_key(py: &EnvSpec) -> Option<String> {
    let mut shas = Vec::new();
    for p in &py.packages {
        shas.push(p.sha256?.hex());
        p.wheel.as_ref()?;
    }
    shas.sort();
    let text = format!(
        "comfystore.env/1\n{}\n{}\n{}\n{}\n{}\n",
        py.implementation.as_deref().unwrap_or(""),
        py.version
            .as_deref()
            .map(interpreter::minor_of)
            .unwrap_or_default(),
        py.abi.as_deref().unwrap_or(""),
        py.platform.as_deref().unwrap_or(""),
        shas.join("\n")
    );
    Some(blake3::hash(text.as_bytes()).to_hex()[..32].to_string())
}

/// The GC root that names the environment of a key.
pub fn env_root(key: &str) -> String {
    format!("env/{key}")
}

/// The environment tree of `py` the store already holds: the lock's own `tree`, else the one
/// installed earlier for the same package set.
pub fn find_env(store: &Store, py: &EnvSpec) -> Result<Option<ObjectId>> {
    if let Some(t) = py.tree.filter(|t| store.has_tree(t)) {
        return Ok(Some(t));
    }
    let Some(key) = env_key(py) else {
        return Ok(None);
    };
    Ok(store
        .read_root(&env_root(&key))?
        .and_then(|r| r.ids.first().copied())
        .filter(|t| store.has_tree(t)))
}

/// Wheels of `py` the store lacks, as `name version (file)`; packages not pinned to a wheel
/// are listed too, since nothing can install them.
pub fn missing_wheels(store: &Store, py: &EnvSpec) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in &py.packages {
        match (&p.wheel, p.sha256) {
            (Some(file), Some(sha)) => {
                if !store
                    .lookup_sha256(&sha)?
                    .is_some_and(|b| store.has_object(&b))
                {
                    out.push(format!("wheel {file}"));
                }
            }
            _ => out.push(format!(
                "{} {}: not pinned to a wheel ({}); pin it with `comfystore pin`",
                p.name,
                p.version,
                p.url.as_deref().unwrap_or("no URL")
            )),
        }
    }
    Ok(out)
}

/// The environment of `py`: found in the store, or installed from the store's wheels into a
/// staging venv (no network) with `base`, stored, and remembered under its key.
pub fn ensure_env(
    store: &Store,
    py: &EnvSpec,
    base: &Interpreter,
    installer: Resolver,
) -> Result<EnvReport> {
    let _writer = store.lock_shared()?;
    if let Some(tree) = find_env(store, py)? {
        return Ok(EnvReport {
            tree,
            built: false,
            installer: None,
        });
    }
    let missing = missing_wheels(store, py)?;
    if !missing.is_empty() {
        return Err(Error::python(
            "environment",
            format!(
                "cannot install: the store lacks {} (run `comfystore fetch LOCK`):\n  {}",
                missing.len(),
                missing.join("\n  ")
            ),
        ));
    }
    let key = env_key(py).ok_or_else(|| Error::python("environment", "unpinned packages"))?;
    let phase = relocate::Phases::start();
    let stage = tempfile::Builder::new()
        .prefix(crate::store::TEMP_PREFIX)
        .tempdir_in(store.tmp_dir())
        .ctx("create a temp folder in", &store.tmp_dir())?;
    let staged = stage_wheels(store, py, stage.path())?;
    phase.done("staging the wheels");
    // The installer the lock's tree was built with, unless the user chose one.
    let installer = match (installer, py.built_with.as_deref()) {
        (Resolver::Auto, Some("uv")) => Resolver::Uv,
        (Resolver::Auto, Some("pip")) => Resolver::Pip,
        (i, _) => i,
    };
    let use_uv = installer.pick() == Resolver::Uv;
    let name = if use_uv { "uv" } else { "pip" };
    let pre = Prehash::new();
    // Declared after `stage`, so it is dropped (waited for) before the stage is deleted.
    let cache_gone: Deleting;
    // The wheels are checked while the installer reads them (the stat cache vouches for most
    // after the first check): a damaged one fails the build before anything it made is stored.
    let (installed, checked) = std::thread::scope(|sc| {
        // At a lower priority, as the hashing beside uv: uv's own work comes first.
        let check =
            sc.spawn(|| crate::process::at_low_priority(|| store.checked_objects(&staged.check)));
        let installed = if use_uv {
            install_with_uv(store, base, &staged, &pre)
        } else {
            install_with_pip(base, &staged).map(|()| Deleting(None))
        };
        (installed, check.join())
    });
    checked.map_err(|_| Error::python("environment", "the wheels' check panicked"))??;
    cache_gone = installed?;
    phase.done(&format!(
        "installing with {name} (the wheels checked meanwhile)"
    ));
    let tree = relocate::ingest_installed(store, &staged.venv, base, &py.packages, name, &pre)?;
    phase.start_next();
    check_rebuild(store, py, base, tree, name)?;
    store.add_root(
        &env_root(&key),
        &Root {
            ids: vec![tree],
            path: None,
            ..Default::default()
        },
    )?;
    phase.done("recording the tree");
    drop(cache_gone);
    phase.done("waiting for uv's cache to be deleted");
    // The stage's files are links of objects now; what is freed is folders and duplicates.
    if let Err(e) = store.remove_temp_tree(stage.path()) {
        tracing::debug!("{e}");
    }
    drop(stage);
    phase.done("deleting the staging folder");
    Ok(EnvReport {
        tree,
        built: true,
        installer: Some(if use_uv { "uv" } else { "pip" }),
    })
}

/// A rebuild of a lock's environment must hash to the lock's `tree` when that tree is
/// comfystore's own install (`built_with`) with the same installer, for this interpreter and
/// platform: the same wheels then give the same bytes on every machine. A difference is an
/// error naming the files, when the store holds the lock's tree to compare with.
fn check_rebuild(
    store: &Store,
    py: &EnvSpec,
    base: &Interpreter,
    built: ObjectId,
    installer: &str,
) -> Result<()> {
    let (Some(want), Some(with)) = (py.tree, py.built_with.as_deref()) else {
        return Ok(());
    };
    let here = base.section();
    let same_target = with == installer
        && [
            (&py.implementation, &here.implementation),
            (&py.abi, &here.abi),
            (&py.platform, &here.platform),
        ]
        .iter()
        .all(|(a, b)| a.is_none() || a == b)
        && py.version.as_deref().map(interpreter::minor_of) == Some(base.minor());
    if built == want || !same_target {
        return Ok(());
    }
    let files = if store.has_tree(&want) {
        let diff = store
            .read_tree(&want)?
            .differences(&store.read_tree(&built)?);
        format!(
            "; differing files:\n  {}",
            diff.iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    } else {
        " (the store lacks the lock's tree, so the differing files cannot be named; compare \
         with `comfystore repro env` on the machine that has it)"
            .to_string()
    };
    Err(Error::python(
        "environment",
        format!(
            "the environment rebuilt from the lock's wheels with {installer} is tree {built}, \
             not the lock's python.tree {want}{files}"
        ),
    ))
}

/// A staging folder: the wheels, a requirements file naming them, and where the venv goes.
struct Staged {
    dir: PathBuf,
    house: PathBuf,
    reqs: PathBuf,
    venv: PathBuf,
    /// The wheels' objects, to check ([`Store::checked_objects`]) before the install counts.
    check: Vec<(ObjectId, bool, bool)>,
}

/// Link every pinned wheel from the store into `dir/wheels` (not yet checked: see
/// [`Staged::check`]) and list them as `name==version` requirements.
fn stage_wheels(store: &Store, py: &EnvSpec, dir: &Path) -> Result<Staged> {
    let house = dir.join("wheels");
    fs::create_dir_all(&house).ctx("create", &house)?;
    let mut reqs = String::new();
    let mut wheels = Vec::new();
    for p in &py.packages {
        let (Some(file), Some(sha)) = (&p.wheel, p.sha256) else {
            continue;
        };
        let id = store
            .lookup_sha256(&sha)?
            .ok_or_else(|| crate::store::Error::NotFound(format!("sha256:{}", sha.hex())))?;
        wheels.push((id, house.join(file)));
        reqs.push_str(&format!("{}=={}\n", p.name, p.version));
    }
    let look: Vec<_> = wheels.iter().map(|(id, _)| (*id, false, false)).collect();
    for ((id, at), found) in wheels.iter().zip(store.checked_objects(&look)?) {
        let src = found.ok_or_else(|| crate::store::Error::NotFound(id.to_string()))?;
        symlink_object(&src, at)?;
    }
    let reqs_path = dir.join("requirements.txt");
    fs::write(&reqs_path, reqs).ctx("write", &reqs_path)?;
    Ok(Staged {
        dir: dir.to_path_buf(),
        house,
        reqs: reqs_path,
        venv: dir.join("venv"),
        check: wheels.iter().map(|(id, _)| (*id, false, true)).collect(),
    })
}

/// `uv venv --relocatable`, then `uv pip install` from the staged wheels only, with a uv
/// cache of our own in the staging folder: uv unpacks each wheel there once and hard-links
/// the files into the venv, and the store adopts the venv's files as the objects
/// ([`Store::adopt_tree`]): the environment's bytes are written once, not three times (cache,
/// venv copy, object), and the user's uv cache is neither read nor written. While uv runs,
/// `pre` hashes each wheel uv has finished unpacking into the cache ([`Prehash::watch_until`]), so
/// little hashing is left once uv ends. The cache is then deleted on a thread of its own,
/// beside the adoption (a venv file may keep its cache link meanwhile: `pre` knows it).
fn install_with_uv(
    store: &Store,
    base: &Interpreter,
    s: &Staged,
    pre: &Prehash,
) -> Result<Deleting> {
    let cache = s.dir.join("uv-cache");
    let mut c = tool::command("uv", INSTALLER_ENV);
    c.args([
        "venv",
        "--no-config",
        "--quiet",
        "--relocatable",
        "--cache-dir",
    ])
    .arg(&cache)
    .arg("--python")
    .arg(&base.executable)
    .arg(&s.venv);
    install_step(c, &s.dir, "uv venv")?;
    let mut c = tool::command("uv", INSTALLER_ENV);
    c.args([
        "pip",
        "install",
        "--no-config",
        "--quiet",
        "--offline",
        "--no-index",
    ])
    .args(["--no-deps", "--link-mode", "hardlink", "--cache-dir"])
    .arg(&cache)
    .arg("--python")
    .arg(s.venv.join("bin/python"))
    .arg("--find-links")
    .arg(&s.house)
    .arg("-r")
    .arg(&s.reqs);
    // uv renames a wheel it has unpacked into `archive-v0/` only once it is complete. The
    // hashing runs at a lower priority: it takes the CPU uv leaves idle and does not slow uv
    // (what it has not reached when uv ends is hashed then, on both cores). uv is started
    // from this thread, whose priority is untouched.
    let archive = cache.join("archive-v0");
    let done = std::sync::atomic::AtomicBool::new(false);
    let (installed, ahead) = std::thread::scope(|sc| {
        let hasher = sc
            .spawn(|| crate::process::at_low_priority(|| pre.watch_until(store, &archive, &done)));
        let installed = install_step(c, &s.dir, "uv pip install");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (installed, hasher.join().unwrap_or_default())
    });
    installed?;
    tracing::info!(
        "environment: {} files ({} MiB) of uv's cache hashed while uv ran",
        ahead.files,
        ahead.bytes >> 20
    );
    Deleting::start(store, cache)
}

/// A folder of ours being deleted on a thread of its own; dropping this waits for it.
struct Deleting(Option<std::thread::JoinHandle<()>>);

impl Deleting {
    fn start(store: &Store, dir: PathBuf) -> Result<Deleting> {
        let remove = store.temp_tree_remover(&dir)?;
        Ok(Deleting(Some(std::thread::spawn(move || {
            let t = std::time::Instant::now();
            // Best effort: the staging folder around it is deleted afterwards anyway.
            if let Err(e) = remove() {
                tracing::debug!("{e}");
            }
            tracing::info!("environment: deleting uv's cache took {:.2?}", t.elapsed());
        }))))
    }
}

impl Drop for Deleting {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// `python -m venv`, then `pip --python VENV install` from the staged wheels only.
fn install_with_pip(base: &Interpreter, s: &Staged) -> Result<()> {
    let mut c = tool::command(&base.executable, INSTALLER_ENV);
    c.args(["-m", "venv", "--without-pip"]).arg(&s.venv);
    install_step(c, &s.dir, "python -m venv")?;
    let mut c = tool::command(&base.executable, INSTALLER_ENV);
    c.args(["-m", "pip", "--python"])
        .arg(s.venv.join("bin/python"))
        .args([
            "install",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--quiet",
        ])
        .args([
            "--disable-pip-version-check",
            "--no-input",
            "--no-warn-script-location",
        ])
        .arg("--find-links")
        .arg(&s.house)
        .arg("-r")
        .arg(&s.reqs);
    install_step(c, &s.dir, "pip install")
}

fn install_step(mut cmd: Process, cwd: &Path, what: &str) -> Result<()> {
    cmd.current_dir(cwd).env("PYTHONDONTWRITEBYTECODE", "1");
    tool::run(&mut cmd, what).map(drop)
}
