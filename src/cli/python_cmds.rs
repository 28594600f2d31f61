//! `pin` and `init`: Python environments through the store.

use super::{open_store, Cli, HttpArgs};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use comfystore::lockfile::Lockfile;
use comfystore::pipeline::init::{InitOptions, COMFYUI_REPO};
use comfystore::place::LinkMode;
use comfystore::python::{PinOptions, Resolver};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PythonCommand {
    /// Pin a requirements.txt to exact wheels (version, file, URL, sha256), stored.
    ///
    /// Resolves with uv (`uv pip compile`) where uv is on PATH, else with pip (`pip install
    /// --dry-run --report`), for the interpreter --python names (default python3) or another
    /// --platform. Only wheels are pinned: environments are installed with no network and no
    /// compiler. Every pinned wheel is downloaded into the store and checked against the
    /// sha256 its index published. The result goes into a lockfile's python section (--lock),
    /// a pins file (-o), or stdout.
    #[command(
        after_help = "Examples:\n  comfystore pin ComfyUI/requirements.txt --lock lockfiles/comfy-v1.lock.json\n  comfystore pin requirements.txt --python 3.11 --extra-index-url https://download.pytorch.org/whl/cu124 -o pins.json\n  comfystore pin requirements.txt --wheel-url https://download.pytorch.org/whl/cu124/torch-2.5.1%2Bcu124-cp311-cp311-linux_x86_64.whl\n  comfystore pin requirements.txt --offline --wheels-dir ./wheels    # no index: local wheels and the store's\n  comfystore pin requirements.txt --python 3.11 --platform manylinux_2_28_x86_64   # for a RunPod image, from a Mac"
    )]
    Pin(PinArgs),
    /// Clone ComfyUI and give it a pinned environment from the store (idempotent).
    ///
    /// Clones --repo into --path (else $COMFY_HOME, else ./ComfyUI), checks out --ref, pins
    /// requirements.txt plus requests, and places the environment at PATH/venv, installed once
    /// per package set and linked from the store afterwards. A second run changes nothing and
    /// says so; another --ref moves the checkout and the environment to it. Then
    /// `comfystore lock PATH --tag v1` makes the first version.
    #[command(
        after_help = "Examples:\n  comfystore init --path /workspace/ComfyUI --ref v0.3.40\n  comfystore init --path /runpod-volume/ComfyUI --extra-index-url https://download.pytorch.org/whl/cu124\n  COMFY_HOME=/workspace/ComfyUI comfystore init --python 3.11"
    )]
    Init(InitArgs),
    /// Install a lock's Python environment into the store, without placing anything.
    ///
    /// What `materialize` does first: finds the environment of the lock's package set in the
    /// store, or installs it once from the store's wheels (no network; `fetch LOCK` first) and
    /// stores it. Useful to build an image layer, or to time the build alone. Prints the
    /// environment's tree id and whether it was installed now.
    #[command(
        after_help = "Examples:\n  comfystore env lockfiles/comfy-v1.lock.json\n  comfystore env lock.json --python /usr/bin/python3.11 --json"
    )]
    Env(EnvArgs),
}

#[derive(Args, Debug)]
pub struct EnvArgs {
    /// The lockfile whose python section names the environment.
    pub lock: PathBuf,
    /// Base interpreter: a path, a program, or a version (default: one that fits the lock).
    #[arg(long, env = "COMFYSTORE_PYTHON", value_name = "PYTHON")]
    pub python: Option<String>,
    /// Which installer builds the environment (auto: the one the lock's tree was built with).
    #[arg(long, value_enum, default_value = "auto")]
    pub installer: Resolver,
}

pub fn env(cli: &Cli, a: &EnvArgs) -> Result<u8> {
    let store = open_store(cli)?;
    let lock = Lockfile::read(&a.lock)?;
    let py = lock
        .python
        .as_ref()
        .with_context(|| format!("{} has no python section", a.lock.display()))?;
    let py = comfystore::python::EnvSpec::from(py);
    let base = comfystore::python::interpreter::find_for(&store, &py, a.python.as_deref())?;
    let started = std::time::Instant::now();
    let report = comfystore::python::ensure_env(&store, &py, &base, a.installer)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet {
        println!(
            "{}\t{} in {:.1} s",
            report.tree,
            if report.built {
                "installed"
            } else {
                "found in the store"
            },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}

/// Where requirements resolve from (shared by `pin` and `init`).
#[derive(Args, Debug, Clone)]
pub struct ResolveArgs {
    /// Interpreter to pin for: a path, a program, or a version (3.11).
    #[arg(long, env = "COMFYSTORE_PYTHON", value_name = "PYTHON")]
    pub python: Option<String>,
    /// Package index (PEP 503 simple URL) instead of the resolver's default (PyPI).
    #[arg(long, value_name = "URL")]
    pub index_url: Option<String>,
    /// Another index (repeatable), e.g. https://download.pytorch.org/whl/cu124.
    #[arg(long, value_name = "URL")]
    pub extra_index_url: Vec<String>,
    /// A folder of local wheels (repeatable).
    #[arg(long, value_name = "DIR")]
    pub wheels_dir: Vec<PathBuf>,
    /// Which resolver (and installer) to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub resolver: Resolver,
    #[command(flatten)]
    pub http: HttpArgs,
}

impl ResolveArgs {
    fn options(&self) -> PinOptions {
        PinOptions {
            python: self.python.clone(),
            index_url: self.index_url.clone(),
            extra_index_urls: self.extra_index_url.clone(),
            wheels_dirs: self.wheels_dir.clone(),
            offline: self.http.offline,
            resolver: self.resolver,
            // Wheel URLs and folders come from this command line (or the index it names).
            http: comfystore::http::HttpOptions {
                file_roots: None,
                ..self.http.options()
            },
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct PinArgs {
    /// The requirements file.
    pub requirements: PathBuf,
    /// Wheel platform tag to pin for, if not the interpreter's (manylinux_2_28_x86_64, macosx_14_0_arm64, …).
    #[arg(long, value_name = "TAG")]
    pub platform: Option<String>,
    /// Pin a package to this wheel (repeatable), e.g. a CUDA build of torch.
    #[arg(long, value_name = "URL")]
    pub wheel_url: Vec<String>,
    /// Write the pins into this lockfile's python section.
    #[arg(long, value_name = "LOCK", conflicts_with = "output")]
    pub lock: Option<PathBuf>,
    /// Write the pins to this file (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub resolve: ResolveArgs,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The ComfyUI folder.
    #[arg(
        long,
        env = "COMFY_HOME",
        default_value = "ComfyUI",
        value_name = "DIR"
    )]
    pub path: PathBuf,
    /// Branch, tag or commit to check out (default: the repository's default branch).
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// The ComfyUI repository.
    #[arg(long, default_value = COMFYUI_REPO, value_name = "URL")]
    pub repo: String,
    /// How the environment is placed from the store.
    #[arg(long, value_enum, default_value = "auto")]
    pub venv_link: LinkMode,
    #[command(flatten)]
    pub resolve: ResolveArgs,
}

pub fn pin(cli: &Cli, a: &PinArgs) -> Result<u8> {
    let store = open_store(cli)?;
    let opts = PinOptions {
        platform: a.platform.clone(),
        wheel_urls: a.wheel_url.clone(),
        ..a.resolve.options()
    };
    let report = comfystore::python::pin(&store, &a.requirements, &opts)?;
    let n = report.pins.python.packages.len();
    if let Some(path) = &a.lock {
        let mut lock = Lockfile::read(path)?;
        lock.python = Some(report.pins.python.clone().into());
        lock.canonicalize();
        let changed = lock.write(path)?;
        if !cli.quiet && !cli.json {
            eprintln!(
                "{}: pinned {n} packages ({} downloaded) with {:?}{}",
                path.display(),
                report.downloaded,
                report.resolver,
                if changed { "" } else { " (unchanged)" }
            );
        }
    } else if let Some(path) = &a.output {
        comfystore::store::write_file_atomic(path, &report.pins.to_bytes(), 0o644)
            .with_context(|| format!("write {}", path.display()))?;
        if !cli.quiet && !cli.json {
            eprintln!(
                "{}: pinned {n} packages ({} downloaded)",
                path.display(),
                report.downloaded
            );
        }
    } else if !cli.json {
        print!("{}", String::from_utf8_lossy(&report.pins.to_bytes()));
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(0)
}

pub fn init(cli: &Cli, a: &InitArgs) -> Result<u8> {
    let store = open_store(cli)?;
    let report = comfystore::pipeline::init::init(
        &store,
        &InitOptions {
            path: a.path.clone(),
            reference: a.reference.clone(),
            repo: a.repo.clone(),
            pin: a.resolve.options(),
            venv_link: a.venv_link,
        },
    )?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet {
        let what = if !report.changed {
            "already up to date".to_string()
        } else if report.cloned {
            "cloned".to_string()
        } else if report.moved {
            "moved".to_string()
        } else {
            "environment updated".to_string()
        };
        println!(
            "{}: {what} at {} ({} packages, environment {}{}, python {})",
            report.path.display(),
            &report.commit[..report.commit.len().min(12)],
            report.packages,
            report.env.tree,
            if report.env.built {
                ", installed now"
            } else {
                ", from the store"
            },
            report.python.display()
        );
        println!("next: comfystore lock {} --tag v1", report.path.display());
    }
    Ok(0)
}
