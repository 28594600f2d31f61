//! `run-job`: one job from a file, on a version materialized (and checked) from a lock.

use super::{open_store, Cli, SourceArgs};
use anyhow::{Context, Result};
use clap::Args;
use comfystore::comfy::supervisor::{ComfyCommand, Supervisor};
use comfystore::lockfile::Lockfile;
use comfystore::pipeline::materialize::{self, LockOptions};
use comfystore::pipeline::version::VENV_DIR;
use comfystore::place;
use comfystore::store::Store;
use comfystore::worker::runner::{Worker, WorkerOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where ComfyUI runs and how (shared by the worker commands).
#[derive(Args, Debug)]
pub struct ComfyArgs {
    /// The lockfile of the version to run; materialized (or checked) at --dest first.
    #[arg(long, env = "COMFYSTORE_LOCK", value_name = "LOCK")]
    pub lock: Option<PathBuf>,
    /// The version's folder.
    #[arg(
        long,
        env = "COMFY_HOME",
        default_value = "/workspace/comfyui",
        value_name = "DIR"
    )]
    pub dest: PathBuf,
    /// Keep the version's models in this shared folder (e.g. on the network volume).
    #[arg(long, env = "COMFYSTORE_MODELS_DIR", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    #[command(flatten)]
    pub run: ComfyRunArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
    #[command(flatten)]
    pub outputs: super::outputs::OutputArgs,
}

/// How ComfyUI is started and how long it and its jobs may take (shared by the commands that
/// run jobs: `run-job`, `serve`, `repro run`).
#[derive(Args, Debug)]
pub struct ComfyRunArgs {
    /// ComfyUI's port on 127.0.0.1.
    #[arg(long, env = "COMFY_PORT", default_value_t = 8188)]
    pub comfy_port: u16,
    /// An argument for ComfyUI (repeatable), e.g. --comfy-arg=--cpu.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub comfy_arg: Vec<String>,
    /// The name of one more environment variable ComfyUI gets (repeatable; the variable
    /// gives several, space-separated). By default it gets only paths, caches, locale, Python
    /// and GPU settings: no token or key (docs/runpod.md lists them).
    #[arg(
        long,
        env = "COMFYSTORE_COMFY_ENV",
        value_name = "NAME",
        value_delimiter = ' '
    )]
    pub comfy_env: Vec<String>,
    /// Time limit of a job without `timeout_s`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,
    /// A running ComfyUI that answers nothing for this long is hung, and is restarted.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub hang_timeout: Duration,
    /// How long ComfyUI may take to start.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Largest job input in MB (RunPod allows 10 for /run, 20 for /runsync).
    #[arg(long, env = "COMFYSTORE_MAX_INPUT_MB", default_value_t = 20)]
    pub max_input_mb: usize,
}

#[derive(Args, Debug)]
pub struct RunJobArgs {
    /// The job: `{"input": {"workflow": …, "images": […]}}` (the SDK's test_input.json), or
    /// the input alone; - for stdin.
    pub input: PathBuf,
    #[command(flatten)]
    pub comfy: ComfyArgs,
}

/// A worker on the version: materialized from the lock when one is given.
///
/// A warm start (DEST holds a complete marker: it was placed before) starts ComfyUI at once
/// and checks the version against the lock while ComfyUI imports its modules; if the check
/// wrote anything (a repair, or a switch to another version), that ComfyUI is stopped and a
/// new one started on the version as it now is. The worker is handed back only once the
/// check has passed, so no job runs on a version that failed it (docs/runpod.md, "Cold
/// start"). A first start (no complete marker) places the version before starting ComfyUI.
pub fn worker(cli: &Cli, a: &ComfyArgs) -> Result<Worker> {
    let store = Arc::new(open_store(cli)?);
    let Some(lock) = &a.lock else {
        return with_sink(worker_at(store, &a.dest, &a.run)?, a);
    };
    let lock = Lockfile::read(lock)?;
    let opts = LockOptions {
        models_dir: a.models_dir.clone(),
        fetch: a.sources.options()?,
        ..LockOptions::default()
    };
    let place_version = || {
        materialize::materialize_lock(&store, &lock, &a.dest, &opts)
            .with_context(|| format!("materialize {} at {}", lock.tag, a.dest.display()))
    };
    let marker = std::path::absolute(&a.dest)?.join(place::MARKER_NAME);
    let placed = place::read_marker(&store, &a.dest)
        .ok()
        .and_then(|m| m.marker)
        .is_some_and(|m| m.complete);
    // A complete marker whose version cannot even be started (main.py or the interpreter
    // gone) is not worth a start: placed first, as on a first start.
    let started = match placed.then(|| worker_at(store.clone(), &a.dest, &a.run)) {
        Some(Ok(mut w)) => {
            w.sup.start()?;
            Some(w)
        }
        Some(Err(e)) => {
            tracing::debug!("not started before the check: {e:#}");
            None
        }
        None => None,
    };
    let Some(w) = started else {
        place_version()?;
        return with_sink(worker_at(store.clone(), &a.dest, &a.run)?, a);
    };
    let before = std::fs::read(&marker).ok();
    // The check (and repair) beside ComfyUI's start, and the sink's preflight meanwhile.
    let (checked, w) = std::thread::scope(|s| {
        let check = s.spawn(|| beside_comfyui(place_version));
        let w = with_sink(w, a);
        let checked = check
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (checked, w)
    });
    // On an error both go: `w` (its ComfyUI stopped on drop) and the check's error.
    let (report, w) = (checked?, w?);
    let changed = wrote(&report) || std::fs::read(&marker).ok() != before;
    if !changed {
        tracing::info!(
            "{}: intact for {} (checked while ComfyUI started)",
            a.dest.display(),
            lock.tag
        );
        return Ok(w);
    }
    tracing::warn!(
        "{}: {} entries written and {} removed to make it {}: the ComfyUI spawned before the \
         check is stopped, and a new one spawned on the version as it now is",
        a.dest.display(),
        report.version.written,
        report.version.removed,
        lock.tag
    );
    drop(w);
    with_sink(worker_at(store, &a.dest, &a.run)?, a)
}

/// Run the warm start's check at a lower CPU priority ([`comfystore::process::at_low_priority`]): on a
/// machine with few cores the check's CPU would otherwise slow ComfyUI's import, which it runs
/// beside (measured: ComfyUI answered 0.26 s later on 2 cores). It still ends long before
/// ComfyUI answers.
fn beside_comfyui<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    comfystore::process::at_low_priority(f)
}

/// Whether placing the version changed anything ComfyUI reads.
fn wrote(r: &materialize::LockReport) -> bool {
    let placed =
        |m: &place::MaterializeReport| m.written > 0 || m.removed > 0 || !m.kept_edits.is_empty();
    placed(&r.version)
        || r.venv.as_ref().is_some_and(placed)
        || r.models.as_ref().is_some_and(placed)
}

/// `w` with the output sink the flags ask for. Checked before the first job: a bucket without
/// the permissions stops here.
fn with_sink(w: Worker, a: &ComfyArgs) -> Result<Worker> {
    Ok(match super::outputs::sink(&a.outputs, w.runtime())? {
        Some(sink) => w.with_sink(sink),
        None => w,
    })
}

/// A worker on the version materialized at `dest` (ComfyUI not started yet); its outputs go
/// into `store`.
pub fn worker_at(store: Arc<Store>, dest: &Path, a: &ComfyRunArgs) -> Result<Worker> {
    let dest = std::path::absolute(dest)?;
    let layout = place::read_marker(&store, &dest)?.layout;
    let venv = layout.venv.clone().unwrap_or_else(|| dest.join(VENV_DIR));
    // Models in a shared folder are named by the generated extra_model_paths.yaml.
    let extra_model_paths = layout
        .models_dir
        .as_ref()
        .map(|_| dest.join(comfystore::pipeline::version::EXTRA_MODEL_PATHS))
        .filter(|p| p.is_file());
    let python = venv.join("bin/python");
    anyhow::ensure!(
        dest.join("main.py").is_file() && python.exists(),
        "{}: no ComfyUI version here (main.py and {}); pass --lock to materialize one",
        dest.display(),
        python.display()
    );
    let sup = Supervisor::new(ComfyCommand {
        dest,
        python,
        port: a.comfy_port,
        args: a.comfy_arg.clone(),
        extra_model_paths,
        hang: a.hang_timeout,
        pass_env: a
            .comfy_env
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect(),
    });
    let mut opts = WorkerOptions {
        job_timeout: a.job_timeout,
        ready_timeout: a.ready_timeout,
        ..WorkerOptions::default()
    };
    opts.limits.input_bytes = a.max_input_mb * 1000 * 1000;
    Ok(Worker::new(sup, Some(store), opts)?)
}

pub fn run_job(cli: &Cli, a: &RunJobArgs) -> Result<u8> {
    let text = if a.input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.input).with_context(|| format!("read {}", a.input.display()))?
    };
    let job: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            let answer = comfystore::worker::job::error_answer(
                &format!("Invalid JSON format in {}: {e}", a.input.display()),
                &[],
            );
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(super::EXIT_FAILURE);
        }
    };
    let id = job
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("local-test")
        .to_string();
    let input = job.get("input").cloned().unwrap_or(job);
    let mut w = worker(cli, &a.comfy)?;
    let answer = w.run(&id, &input);
    w.sup.stop(Duration::from_secs(10));
    match answer {
        Ok(out) => {
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        Err(err) => {
            println!("{}", serde_json::to_string_pretty(&err)?);
            Ok(super::EXIT_FAILURE)
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Serve RunPod's endpoint routes here instead (/run, /runsync, /status/ID, /health),
    /// like the SDK's --rp_serve_api, for local testing.
    #[arg(long, value_name = "ADDR")]
    pub api: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub comfy: ComfyArgs,
}

/// The long-running worker: RunPod's job protocol when the platform's variables are set.
pub fn serve(cli: &Cli, a: &ServeArgs) -> Result<u8> {
    if let Some(addr) = a.api {
        let mut w = worker(cli, &a.comfy)?;
        w.ready()?;
        comfystore::worker::local_api::serve(w, addr)?;
        return Ok(0);
    }
    let Some(cfg) = comfystore::worker::runpod::RunPodConfig::from_env() else {
        anyhow::bail!(
            "RUNPOD_WEBHOOK_GET_JOB is not set: `serve` takes jobs from RunPod (on a serverless \
             worker the platform sets it); to run one job here, use `comfystore run-job INPUT.json`"
        );
    };
    tracing::debug!("{cfg:?}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    use comfystore::worker::runpod;
    // Pinging from the start: the platform sees the worker alive while it materializes the
    // version and starts ComfyUI.
    let heartbeat = runpod::Heartbeat::start(&cfg)?;
    let mut w = match worker(cli, &a.comfy) {
        Ok(w) => w,
        Err(e) => {
            runpod::report_unhealthy(&cfg, "setup", &format!("{e:#}"));
            return Err(e);
        }
    };
    // ComfyUI starts before the first job is taken, so a job never pays the start-up.
    if let Err(e) = w.ready() {
        runpod::report_unhealthy(&cfg, "comfyui", &e.to_string());
        return Err(e.into());
    }
    runpod::serve(&mut w, &cfg, &heartbeat, stop)?;
    w.sup.stop(Duration::from_secs(10));
    Ok(0)
}
