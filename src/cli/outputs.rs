//! Where `run-job` and `serve` send output files: base64 in the answer (worker-comfyui's
//! default) or Google Cloud Storage, configured by flags and the environment
//! (docs/runpod.md, "Outputs in Google Cloud Storage").

use anyhow::{Context, Result};
use clap::Args;
use comfystore::gcs;
use comfystore::worker::sink::{self, GcsOptions, GcsUrl, Sink};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How output files are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    /// The bytes, base64-encoded, in the answer.
    Base64,
    /// Uploaded to GCS; the answer has a URL.
    Gcs,
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Where output files go [default: gcs when --gcs-bucket is set, else base64].
    #[arg(long, env = "OUTPUT_MODE", value_enum)]
    pub output_mode: Option<OutputMode>,
    /// The GCS bucket for output files.
    #[arg(long, env = "GCS_BUCKET", value_name = "BUCKET")]
    pub gcs_bucket: Option<String>,
    /// Objects are PREFIX/JOB_ID/FILENAME.
    #[arg(long, env = "GCS_PREFIX", default_value = "comfy/outputs")]
    pub gcs_prefix: String,
    /// The project, for messages (GOOGLE_CLOUD_PROJECT is read too); uploads do not need it.
    #[arg(long, env = "GCS_PROJECT", value_name = "PROJECT")]
    pub gcs_project: Option<String>,
    /// A service-account key file (JSON).
    #[arg(
        long,
        env = "GOOGLE_APPLICATION_CREDENTIALS",
        value_name = "JSON",
        hide_env_values = true
    )]
    pub gcs_credentials: Option<PathBuf>,
    /// Retries of a GCS request after its first try (on 408, 429, 5xx, connection errors).
    #[arg(long, env = "GCS_RETRIES", default_value_t = 5)]
    pub gcs_retries: u32,
    /// First pause between tries (seconds, or a duration like 500ms); doubles each retry.
    #[arg(long, env = "GCS_RETRY_BASE_SLEEP", default_value = "1s", value_parser = seconds_or_duration)]
    pub gcs_retry_base_sleep: Duration,
    /// Answer with the object's public URL (the bucket must be readable) instead of a signed one.
    #[arg(long, env = "GCS_PUBLIC", value_parser = clap::builder::BoolishValueParser::new())]
    pub gcs_public: bool,
    /// Lifetime of the V4 signed URL answered (seconds or a duration; at most 7d) [default: 7d].
    #[arg(long, env = "GCS_SIGNED_URL_TTL", value_parser = seconds_or_duration)]
    pub gcs_signed_url_ttl: Option<Duration>,
    /// A file whose upload failed is answered as base64 when it is at most this many MB
    /// (the failure is in `errors`); 0: never, the file is only listed in `errors`.
    #[arg(long, env = "GCS_FALLBACK_MAX_MB", default_value_t = 10)]
    pub gcs_fallback_max_mb: usize,
    /// Files larger than this many MB go up in a resumable session, in chunks of this size.
    #[arg(long, env = "GCS_CHUNK_MB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub gcs_chunk_mb: u32,
    /// An emulator's address (fake-gcs-server): no credentials needed, no IAM check.
    #[arg(long, env = "STORAGE_EMULATOR_HOST", value_name = "HOST:PORT")]
    pub gcs_emulator: Option<String>,
}

/// `3600`, `0.5` (seconds) or `1h`, `500ms`.
pub(super) fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// The sink the flags ask for (`None`: base64), checked against GCS before any job: the
/// credentials give a token and hold the permissions (testIamPermissions). `rt` is the
/// worker's runtime.
pub fn sink(a: &OutputArgs, rt: tokio::runtime::Handle) -> Result<Option<Box<dyn Sink>>> {
    let mode = a.output_mode.unwrap_or(if a.gcs_bucket.is_some() {
        OutputMode::Gcs
    } else {
        OutputMode::Base64
    });
    if mode == OutputMode::Base64 {
        return Ok(None);
    }
    let Some(bucket) = a.gcs_bucket.as_deref().filter(|b| !b.is_empty()) else {
        anyhow::bail!("OUTPUT_MODE=gcs needs a bucket: set GCS_BUCKET (or --gcs-bucket)");
    };
    let url = match (a.gcs_public, a.gcs_signed_url_ttl) {
        (true, Some(_)) => anyhow::bail!(
            "GCS_PUBLIC and GCS_SIGNED_URL_TTL both set: answer with a public URL or a signed one"
        ),
        (true, None) => GcsUrl::Public,
        (false, ttl) => {
            let ttl = ttl.unwrap_or(gcs::MAX_TTL);
            anyhow::ensure!(
                !ttl.is_zero() && ttl <= gcs::MAX_TTL,
                "GCS_SIGNED_URL_TTL is {}: a V4 signed URL is valid at most 7 days",
                humantime::format_duration(ttl)
            );
            GcsUrl::Signed(ttl)
        }
    };
    let mut opts = gcs::Options::new(bucket);
    opts.emulator = a.gcs_emulator.clone().filter(|e| !e.is_empty());
    opts.credentials = a
        .gcs_credentials
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    opts.retries = a.gcs_retries;
    opts.retry_base = a.gcs_retry_base_sleep;
    opts.chunk = a.gcs_chunk_mb as usize * 1024 * 1024;
    let client = gcs::Client::new(opts).context("GCS outputs")?;
    if matches!(url, GcsUrl::Signed(_)) && !client.can_sign() {
        anyhow::bail!(
            "GCS outputs: signed URLs need a service-account key (GOOGLE_APPLICATION_CREDENTIALS); \
             or set GCS_PUBLIC=1 to answer with public URLs"
        );
    }
    let project = a
        .gcs_project
        .clone()
        .or_else(|| std::env::var("GOOGLE_CLOUD_PROJECT").ok())
        .unwrap_or_default();
    let mut wanted = vec!["storage.objects.create"];
    if matches!(url, GcsUrl::Signed(_)) {
        wanted.push("storage.objects.get");
    }
    let checked = rt
        .block_on(client.preflight(&wanted))
        .with_context(|| format!("GCS outputs to bucket {bucket}"))?;
    match checked {
        gcs::Preflight::Granted => tracing::info!(
            "gcs: outputs go to gs://{bucket}/{}/ (project {project:?}); {} granted",
            a.gcs_prefix.trim_matches('/'),
            wanted.join(", ")
        ),
        gcs::Preflight::Skipped(why) => tracing::warn!(
            "gcs: permission check skipped: {why}; outputs go to gs://{bucket}/{}/",
            a.gcs_prefix.trim_matches('/')
        ),
    }
    let sink = sink::Gcs::new(
        Arc::new(client),
        rt,
        GcsOptions {
            prefix: a.gcs_prefix.clone(),
            url,
            fallback_max: a.gcs_fallback_max_mb * 1000 * 1000,
        },
    );
    Ok(Some(Box::new(sink)))
}
