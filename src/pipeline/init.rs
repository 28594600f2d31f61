//! `init`: a working ComfyUI checkout with its environment, made through the store.
//!
//! Clones ComfyUI (or reuses the checkout), moves it to `--ref`, pins `requirements.txt` plus
//! `requests` (ComfyUI imports it without listing it), and places the environment at
//! `PATH/venv` from the store, installing it only the first time that package set is seen.
//! Running it again changes nothing and says so. `lock` then makes the first version.

use crate::git;
use crate::pipeline::error::{Error, IoContext, Result};
use crate::pipeline::materialize;
use crate::pipeline::version::VENV_DIR;
use crate::place::{LinkMode, MaterializeReport};
use crate::python::{self, EnvReport, PinOptions};
use crate::store::Store;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// ComfyUI's upstream repository.
pub const COMFYUI_REPO: &str = "https://github.com/comfyanonymous/ComfyUI";

/// Packages ComfyUI imports without listing them in `requirements.txt`.
const IMPLICIT_REQUIREMENTS: &[&str] = &["requests"];

#[derive(Clone, Debug)]
pub struct InitOptions {
    pub path: PathBuf,
    /// Branch, tag or commit; default: what the clone checked out (the remote's HEAD).
    pub reference: Option<String>,
    pub repo: String,
    pub pin: PinOptions,
    pub venv_link: LinkMode,
}

#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    pub path: PathBuf,
    pub commit: String,
    pub cloned: bool,
    /// HEAD moved to another commit.
    pub moved: bool,
    pub packages: usize,
    pub env: EnvReport,
    pub python: PathBuf,
    pub venv: MaterializeReport,
    /// Anything at all was written.
    pub changed: bool,
}

/// Clone (or reuse) the checkout, move it to the reference, pin its requirements and place
/// the environment; say whether anything changed.
pub fn init(store: &Store, opts: &InitOptions) -> Result<InitReport> {
    let path = std::path::absolute(&opts.path).ctx("resolve", &opts.path)?;
    let cloned = clone_if_missing(&path, &opts.repo)?;
    let before = head(&path)?;
    if let Some(r) = &opts.reference {
        check_out(&path, r, &opts.repo, &before)?;
    }
    let commit = head(&path)?;
    let py = pin_requirements(store, &path, &opts.pin)?;
    let base = python::interpreter::find_for(store, &py, opts.pin.python.as_deref())?;
    let venv_dir = path.join(VENV_DIR);
    let (env, rendered) =
        materialize::rendered_env(store, &py, &venv_dir, &base, opts.pin.resolver)?;
    let venv = materialize::place_env(store, &rendered, &venv_dir, opts.venv_link)?;
    let changed = cloned || commit != before || venv.written > 0 || venv.removed > 0;
    Ok(InitReport {
        path,
        moved: commit != before,
        commit,
        cloned,
        packages: py.packages.len(),
        env,
        python: base.executable,
        venv,
        changed,
    })
}

/// Clone `repo` at `path` if nothing is there; an existing folder must be a git checkout.
/// Whether it cloned.
fn clone_if_missing(path: &Path, repo: &str) -> Result<bool> {
    if path.exists() {
        if !path.join(".git").exists() {
            return Err(Error::bad_input(
                path,
                "exists and is not a git checkout: give an empty or new --path, or an existing ComfyUI clone",
            ));
        }
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ctx("create", parent)?;
    }
    git::clone(repo, path)?;
    Ok(true)
}

/// Move the checkout at `path` (now at `before`) to the branch, tag or commit `r`, fetching
/// from origin when it is not known here.
fn check_out(path: &Path, r: &str, repo: &str, before: &str) -> Result<()> {
    let target = match git::resolve(path, r) {
        Some(c) => c,
        None => {
            git::fetch_origin(path)?;
            git::resolve(path, r)
                .or_else(|| git::resolve(path, &format!("origin/{r}")))
                .ok_or_else(|| {
                    Error::bad_input(path, format!("no branch, tag or commit {r:?} in {repo}"))
                })?
        }
    };
    if target != before {
        git::checkout(path, &target)?;
    }
    Ok(())
}

/// Pin the checkout's `requirements.txt` plus what ComfyUI imports without listing it.
fn pin_requirements(store: &Store, path: &Path, pin: &PinOptions) -> Result<python::EnvSpec> {
    let req = path.join("requirements.txt");
    if !req.is_file() {
        return Err(Error::bad_input(
            &req,
            "missing: is this a ComfyUI checkout?",
        ));
    }
    let work = tempfile::Builder::new()
        .prefix(crate::store::TEMP_PREFIX)
        .tempdir_in(store.tmp_dir())
        .ctx("create a temp folder in", &store.tmp_dir())?;
    let all = work.path().join("requirements.txt");
    let mut body = format!("-r {}\n", req.display());
    for r in IMPLICIT_REQUIREMENTS {
        body.push_str(&format!("{r}\n"));
    }
    std::fs::write(&all, body).ctx("write", &all)?;
    Ok(python::pin(store, &all, pin)?.pins.python)
}

fn head(dir: &Path) -> Result<String> {
    git::resolve(dir, "HEAD").ok_or_else(|| Error::bad_input(dir, "git rev-parse HEAD failed"))
}
