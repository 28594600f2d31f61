//! The local API: RunPod's endpoint routes on a worker of your own, compatible with the SDK's
//! `--rp_serve_api` test server, so clients and RunPod's examples work against it unchanged.
//!
//! | route | answer |
//! |---|---|
//! | `POST /run` `{"input": …}` | `{"id", "status": "IN_QUEUE"}`; the job runs in the background |
//! | `POST /runsync` `{"input": …}` | waits: `{"id", "status": "COMPLETED", "output"}` or `FAILED` with `error` |
//! | `GET` or `POST /status/{id}` | the job's state, with `output` or `error` once finished |
//! | `GET /health` | `{"jobs": {…counts}, "workers": {"idle", "running"}}` |
//!
//! Jobs run one at a time, in order, on the one ComfyUI.

use super::error::Error;
use super::job::pop_error;
use super::runner::{Answer, Worker};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug)]
struct Job {
    status: &'static str,
    output: Option<Value>,
    error: Option<Value>,
    queued: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
}

#[derive(Clone)]
struct Api {
    jobs: Arc<Mutex<HashMap<String, Job>>>,
    queue: mpsc::Sender<(String, Value)>,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

/// Why a job was not queued; the client reads `{"error": …}`.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the request has no 'input'")]
    NoInput,
    #[error("the worker has stopped")]
    Stopped,
}

impl Refused {
    fn answer(&self) -> Value {
        json!({ "error": self.to_string() })
    }
}

impl Api {
    fn submit(&self, body: &Value, prefix: &str) -> Result<String, Refused> {
        let Some(input) = body.get("input") else {
            return Err(Refused::NoInput);
        };
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut r = [0u8; 6];
        let _ = getrandom::fill(&mut r);
        let id = format!("{prefix}-{n}-{}", hex::encode(r));
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(
                id.clone(),
                Job {
                    status: "IN_QUEUE",
                    output: None,
                    error: None,
                    queued: Instant::now(),
                    started: None,
                    finished: None,
                },
            );
        }
        self.queue
            .send((id.clone(), input.clone()))
            .map_err(|_| Refused::Stopped)?;
        Ok(id)
    }

    fn state(&self, id: &str) -> Value {
        let jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(_) => return json!({ "id": id, "status": "FAILED", "error": "internal error" }),
        };
        let Some(j) = jobs.get(id) else {
            return json!({ "id": id, "status": "FAILED", "error": "Job ID not found" });
        };
        let mut v = json!({ "id": id, "status": j.status });
        if let Some(s) = j.started {
            v["delayTime"] = json!(s.duration_since(j.queued).as_millis() as u64);
            if let Some(f) = j.finished {
                v["executionTime"] = json!(f.duration_since(s).as_millis() as u64);
            }
        }
        if let Some(o) = &j.output {
            v["output"] = o.clone();
        }
        if let Some(e) = &j.error {
            v["error"] = e.clone();
        }
        v
    }
}

/// Serve the local API on `addr` until the process ends, on the worker's runtime. The worker
/// runs the jobs on a thread of its own.
pub fn serve(worker: Worker, addr: std::net::SocketAddr) -> Result<(), Error> {
    let rt = worker.runtime();
    let (tx, rx) = mpsc::channel::<(String, Value)>();
    let api = Api {
        jobs: Arc::new(Mutex::new(HashMap::new())),
        queue: tx,
        counter: Arc::new(std::sync::atomic::AtomicU64::new(1)),
    };
    let runner = spawn_runner(worker, rx, api.jobs.clone());
    let app = Router::new()
        .route("/run", post(run))
        .route("/runsync", post(runsync))
        .route("/status/{id}", get(status).post(status))
        .route("/health", get(health))
        .with_state(api);
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        tracing::info!("local API on http://{addr} (POST /run, /runsync; GET /status/ID, /health)");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await
            .map_err(Error::Serve)
    });
    // The router (and with it the queue's sender) is gone: the runner finishes the job in
    // progress, drops the worker (stopping ComfyUI, then the runtime) and ends.
    let _ = runner.join();
    served
}

/// The thread that runs the queued jobs one by one, recording each state, until the queue
/// closes; then it drops the worker.
fn spawn_runner(
    mut worker: Worker,
    rx: mpsc::Receiver<(String, Value)>,
    jobs: Arc<Mutex<HashMap<String, Job>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for (id, input) in rx {
            update(&jobs, &id, |job| {
                job.status = "IN_PROGRESS";
                job.started = Some(Instant::now());
            });
            let answer = worker.run(&id, &input);
            update(&jobs, &id, |job| finish(job, answer));
        }
        // The queue is closed: stop ComfyUI with the worker.
        drop(worker);
    })
}

fn update(jobs: &Mutex<HashMap<String, Job>>, id: &str, f: impl FnOnce(&mut Job)) {
    if let Ok(mut j) = jobs.lock() {
        if let Some(job) = j.get_mut(id) {
            f(job);
        }
    }
}

/// Record a job's answer: its output, or its error popped to the top as RunPod does.
fn finish(job: &mut Job, answer: Answer) {
    job.finished = Some(Instant::now());
    match answer {
        Ok(o) => {
            job.status = "COMPLETED";
            job.output = Some(o);
        }
        Err(e) => {
            job.status = "FAILED";
            let (error, output) = pop_error(e);
            job.error = error;
            job.output = Some(output);
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending::<()>().await,
    }
    tracing::info!("local API stopping");
}

async fn run(State(api): State<Api>, Json(body): Json<Value>) -> Json<Value> {
    Json(match api.submit(&body, "run") {
        Ok(id) => json!({ "id": id, "status": "IN_QUEUE" }),
        Err(e) => e.answer(),
    })
}

async fn runsync(State(api): State<Api>, Json(body): Json<Value>) -> Json<Value> {
    let id = match api.submit(&body, "sync") {
        Ok(id) => id,
        Err(e) => return Json(e.answer()),
    };
    loop {
        let v = api.state(&id);
        if matches!(v["status"].as_str(), Some("COMPLETED" | "FAILED")) {
            return Json(v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Json<Value> {
    Json(api.state(&id))
}

async fn health(State(api): State<Api>) -> Json<Value> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    if let Ok(j) = api.jobs.lock() {
        for job in j.values() {
            *counts.entry(job.status).or_default() += 1;
        }
    }
    let running = counts.get("IN_PROGRESS").copied().unwrap_or(0);
    Json(json!({
        "jobs": {
            "completed": counts.get("COMPLETED").copied().unwrap_or(0),
            "failed": counts.get("FAILED").copied().unwrap_or(0),
            "inProgress": running,
            "inQueue": counts.get("IN_QUEUE").copied().unwrap_or(0),
            "retried": 0
        },
        "workers": { "idle": u64::from(running == 0), "running": running }
    }))
}
