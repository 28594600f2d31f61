//! `push` and `pull`: the store's content in a GCS bucket (the remote tier), and the GCS
//! settings they and `--remote` share with outputs (GOOGLE_APPLICATION_CREDENTIALS,
//! STORAGE_EMULATOR_HOST, GCS_RETRIES, GCS_RETRY_BASE_SLEEP, GCS_CHUNK_MB).

use super::{open_store, Cli};
use anyhow::{Context, Result};
use clap::Args;
use comfystore::gcs;
use comfystore::lockfile::Lockfile;
use comfystore::pipeline::remote::{self, Remote};
use comfystore::store::{AnyId, ObjectId, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How the bucket is reached (the environment of GCS outputs).
#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    /// A service-account key file (JSON) for the remote.
    #[arg(
        long,
        env = "GOOGLE_APPLICATION_CREDENTIALS",
        value_name = "JSON",
        hide_env_values = true
    )]
    pub remote_credentials: Option<PathBuf>,
    /// Retries of a GCS request after its first try (on 408, 429, 5xx, connection errors).
    #[arg(long, env = "GCS_RETRIES", default_value_t = 5)]
    pub remote_retries: u32,
    /// First pause between tries (seconds, or a duration like 500ms); doubles each retry.
    #[arg(long, env = "GCS_RETRY_BASE_SLEEP", default_value = "1s", value_parser = super::outputs::seconds_or_duration)]
    pub remote_retry_base_sleep: Duration,
    /// Files larger than this many MB go up in a resumable session, in chunks of this size.
    #[arg(long, env = "GCS_CHUNK_MB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub remote_chunk_mb: u32,
    /// An emulator's address (fake-gcs-server): no credentials needed.
    #[arg(long, env = "STORAGE_EMULATOR_HOST", value_name = "HOST:PORT")]
    pub remote_emulator: Option<String>,
    /// Uploads or downloads in flight at once (each file is read, hashed and stored off the
    /// network's thread, so one big object does not hold up the others).
    #[arg(long, env = "COMFYSTORE_REMOTE_JOBS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub remote_jobs: u32,
}

impl RemoteArgs {
    /// The remote `url` names (`gs://BUCKET/PREFIX`); reads the credentials file, not the
    /// network.
    pub fn remote(&self, url: &str) -> Result<Remote> {
        let (bucket, prefix) = remote::parse_url(url)?;
        let mut opts = gcs::Options::new(&bucket);
        opts.emulator = self.remote_emulator.clone().filter(|e| !e.is_empty());
        opts.credentials = self
            .remote_credentials
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        opts.retries = self.remote_retries;
        opts.retry_base = self.remote_retry_base_sleep;
        opts.chunk = self.remote_chunk_mb as usize * 1024 * 1024;
        let client = gcs::Client::new(opts).with_context(|| format!("remote {url}"))?;
        Ok(Remote::new(Arc::new(client), &prefix))
    }
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// gs://BUCKET/PREFIX
    pub remote: String,
    /// Lockfiles or tree/object ids (b3:…, sha256:…); their whole closure goes up.
    #[arg(required = true, value_name = "LOCK|ID")]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub gcs: RemoteArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// gs://BUCKET/PREFIX
    pub remote: String,
    /// Lockfiles or tree/object ids (b3:…); what they name comes down.
    #[arg(required = true, value_name = "LOCK|ID")]
    pub targets: Vec<String>,
    /// Open no connection: report what the store lacks.
    #[arg(long)]
    pub offline: bool,
    /// Also keep the pulled ids through gc with this root (a LOCK is kept by `lock/<tag>`).
    #[arg(long, value_name = "NAME")]
    pub root: Option<String>,
    #[command(flatten)]
    pub gcs: RemoteArgs,
}

/// A target: a lockfile (an existing file) or an id.
enum Target {
    Lock(Box<Lockfile>),
    Id(ObjectId),
}

fn targets(store: &Store, targets: &[String]) -> Result<Vec<Target>> {
    targets
        .iter()
        .map(|t| {
            if Path::new(t).is_file() {
                return Ok(Target::Lock(Box::new(Lockfile::read(Path::new(t))?)));
            }
            let id = t
                .parse::<AnyId>()
                .with_context(|| format!("{t}: neither a lockfile nor an id"))?;
            Ok(Target::Id(store.resolve(&id)?))
        })
        .collect()
}

pub fn push(cli: &Cli, a: &PushArgs) -> Result<u8> {
    let store = open_store(cli)?;
    let remote = a.gcs.remote(&a.remote)?;
    if let Some(why) = remote.preflight(true)? {
        tracing::warn!("gcs: permission check skipped: {why}");
    }
    let jobs = a.gcs.remote_jobs as usize;
    let mut ids = Vec::new();
    let mut reports = Vec::new();
    for t in targets(&store, &a.targets)? {
        match t {
            Target::Id(id) => ids.push(id),
            Target::Lock(lock) => {
                reports.push(remote::push(&store, &remote, &[], Some(&lock), jobs)?)
            }
        }
    }
    if !ids.is_empty() {
        reports.push(remote::push(&store, &remote, &ids, None, jobs)?);
    }
    let sum = |f: fn(&remote::PushReport) -> u64| reports.iter().map(f).sum::<u64>();
    let total = serde_json::json!({
        "remote": remote.url(),
        "trees": sum(|r| r.trees),
        "objects": sum(|r| r.objects),
        "uploaded": sum(|r| r.uploaded),
        "uploaded_bytes": sum(|r| r.uploaded_bytes),
        "skipped": sum(|r| r.skipped),
        "skipped_bytes": sum(|r| r.skipped_bytes),
        "locks": reports.iter().filter_map(|r| r.lock.clone()).collect::<Vec<_>>(),
    });
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&total)?);
    } else if !cli.quiet {
        eprintln!(
            "{}: uploaded {} ({} bytes), {} already there ({} bytes)",
            remote.url(),
            total["uploaded"],
            total["uploaded_bytes"],
            total["skipped"],
            total["skipped_bytes"]
        );
    }
    Ok(0)
}

pub fn pull(cli: &Cli, a: &PullArgs) -> Result<u8> {
    let store = open_store(cli)?;
    let remote = a.gcs.remote(&a.remote)?;
    let jobs = a.gcs.remote_jobs as usize;
    let mut ids = Vec::new();
    let mut models = Vec::new();
    let mut locks = Vec::new();
    let mut git = Vec::new();
    for t in targets(&store, &a.targets)? {
        match t {
            Target::Id(id) => ids.push(id),
            Target::Lock(lock) => {
                ids.extend(lock.store_ids());
                models.extend(lock.models.iter().map(|m| (m.sha256, m.blake3)));
                git.extend(remote::treeless_sources(&lock));
                locks.push(*lock);
            }
        }
    }
    let report = remote::pull_rooted(
        &store,
        &remote,
        &ids,
        &models,
        &git,
        jobs,
        a.offline,
        a.root.as_deref(),
    )?;
    for lock in &locks {
        comfystore::pipeline::fetch::pin_lock(&store, lock)?;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet {
        eprintln!(
            "{}: pulled {} trees and {} objects ({} bytes), {} already in the store",
            report.remote, report.trees, report.objects, report.bytes, report.present
        );
        for (what, why) in &report.failed {
            eprintln!("failed: {what}: {why}");
        }
    }
    Ok(if report.complete() {
        0
    } else {
        super::EXIT_FAILURE
    })
}
