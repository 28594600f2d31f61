//! RunPod's serverless worker protocol, as runpod-python speaks it (v1.12): take a job by long
//! poll, run it, post the result; a heartbeat names the job in progress; a stop channel
//! interrupts a cancelled job. No Python SDK needed.
//!
//! The platform sets the URL templates and the key in the environment. Every call carries the
//! key verbatim as `Authorization` (no "Bearer"). The key is never logged.

use super::error::Error;
use super::job::pop_error;
use super::runner::Worker;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// The runpod-python version whose protocol this worker speaks, sent as the heartbeat's
/// `runpod_version` (the platform reads an SDK version there, as every SDK worker sends one).
pub const SDK_VERSION: &str = "1.12.0";

/// Who we are, on every call to the platform: comfystore and its version, then the SDK
/// version it is compatible with.
pub fn user_agent() -> String {
    format!(
        "comfystore/{} (RunPod-Python-SDK/{SDK_VERSION} compatible; {} {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The platform's settings, from `RUNPOD_*` variables.
#[derive(Clone)]
pub struct RunPodConfig {
    pub get_job: String,
    pub post_output: String,
    pub ping: Option<String>,
    pub api_key: Option<String>,
    pub worker_id: String,
    pub ping_interval: Duration,
    /// `REFRESH_WORKER=true` (worker-comfyui's variable): one job per worker. Its result
    /// carries `"stopPod": true` and the worker exits after it, so the platform starts a fresh
    /// one, as the SDK does with `refresh_worker`.
    pub refresh_worker: bool,
}

impl std::fmt::Debug for RunPodConfig {
    /// Everything but the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPodConfig")
            .field("get_job", &self.get_job)
            .field("post_output", &self.post_output)
            .field("ping", &self.ping)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("worker_id", &self.worker_id)
            .field("ping_interval", &self.ping_interval)
            .field("refresh_worker", &self.refresh_worker)
            .finish()
    }
}

impl RunPodConfig {
    /// `None` unless `RUNPOD_WEBHOOK_GET_JOB` is set (the platform's mark of production).
    pub fn from_env() -> Option<RunPodConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let get_job = var("RUNPOD_WEBHOOK_GET_JOB")?;
        let worker_id = var("RUNPOD_POD_ID").unwrap_or_else(|| {
            let mut r = [0u8; 8];
            let _ = getrandom::fill(&mut r);
            hex::encode(r)
        });
        let gpu = var("RUNPOD_GPU_TYPE_ID").unwrap_or_default();
        // $RUNPOD_POD_ID and $RUNPOD_GPU_TYPE_ID everywhere; $ID in the take URL is the worker
        // (legacy), in the output URL the job (per request).
        let fill = |t: String| {
            t.replace("$RUNPOD_POD_ID", &worker_id)
                .replace("$RUNPOD_GPU_TYPE_ID", &gpu)
        };
        Some(RunPodConfig {
            get_job: fill(get_job).replace("$ID", &worker_id),
            post_output: fill(var("RUNPOD_WEBHOOK_POST_OUTPUT").unwrap_or_default()),
            ping: var("RUNPOD_WEBHOOK_PING").map(fill),
            api_key: var("RUNPOD_AI_API_KEY"),
            ping_interval: ping_interval(var("RUNPOD_PING_INTERVAL").as_deref()),
            // As worker-comfyui reads it.
            refresh_worker: var("REFRESH_WORKER").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            worker_id,
        })
    }
}

/// The heartbeat's period from `RUNPOD_PING_INTERVAL` (ms; 10 s when unset or not a number),
/// at least 100 ms: `0` would ping in a loop.
fn ping_interval(ms: Option<&str>) -> Duration {
    let ms = ms.and_then(|v| v.trim().parse().ok()).unwrap_or(10_000u64);
    Duration::from_millis(ms.max(100))
}

/// `url` with more query parameters (`?` or `&` as the template needs).
fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    if q.is_empty() {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{q}")
}

/// The job a worker holds now, shared with the heartbeat and the stop channel.
type Current = Arc<Mutex<Option<String>>>;

/// The job the stop channel stopped, if any: its result is not posted.
type Stopped = Arc<Mutex<Option<String>>>;

/// The heartbeat, from the worker's start (before the version is materialized and ComfyUI
/// answers, as the SDK pings from its start) until this is dropped. It runs on a thread of its
/// own, so nothing the worker does delays it; it names the job in progress.
pub struct Heartbeat {
    current: Current,
    /// Wakes the thread to end (when there is one: the platform gave a ping URL).
    end: Option<Arc<tokio::sync::Notify>>,
}

impl Heartbeat {
    /// Start pinging, when the platform gives a ping URL.
    pub fn start(cfg: &RunPodConfig) -> Result<Heartbeat, Error> {
        let current: Current = Arc::new(Mutex::new(None));
        let Some(url) = cfg.ping.clone() else {
            return Ok(Heartbeat { current, end: None });
        };
        let http = client(cfg, cfg.ping_interval * 2)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let end = Arc::new(tokio::sync::Notify::new());
        let (every, job, ended) = (cfg.ping_interval, current.clone(), end.clone());
        std::thread::Builder::new()
            .name("runpod-heartbeat".into())
            .spawn(move || rt.block_on(heartbeat(http, url, every, job, ended)))
            .map_err(Error::Runtime)?;
        Ok(Heartbeat {
            current,
            end: Some(end),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(end) = &self.end {
            end.notify_one();
        }
    }
}

/// Tell the platform that the worker could not start, before it exits: one ping with
/// `status=unhealthy`, `check` (what failed) and `reason` (its first 256 characters, every
/// secret of the environment replaced by `***`), retried as pings are. The SDK reports a
/// failed fitness check the same way.
pub fn report_unhealthy(cfg: &RunPodConfig, check: &str, reason: &str) {
    let Some(url) = cfg.ping.clone() else {
        return;
    };
    let reason = unhealthy_reason(reason, cfg.api_key.as_deref());
    tracing::warn!("reporting the worker unhealthy ({check}): {reason}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (Ok(rt), Ok(http)) = (rt, client(cfg, Duration::from_secs(10))) else {
        return;
    };
    let params = [
        ("status", "unhealthy"),
        ("check", check),
        ("reason", reason.as_str()),
        ("runpod_version", SDK_VERSION),
    ];
    rt.block_on(ping(&http, || with_query(&url, &params)));
}

/// `reason` without the values of the credential variables (and the RunPod key), cut to 256
/// characters as the SDK cuts it.
fn unhealthy_reason(reason: &str, api_key: Option<&str>) -> String {
    let values: Vec<String> = crate::secret::SECRET_VARS
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .chain(api_key.map(String::from))
        .collect();
    let secrets: Vec<&str> = values.iter().map(String::as_str).collect();
    crate::secret::redact_all(reason, &secrets)
        .chars()
        .take(256)
        .collect()
}

/// Take jobs until `stop` is set (SIGTERM): long-poll, run, post the result. The job in
/// progress when SIGTERM arrives is finished first. Runs on the worker's runtime; ComfyUI
/// must be ready (the heartbeat started before, so the platform sees the worker alive while
/// it starts).
pub fn serve(
    worker: &mut Worker,
    cfg: &RunPodConfig,
    heartbeat: &Heartbeat,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    let rt = worker.runtime();
    let current = heartbeat.current.clone();
    let http = client(cfg, Duration::from_secs(100))?;
    let stopped: Stopped = Arc::new(Mutex::new(None));
    // It ends with this function, as the loop does.
    let _stop_channel =
        stop_channel_task(&rt, cfg, &http, worker.comfy(), (&current, &stopped), &stop);
    tracing::info!("RunPod worker {} taking jobs", cfg.worker_id);
    let mut pace = Pace::default();
    while !stop.load(Ordering::SeqCst) {
        let asked = Instant::now();
        let (id, input) = match take(&rt, &http, cfg) {
            Taken::Job(id, input) => {
                pace.answered();
                (id, input)
            }
            Taken::Empty => {
                pace.answered();
                pause(&stop, EMPTY_POLL.saturating_sub(asked.elapsed()));
                continue;
            }
            Taken::TooMany => {
                pause(&stop, pace.failed().max(TOO_MANY));
                continue;
            }
            Taken::Failed => {
                pause(&stop, pace.failed());
                continue;
            }
        };
        set_current(&current, Some(id.clone()));
        let mut result = run_job(worker, &rt, &http, cfg, (&id, &stopped), &input);
        if cfg.refresh_worker {
            result["stopPod"] = Value::Bool(true);
        }
        // A stopped job is cancelled on the platform's side: like the SDK, which cancels the
        // handler, nothing is posted, neither the interrupted job's error nor the output of
        // one that completed anyway (ComfyUI checks for an interrupt between nodes).
        if was_stopped(&stopped, &id) {
            tracing::info!("job {id}: stopped by the platform; no result posted");
        } else {
            post_result(&rt, &http, cfg, &id, &result);
        }
        set_current(&current, None);
        if let Ok(mut s) = stopped.lock() {
            *s = None;
        }
        if cfg.refresh_worker {
            tracing::info!("REFRESH_WORKER: leaving after job {id}, for a fresh worker");
            return Ok(());
        }
    }
    tracing::info!("RunPod worker stopping (SIGTERM)");
    Ok(())
}

/// The shortest time between two takes (and two stop-channel polls) when the platform
/// answers "no job" at once. RunPod holds a take open (a long poll, up to 90 s), so the SDK
/// asks again at once; a platform (or proxy) that answers 204 immediately would make it spin.
/// Its stop channel, and older SDKs' take loop, wait 1 s after an empty answer: so do we.
pub const EMPTY_POLL: Duration = Duration::from_secs(1);
/// The pause after a 429, as the SDK's ("debounce for 5 seconds").
pub const TOO_MANY: Duration = Duration::from_secs(5);
/// Back-off after failed polls (no answer, 5xx, garbage): 1 s doubling up to this, with
/// jitter (each pause is drawn from its upper half), back to 1 s after an answer.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Exponential back-off with jitter for one polling loop.
#[derive(Default)]
struct Pace {
    failures: u32,
}

impl Pace {
    fn answered(&mut self) {
        self.failures = 0;
    }

    /// One more failure: how long to wait before the next poll.
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        crate::backoff::jittered(Duration::from_secs(1), self.failures, BACKOFF_CAP)
    }
}

/// Sleep `d`, in short steps, returning early once `stop` is set (SIGTERM is not delayed by
/// a back-off).
fn pause(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Whether the stop channel stopped job `id`.
fn was_stopped(stopped: &Stopped, id: &str) -> bool {
    stopped
        .lock()
        .ok()
        .is_some_and(|s| s.as_deref() == Some(id))
}

/// The stop channel (on the job-take protocol), as a task on the runtime that ends when the
/// handle is dropped.
fn stop_channel_task(
    rt: &Handle,
    cfg: &RunPodConfig,
    http: &reqwest::Client,
    comfy: &crate::comfy::Client,
    (current, stopped): (&Current, &Stopped),
    stop: &Arc<AtomicBool>,
) -> Option<AbortOnDrop> {
    if !cfg.get_job.contains("/job-take/") {
        return None;
    }
    let url = cfg.get_job.replace("/job-take/", "/job-stop/");
    Some(AbortOnDrop(rt.spawn(stop_channel(
        http.clone(),
        url,
        comfy.clone(),
        (current.clone(), stopped.clone()),
        stop.clone(),
    ))))
}

/// What a take gave.
enum Taken {
    /// A job: its id and input.
    Job(String, Value),
    /// No job (204, 400 under FlashBoot, an empty body).
    Empty,
    /// 429: asked to slow down.
    TooMany,
    /// No answer, an error status, or an answer that is not a job.
    Failed,
}

/// 1. Long-poll for a job.
fn take(rt: &Handle, http: &reqwest::Client, cfg: &RunPodConfig) -> Taken {
    let take = with_query(&cfg.get_job, &[("job_in_progress", "0")]);
    let job = rt.block_on(async {
        let r = http.get(&take).send().await?;
        let status = r.status().as_u16();
        let body = r.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    let mut job: Value = match job {
        Ok((200, body)) if !body.is_empty() => match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("job take: not JSON: {e}");
                return Taken::Failed;
            }
        },
        Ok((200 | 204 | 400, _)) => return Taken::Empty,
        Ok((429, _)) => return Taken::TooMany,
        Ok((status, _)) => {
            tracing::warn!("job take: HTTP {status}");
            return Taken::Failed;
        }
        Err(e) => {
            tracing::warn!("job take: {e}");
            return Taken::Failed;
        }
    };
    let id = job.get("id").and_then(Value::as_str).map(String::from);
    let (Some(id), Some(input)) = (id, job.get_mut("input").map(Value::take)) else {
        tracing::warn!("job take: a job without id or input");
        return Taken::Failed;
    };
    Taken::Job(id, input)
}

/// 2. Run the job, posting its progress at most once a second, as the SDK's progress_update
///    posts it; the result to post.
fn run_job(
    worker: &mut Worker,
    rt: &Handle,
    http: &reqwest::Client,
    cfg: &RunPodConfig,
    (id, stopped): (&str, &Stopped),
    input: &Value,
) -> Value {
    let mut last: Option<std::time::Instant> = None;
    let progress_url = with_query(
        &cfg.post_output.replace("$ID", id),
        &[("isStream", "false")],
    );
    let mut on_progress = |p: &Value| {
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) || was_stopped(stopped, id) {
            return;
        }
        last = Some(std::time::Instant::now());
        let body = json!({ "status": "IN_PROGRESS", "output": p });
        let _ = rt.block_on(async {
            http.post(&progress_url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("X-Request-ID", id)
                .body(body.to_string())
                .send()
                .await
        });
    };
    match worker.run_with_progress(id, input, &mut on_progress) {
        Ok(output) => json!({ "output": output }),
        Err(err) => failed_result(err),
    }
}

/// A failed job's result as the SDK makes it of worker-comfyui's answer: `error` popped to the
/// top, the rest as the output, and no output when nothing is left (worker-comfyui gives no
/// `details` when it has none, and the SDK drops an empty output).
fn failed_result(answer: Value) -> Value {
    let (error, mut output) = pop_error(answer);
    if let Some(o) = output.as_object_mut() {
        if o.get("details")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            o.remove("details");
        }
    }
    let mut result = json!({ "error": error.unwrap_or(Value::String("job failed".into())) });
    if !output.as_object().is_some_and(|o| o.is_empty()) {
        result["output"] = output;
    }
    result
}

fn set_current(current: &Current, job: Option<String>) {
    if let Ok(mut c) = current.lock() {
        *c = job;
    }
}

/// A task that ends when this goes out of scope.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn client(cfg: &RunPodConfig, timeout: Duration) -> Result<reqwest::Client, Error> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = &cfg.api_key {
        let mut v = reqwest::header::HeaderValue::from_str(k).map_err(|_| Error::ApiKey)?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(user_agent())
        .timeout(timeout)
        .build()
        .map_err(Error::RunPodClient)
}

/// 3. POST the result, 3 tries (1 s, 2 s apart) when the platform cannot be reached or answers
///    5xx; a 4xx is its final word (the SDK retries the same way). A result that cannot be
///    delivered is logged: the platform then retries or times the job out.
fn post_result(rt: &Handle, http: &reqwest::Client, cfg: &RunPodConfig, id: &str, result: &Value) {
    let url = with_query(
        &cfg.post_output.replace("$ID", id),
        &[("isStream", "false")],
    );
    let body = serde_json::to_vec(result).unwrap_or_default();
    for attempt in 1..=3u64 {
        let r = rt.block_on(async {
            http.post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("charset", "utf-8")
                .header("X-Request-ID", id)
                .body(body.clone())
                .send()
                .await?
                .error_for_status()
        });
        let Err(e) = r else { return };
        if e.status().is_some_and(|s| !s.is_server_error()) {
            tracing::warn!("job {id}: the platform refused the result: {e}");
            return;
        }
        tracing::warn!("job {id}: posting the result failed (try {attempt} of 3): {e}");
        if attempt < 3 {
            std::thread::sleep(Duration::from_secs(attempt));
        }
    }
}

async fn heartbeat(
    http: reqwest::Client,
    url: String,
    every: Duration,
    current: Current,
    end: Arc<tokio::sync::Notify>,
) {
    loop {
        ping(&http, || {
            let job = current.lock().ok().and_then(|c| c.clone());
            let mut params = vec![("runpod_version", SDK_VERSION)];
            if let Some(j) = job.as_deref() {
                params.insert(0, ("job_id", j));
            }
            with_query(&url, &params)
        })
        .await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = end.notified() => return,
        }
    }
}

/// Pauses before the retries of a ping the platform answered 429 or 5xx, or did not answer
/// (the SDK's urllib3 `Retry(3, backoff_factor=1)`: three retries, backing off).
const PING_RETRIES: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// One ping, to the URL `url` gives at each try (so a retry names the job in progress then);
/// retried on 429, 5xx and no answer. The answer is not read.
async fn ping(http: &reqwest::Client, url: impl Fn() -> String) {
    for pause in PING_RETRIES.iter().map(Some).chain([None]) {
        let why = match http.get(url()).send().await {
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                format!("HTTP {}", r.status().as_u16())
            }
            Ok(_) => return,
            Err(e) => e.to_string(),
        };
        let Some(pause) = pause else {
            tracing::warn!("heartbeat: {why}; given up until the next one");
            return;
        };
        tracing::debug!("heartbeat: {why}; retrying in {pause:?}");
        tokio::time::sleep(*pause).await;
    }
}

/// Long-poll the stop channel; when it names the job in progress, mark it stopped (its
/// result is not posted) and interrupt ComfyUI (the job ends, and ComfyUI is free for the
/// next one).
async fn stop_channel(
    http: reqwest::Client,
    url: String,
    comfy: crate::comfy::Client,
    (current, stopped): (Current, Stopped),
    stop: Arc<AtomicBool>,
) {
    let mut pace = Pace::default();
    while !stop.load(Ordering::SeqCst) {
        let asked = Instant::now();
        let r = http.get(&url).send().await;
        let wait = match r {
            Ok(r) if r.status().as_u16() == 200 => {
                pace.answered();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let ids: Vec<&str> = v
                    .get("jobsToStop")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let ours = current.lock().ok().and_then(|c| c.clone());
                if let Some(job) = ours.filter(|j| ids.contains(&j.as_str())) {
                    tracing::info!("job {job}: stopped by the platform; interrupting ComfyUI");
                    if let Ok(mut s) = stopped.lock() {
                        *s = Some(job);
                    }
                    let _ = comfy.interrupt(None).await;
                }
                EMPTY_POLL
            }
            Ok(r) if r.status().as_u16() == 429 => pace.failed().max(TOO_MANY),
            Ok(r) if r.status().is_success() || r.status().as_u16() == 400 => {
                pace.answered();
                EMPTY_POLL.saturating_sub(asked.elapsed())
            }
            _ => pace.failed(),
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_interval_is_never_a_busy_loop() {
        assert_eq!(ping_interval(None), Duration::from_secs(10));
        assert_eq!(ping_interval(Some("300")), Duration::from_millis(300));
        assert_eq!(ping_interval(Some("0")), Duration::from_millis(100));
        assert_eq!(ping_interval(Some("x")), Duration::from_secs(10));
    }

    #[test]
    fn failed_results_drop_an_empty_output() {
        assert_eq!(
            failed_result(json!({"error": "e", "details": []})),
            json!({"error": "e"})
        );
        assert_eq!(
            failed_result(json!({"error": "e", "details": ["d"]})),
            json!({"error": "e", "output": {"details": ["d"]}})
        );
    }

    #[test]
    fn unhealthy_reasons_are_redacted_and_cut() {
        let r = unhealthy_reason(&format!("key k-123 {}", "x".repeat(400)), Some("k-123"));
        assert!(r.starts_with("key *** x"), "{r}");
        assert_eq!(r.chars().count(), 256);
        assert_eq!(unhealthy_reason("é", None), "é");
    }

    #[test]
    fn query_joining() {
        assert_eq!(
            with_query("http://h/take/w?gpu=X", &[("a", "1")]),
            "http://h/take/w?gpu=X&a=1"
        );
        assert_eq!(
            with_query("http://h/take/w", &[("a", "1 2")]),
            "http://h/take/w?a=1+2"
        );
    }
}
