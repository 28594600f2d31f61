//! `comfystore serve` speaking RunPod's serverless worker protocol, through the real binary,
//! against a fake job server (tests/fixtures/fake_runpod/server.py) and the fake ComfyUI
//! (tests/fixtures/fake_comfyui/main.py), both Python standard library only.
//!
//! Each test gets its own temp dir: `dest/` holds a copy of the fake `main.py` and a
//! `venv --without-pip` (as in tests/run_job.rs), `store/` the store (or, for a worker with no
//! volume, DEST is absent and the worker materializes it from a lock and a bucket). The fake job server
//! listens on an ephemeral port (it prints it first thing) and hands out the jobs the test
//! queues; the worker is started with the platform's variables in their production shape,
//! `$RUNPOD_POD_ID`, `$RUNPOD_GPU_TYPE_ID` and `$ID` left for it to substitute:
//!
//! ```text
//! RUNPOD_WEBHOOK_GET_JOB     = http://127.0.0.1:RP/v2/ep/job-take/$RUNPOD_POD_ID?gpu=$RUNPOD_GPU_TYPE_ID
//! RUNPOD_WEBHOOK_POST_OUTPUT = http://127.0.0.1:RP/v2/ep/job-done/$RUNPOD_POD_ID/$ID?gpu=$RUNPOD_GPU_TYPE_ID
//! RUNPOD_WEBHOOK_PING        = http://127.0.0.1:RP/v2/ep/ping/$RUNPOD_POD_ID?gpu=$RUNPOD_GPU_TYPE_ID
//! ```
//!
//! The worker runs in its own process group, so the guard ([`Setup`]'s `Drop`) kills it and the
//! ComfyUI it started even when a test fails halfway.

mod common;

use base64::Engine;
use common::net::{self, free_port, listening};
use common::pyindex::{python3, python_cmd, scrubbed_vars};
use common::{describe, s, sha256_hex, NETWORK_ENV};
use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const FAKE_COMFY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_comfyui/main.py"
);
const FAKE_RUNPOD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_runpod/server.py"
);
const KEY: &str = "secret-key-123";
const WORKER_ID: &str = "worker-1";
/// Heartbeat period given to the worker, in ms.
const PING_MS: u64 = 300;

fn minimal_workflow() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/minimal.json");
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn good_job(id: &str) -> Value {
    json!({"id": id, "input": {"workflow": minimal_workflow()}})
}

fn slow_job(id: &str, seconds: f64) -> Value {
    json!({"id": id, "input": {"workflow": {
        "1": {"class_type": "SlowNode", "inputs": {"seconds": seconds}},
    }}})
}

/// One request with a JSON content type: (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    net::request(port, method, path, "application/json", body)
}

/// Options of one test's setup.
#[derive(Default)]
struct Opts {
    /// Jobs the fake hands out from the start (its --jobs file).
    jobs: Vec<Value>,
    /// The first N takes answer 429.
    fail_takes: u32,
    /// The first N pings answer 503.
    fail_pings: u32,
    /// RUST_LOG for the worker (`info` when not given).
    rust_log: Option<&'static str>,
    /// How long the fake holds a take or stop poll without a job before its 204 (1 s when
    /// not given; 0: at once).
    hold: Option<f64>,
    /// More variables for the worker.
    env: Vec<(&'static str, String)>,
    /// More arguments for (the fake) ComfyUI.
    comfy_args: Vec<String>,
    /// The worker's store (`store/` in the temp dir when not given).
    store: Option<PathBuf>,
    /// Leave DEST absent (no fake ComfyUI there): the worker materializes it from the lock it
    /// is given (`COMFYSTORE_LOCK` in `env`).
    no_version: bool,
    /// The worker's DEST, made by the test (`dest/` in the temp dir, with the fake ComfyUI,
    /// when not given).
    dest: Option<PathBuf>,
    /// More arguments for the worker (`serve`).
    worker_args: Vec<&'static str>,
}

/// One test's temp dir, fake job server and worker; both processes (and the worker's
/// ComfyUI) are killed on drop.
struct Setup {
    dir: PathBuf,
    comfy_port: u16,
    rp_port: u16,
    rp: Child,
    worker: Child,
    /// The worker's exit status, once reaped.
    exited: Option<ExitStatus>,
    _tmp: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // The worker leads its own process group: this takes ComfyUI along.
            unsafe {
                libc::kill(-(self.worker.id() as i32), libc::SIGKILL);
            }
            let _ = self.worker.kill();
            let _ = self.worker.wait();
        }
        let _ = self.rp.kill();
        let _ = self.rp.wait();
    }
}

impl Setup {
    /// Temp dir, fake job server, worker; returns once the worker took (polled for) a job,
    /// i.e. ComfyUI answers.
    fn start(opts: Opts) -> Setup {
        let mut setup = Setup::launch(opts);
        setup.wait(Duration::from_secs(40), "the worker's first take", |st| {
            (st["take_count"].as_u64().unwrap() >= 1).then_some(())
        });
        assert!(
            listening(setup.comfy_port),
            "ComfyUI does not listen on {}",
            setup.comfy_port
        );
        setup
    }

    /// [`Setup::start`] without waiting for anything.
    fn launch(opts: Opts) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let dest = opts.dest.clone().unwrap_or_else(|| dir.join("dest"));
        if !opts.no_version && opts.dest.is_none() {
            common::fake_comfy_folder(&dest, &fs::read(FAKE_COMFY).unwrap());
        }

        // The fake job server.
        let jobs = dir.join("jobs.json");
        fs::write(&jobs, serde_json::to_vec(&opts.jobs).unwrap()).unwrap();
        let mut rp = python_cmd(python3())
            .arg(FAKE_RUNPOD)
            .args([
                "--hold",
                &opts.hold.unwrap_or(1.0).to_string(),
                "--fail-takes",
                &opts.fail_takes.to_string(),
                "--fail-pings",
                &opts.fail_pings.to_string(),
            ])
            .arg("--jobs")
            .arg(&jobs)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join("runpod.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(rp.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let rp_port: u16 = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = rp.kill();
                let _ = rp.wait();
                panic!(
                    "the fake job server printed no port ({line:?}): {}",
                    fs::read_to_string(dir.join("runpod.log")).unwrap_or_default()
                );
            }
        };

        // The worker.
        let comfy_port = free_port();
        let base = format!("http://127.0.0.1:{rp_port}/v2/ep");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfystore"));
        cmd.arg("--store")
            .arg(opts.store.clone().unwrap_or_else(|| dir.join("store")))
            .args(["serve", "--dest", s(&dest), "--comfy-port"])
            .arg(comfy_port.to_string())
            .args([
                "--comfy-arg=--cpu",
                "--ready-timeout",
                "30s",
                "--job-timeout",
                "40s",
            ]);
        for a in &opts.comfy_args {
            cmd.arg(format!("--comfy-arg={a}"));
        }
        cmd.args(&opts.worker_args);
        let inherited = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .filter(|k| k.starts_with("RUNPOD_"));
        for k in scrubbed_vars()
            .into_iter()
            .chain(inherited)
            .chain(NETWORK_ENV.iter().map(|v| v.to_string()))
            .chain(["COMFY_PORT", "COMFY_HOME", "COMFY_ORG_API_KEY", "RUST_LOG"].map(String::from))
            .chain(common::gcs::GCS_ENV.iter().map(|v| v.to_string()))
        {
            cmd.env_remove(k);
        }
        cmd.env(
            "RUNPOD_WEBHOOK_GET_JOB",
            format!("{base}/job-take/$RUNPOD_POD_ID?gpu=$RUNPOD_GPU_TYPE_ID"),
        )
        .env(
            "RUNPOD_WEBHOOK_POST_OUTPUT",
            format!("{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=$RUNPOD_GPU_TYPE_ID"),
        )
        .env(
            "RUNPOD_WEBHOOK_PING",
            format!("{base}/ping/$RUNPOD_POD_ID?gpu=$RUNPOD_GPU_TYPE_ID"),
        )
        .env("RUNPOD_AI_API_KEY", KEY)
        .env("RUNPOD_POD_ID", WORKER_ID)
        .env("RUNPOD_GPU_TYPE_ID", "CPU")
        .env("RUNPOD_PING_INTERVAL", PING_MS.to_string())
        .env("RUST_LOG", opts.rust_log.unwrap_or("info"));
        // The test's own variables last: they may replace the ones above.
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("worker.out")).unwrap())
            .stderr(fs::File::create(dir.join("worker.log")).unwrap())
            .process_group(0);
        let worker = match cmd.spawn() {
            Ok(w) => w,
            Err(e) => {
                let _ = rp.kill();
                let _ = rp.wait();
                panic!("start comfystore serve: {e}");
            }
        };
        Setup {
            dir,
            comfy_port,
            rp_port,
            rp,
            worker,
            exited: None,
            _tmp: tmp,
        }
    }

    /// Wait at most `timeout` for the worker to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while self.worker_alive() {
            if Instant::now() > deadline {
                panic!(
                    "the worker did not exit within {timeout:?}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.exited.unwrap()
    }

    /// The worker's stderr (its log) so far.
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }

    /// Everything the test knows, for assertion messages.
    fn report(&self) -> String {
        format!(
            "worker log:\n{}\nfake job server log (tail):\n{}",
            self.log(),
            tail(
                &fs::read_to_string(self.dir.join("runpod.log")).unwrap_or_default(),
                30
            )
        )
    }

    /// The fake's record (`GET /control/state`).
    fn state(&self) -> Value {
        let (st, body) = http(self.rp_port, "GET", "/control/state", b"");
        assert_eq!(st, 200);
        serde_json::from_slice(&body).unwrap()
    }

    fn enqueue(&self, jobs: &[Value]) {
        let (st, body) = http(
            self.rp_port,
            "POST",
            "/control/enqueue",
            &serde_json::to_vec(jobs).unwrap(),
        );
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// Ask the platform side to stop `job` (answered on the next job-stop poll).
    fn stop_job(&self, job: &str) {
        let (st, _) = http(self.rp_port, "POST", &format!("/control/stop/{job}"), b"");
        assert_eq!(st, 200);
    }

    /// Whether the worker still runs (reaps it when it exited).
    fn worker_alive(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.worker.try_wait().unwrap() {
            None => true,
            Some(st) => {
                self.exited = Some(st);
                false
            }
        }
    }

    /// Poll the fake's record until `check` gives a value; panics after `timeout`, or when
    /// the worker exits meanwhile.
    fn wait<T>(&mut self, timeout: Duration, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.state();
            if let Some(v) = check(&st) {
                return v;
            }
            if !self.worker_alive() {
                panic!(
                    "waiting for {what}: the worker exited ({:?})\nstate: {st:#}\n{}",
                    self.exited,
                    self.report()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "waiting for {what}: not within {timeout:?}\nstate: {st:#}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The result posted for `job`, not counting progress posts (the whole record: path,
    /// query, headers, body).
    fn result(&mut self, job: &str, timeout: Duration) -> Value {
        self.wait(timeout, &format!("the result of job {job}"), |st| {
            st["results"][job]
                .as_array()?
                .iter()
                .find(|r| body(r)["status"] != "IN_PROGRESS")
                .cloned()
        })
    }

    /// The progress posts for `job`.
    fn progress(&self, job: &str) -> Vec<Value> {
        self.state()["results"][job]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| body(r)["status"] == "IN_PROGRESS")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM (as `kill -TERM PID`), then wait at most `timeout` for the exit.
    fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.worker.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM");
        let deadline = Instant::now() + timeout;
        while self.worker_alive() {
            if Instant::now() > deadline {
                panic!(
                    "the worker did not exit within {timeout:?} of SIGTERM\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.exited.unwrap()
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A result record's body, checked to be JSON.
fn body(record: &Value) -> &Value {
    assert_eq!(record["parsed"], true, "the result is not JSON: {record:#}");
    &record["body"]
}

/// A result body that must be a success: its single output file, checked (base64 data whose
/// sha256 is `sha256`), and the decoded bytes.
fn one_image(body: &Value) -> (Value, Vec<u8>) {
    assert!(body.get("error").is_none(), "an error: {body:#}");
    let images = body["output"]["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no output.images: {body:#}"));
    assert_eq!(images.len(), 1, "{body:#}");
    let f = images[0].clone();
    assert_eq!(f["type"], "base64", "{f:#}");
    let data = base64::engine::general_purpose::STANDARD
        .decode(f["data"].as_str().unwrap())
        .expect("data is base64");
    assert_eq!(f["sha256"], sha256_hex(&data), "sha256 is not of the data");
    (f, data)
}

/// A result body that must be a failure: `error` (a string) and the details, as one text.
fn error_text(body: &Value) -> String {
    let e = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no top-level error string: {body:#}"));
    assert!(
        body["output"].get("images").is_none(),
        "a failed job with images: {body:#}"
    );
    let mut t = e.to_string();
    for d in body["output"]["details"].as_array().into_iter().flatten() {
        t.push('\n');
        t.push_str(d.as_str().unwrap_or(""));
    }
    t
}

/// Every request the worker made to the platform: (kind, path, raw query).
fn platform_calls(st: &Value) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for (kind, list) in [
        ("take", &st["takes"]),
        ("ping", &st["pings"]),
        ("stop", &st["stop_polls"]),
    ] {
        for r in list.as_array().unwrap() {
            v.push((
                kind.to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["raw_query"].as_str().unwrap().to_string(),
            ));
        }
    }
    for (_, records) in st["results"].as_object().unwrap() {
        for r in records.as_array().unwrap() {
            v.push((
                "done".to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["raw_query"].as_str().unwrap().to_string(),
            ));
        }
    }
    v
}

/// Every call carried the key verbatim, nothing went to an unknown route.
fn assert_clean_protocol(st: &Value) {
    let auth = st["auth"].as_array().unwrap();
    assert!(!auth.is_empty());
    for a in auth {
        assert_eq!(a, KEY, "an Authorization header other than the key: {st:#}");
    }
    assert_eq!(st["unexpected"], json!([]), "requests to unknown routes");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn image_job_result_is_posted_with_key_and_request_id() {
    let id = "3f6b2c1e-8d4a-4b7e-9f0a-1c2d3e4f5a6b-u1";
    let mut w = Setup::start(Opts::default());
    w.enqueue(&[good_job(id)]);
    let rec = w.result(id, Duration::from_secs(20));
    // Let a second take, a ping and a stop poll come in, to check their URLs too.
    let t = rec["t"].as_f64().unwrap();
    w.wait(Duration::from_secs(5), "calls after the result", |st| {
        let after = |k: &str| {
            st[k]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["t"].as_f64().unwrap() > t)
        };
        (after("takes") && after("pings") && after("stop_polls")).then_some(())
    });
    let st = w.state();

    // The result: where, how, what.
    assert_eq!(
        st["results"][id].as_array().unwrap().len(),
        1,
        "posted once: {st:#}"
    );
    assert_eq!(
        rec["path"],
        format!("/v2/ep/job-done/{WORKER_ID}/{id}"),
        "{rec:#}"
    );
    assert_eq!(rec["query"]["gpu"], "CPU", "{rec:#}");
    assert_eq!(rec["query"]["isStream"], "false", "{rec:#}");
    assert_eq!(rec["headers"]["Authorization"], KEY, "{rec:#}");
    assert_eq!(rec["headers"]["X-Request-ID"], id, "{rec:#}");
    let b = body(&rec);
    assert_eq!(
        b.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["output"],
        "{b:#}"
    );
    let (f, data) = one_image(b);
    assert!(data.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&data[16..24], &[0, 0, 0, 64, 0, 0, 0, 64], "not 64x64");
    assert!(f["filename"].as_str().unwrap().ends_with(".png"), "{f:#}");
    assert_eq!(f["node"], "3", "{f:#}");
    assert_eq!(f["output"], "images", "{f:#}");

    // The take that handed it out, and every other call: templates filled in.
    let take = st["takes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["job"] == id)
        .unwrap_or_else(|| panic!("no take handed out {id}: {st:#}"));
    assert_eq!(
        take["path"],
        format!("/v2/ep/job-take/{WORKER_ID}"),
        "{take:#}"
    );
    assert_eq!(take["query"]["gpu"], "CPU", "{take:#}");
    assert_eq!(take["query"]["job_in_progress"], "0", "{take:#}");
    let calls = platform_calls(&st);
    for (kind, path, query) in &calls {
        for bad in ["$", "%24"] {
            assert!(
                !path.contains(bad) && !query.contains(bad),
                "{kind}: a template variable left in {path}?{query}"
            );
        }
        assert!(path.contains(&format!("/{WORKER_ID}")), "{kind}: {path}");
        assert!(query.starts_with("gpu=CPU"), "{kind}: {path}?{query}");
    }
    for kind in ["take", "ping", "stop", "done"] {
        assert!(calls.iter().any(|c| c.0 == kind), "no {kind} call: {st:#}");
    }
    assert!(
        st["pings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["path"] == format!("/v2/ep/ping/{WORKER_ID}")),
        "{st:#}"
    );
    assert!(
        st["stop_polls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["path"] == format!("/v2/ep/job-stop/{WORKER_ID}")),
        "{st:#}"
    );
    assert_clean_protocol(&st);
}

#[test]
fn heartbeat_pings_while_idle_and_names_the_running_job() {
    let id = "slow-heartbeat-1";
    let mut w = Setup::start(Opts::default());
    // Idle: pings every 300 ms, without job_id.
    let t0 = w.state()["now"].as_f64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let st = w.state();
    let idle: Vec<&Value> = st["pings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["t"].as_f64().unwrap() >= t0)
        .collect();
    assert!(
        idle.len() >= 2,
        "{} pings in 1.5 s of idling: {st:#}",
        idle.len()
    );
    for p in &idle {
        assert!(
            !p["query"]["runpod_version"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "a ping without runpod_version: {p:#}"
        );
        assert!(
            p["query"].get("job_id").is_none(),
            "job_id while idle: {p:#}"
        );
        assert_eq!(p["headers"]["Authorization"], KEY, "{p:#}");
        assert_eq!(p["query"]["gpu"], "CPU", "{p:#}");
    }

    // Busy: a ping names the job.
    w.enqueue(&[slow_job(id, 2.0)]);
    let rec = w.result(id, Duration::from_secs(20));
    let done = rec["t"].as_f64().unwrap();
    assert!(body(&rec).get("error").is_none(), "{rec:#}");
    let st = w.state();
    let with_job: Vec<&Value> = st["pings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["query"].get("job_id").is_some())
        .collect();
    assert!(
        !with_job.is_empty(),
        "no ping named the running job: {st:#}"
    );
    for p in &with_job {
        assert_eq!(p["query"]["job_id"], id, "{p:#}");
        assert!(
            p["t"].as_f64().unwrap() <= done + 0.5,
            "job_id after the result: {p:#}"
        );
    }

    // Idle again: no job_id.
    std::thread::sleep(Duration::from_millis(1500));
    let st = w.state();
    let later: Vec<&Value> = st["pings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["t"].as_f64().unwrap() > done + 0.8)
        .collect();
    assert!(!later.is_empty(), "no ping after the job: {st:#}");
    for p in later {
        assert!(
            p["query"].get("job_id").is_none(),
            "job_id after the job ended: {p:#}"
        );
    }
    assert_clean_protocol(&st);
}

/// ComfyUI's progress events (on its websocket) reach the platform as IN_PROGRESS posts,
/// at most one a second, before the result.
#[test]
fn progress_is_posted_while_a_job_runs() {
    let id = "slow-progress-1";
    let mut w = Setup::start(Opts::default());
    w.enqueue(&[slow_job(id, 2.5)]);
    let rec = w.result(id, Duration::from_secs(20));
    assert!(body(&rec).get("error").is_none(), "{rec:#}");
    let progress = w.progress(id);
    assert!(
        (1..=4).contains(&progress.len()),
        "{} progress posts for a 2.5 s job: {}",
        progress.len(),
        w.report()
    );
    for p in &progress {
        let out = &body(p)["output"];
        assert_eq!(out["max"], 10, "{p:#}");
        assert!(out["value"].as_u64().is_some_and(|v| v <= 10), "{p:#}");
        assert_eq!(p["headers"]["Authorization"], KEY, "{p:#}");
        assert!(
            p["t"].as_f64() < rec["t"].as_f64(),
            "progress after the result: {p:#}"
        );
    }
}

#[test]
fn failed_jobs_are_posted_as_errors_and_the_worker_goes_on() {
    let img = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nnot really");
    let jobs = [
        json!({"id": "bad-node", "input": {"workflow": {
            "1": {"class_type": "NoSuchNode", "inputs": {}},
        }}}),
        json!({"id": "bad-name", "input": {
            "workflow": {
                "1": {"class_type": "LoadImage", "inputs": {"image": "../x.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "h", "images": ["1", 0]}},
            },
            "images": [{"name": "../x.png", "image": img}],
        }}),
        json!({"id": "fail-node", "input": {"workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "FailNode", "inputs": {"image": ["1", 0], "message": "failed on purpose 4711"}},
        }}}),
        good_job("good-after-errors"),
    ];
    let mut w = Setup::start(Opts::default());
    w.enqueue(&jobs);
    let last = w.result("good-after-errors", Duration::from_secs(30));
    one_image(body(&last));
    let st = w.state();
    let mut times = Vec::new();
    for (id, expect) in [
        ("bad-node", "NoSuchNode"),
        ("bad-name", "../x.png"),
        ("fail-node", "failed on purpose 4711"),
    ] {
        let recs = st["results"][id]
            .as_array()
            .unwrap_or_else(|| panic!("no result for {id}: {st:#}"));
        assert_eq!(recs.len(), 1, "{id}: {st:#}");
        let rec = &recs[0];
        assert_eq!(rec["headers"]["X-Request-ID"], id, "{rec:#}");
        let text = error_text(body(rec));
        assert!(text.contains(expect), "{id}: {expect:?} not in {text}");
        times.push(rec["t"].as_f64().unwrap());
    }
    times.push(last["t"].as_f64().unwrap());
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "results out of order: {times:?}"
    );
    assert!(w.worker_alive(), "the worker exited\n{}", w.report());
    assert_clean_protocol(&st);
}

#[test]
fn comfyui_crash_fails_the_job_and_the_next_one_runs() {
    let mut w = Setup::start(Opts::default());
    w.enqueue(&[
        json!({"id": "crash-1", "input": {"workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "CrashNode", "inputs": {"image": ["1", 0]}},
        }}}),
        good_job("after-crash"),
    ]);
    let crash = w.result("crash-1", Duration::from_secs(20));
    let b = body(&crash);
    let e = b["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {b:#}"));
    assert!(e.contains("ComfyUI crashed"), "{b:#}");
    assert!(
        error_text(b).contains("exited"),
        "the exit is not reported: {b:#}"
    );
    let next = w.result("after-crash", Duration::from_secs(30));
    one_image(body(&next));
    assert!(listening(w.comfy_port), "ComfyUI was not restarted");
    assert_clean_protocol(&w.state());
}

/// A stop names the running job: ComfyUI is interrupted (the next job runs at once, not
/// after the slow one's 20 s), and, as the SDK cancels the job and posts nothing, no result
/// is posted for it.
#[test]
fn stop_channel_interrupts_the_running_job_and_posts_nothing() {
    let id = "stop-me-1";
    let mut w = Setup::start(Opts::default());
    w.enqueue(&[slow_job(id, 20.0), good_job("after-stop")]);
    // Running once the heartbeat names it.
    w.wait(
        Duration::from_secs(10),
        "a ping naming the slow job",
        |st| {
            st["pings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["query"]["job_id"] == id)
                .then_some(())
        },
    );
    w.stop_job(id);
    // Interrupted: the next job's result well before the slow job's 20 s were over.
    let next = w.result("after-stop", Duration::from_secs(12));
    one_image(body(&next));
    let st = w.state();
    let posted: Vec<&Value> = st["results"][id]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["body"]["status"] != "IN_PROGRESS")
        .collect();
    assert!(
        posted.is_empty(),
        "a stopped job's result was posted: {posted:#?}"
    );
    assert!(
        w.log().contains("stopped by the platform"),
        "{}",
        w.report()
    );
    let stops: Vec<&Value> = st["stop_polls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == 200)
        .collect();
    assert_eq!(stops.len(), 1, "{st:#}");
    assert_eq!(stops[0]["jobs"], json!([id]));
    assert_eq!(stops[0]["path"], format!("/v2/ep/job-stop/{WORKER_ID}"));
    assert_eq!(stops[0]["query"]["gpu"], "CPU");
    assert_clean_protocol(&st);
}

#[test]
fn sigterm_while_idle_exits_0_and_stops_comfyui() {
    let mut w = Setup::start(Opts::default());
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let status = w.sigterm(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        w.report()
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        !listening(w.comfy_port),
        "ComfyUI still listens on {} after the worker exited\n{}",
        w.comfy_port,
        w.report()
    );
    assert_clean_protocol(&w.state());
}

#[test]
fn sigterm_during_a_job_finishes_it_first() {
    let id = "finish-me-1";
    let mut w = Setup::start(Opts::default());
    w.enqueue(&[slow_job(id, 2.0), good_job("never-taken")]);
    w.wait(Duration::from_secs(10), "a ping naming the job", |st| {
        st["pings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["query"]["job_id"] == id)
            .then_some(())
    });
    let status = w.sigterm(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        w.report()
    );
    let st = w.state();
    let rec = st["results"][id]
        .get(0)
        .unwrap_or_else(|| panic!("the job in progress was not posted: {st:#}\n{}", w.report()));
    assert!(body(rec).get("error").is_none(), "{rec:#}");
    assert!(
        st["results"].get("never-taken").is_none(),
        "a job taken after SIGTERM: {st:#}"
    );
    assert_eq!(st["queued"], json!(["never-taken"]), "{st:#}");
    assert!(!listening(w.comfy_port), "ComfyUI still listens");
}

#[test]
fn a_429_take_is_backed_off_and_the_job_still_runs() {
    let id = "after-429";
    let mut w = Setup::start(Opts {
        jobs: vec![good_job(id)],
        fail_takes: 1,
        ..Opts::default()
    });
    let rec = w.result(id, Duration::from_secs(25));
    one_image(body(&rec));
    let st = w.state();
    let takes = st["takes"].as_array().unwrap();
    assert_eq!(takes[0]["status"], 429, "{st:#}");
    assert_eq!(takes[1]["job"], id, "the next take gets the job: {st:#}");
    let gap = takes[1]["t"].as_f64().unwrap() - takes[0]["t"].as_f64().unwrap();
    assert!(
        gap >= 4.5,
        "no back-off after 429: next take {gap:.2} s later"
    );
    assert!(gap < 8.0, "back-off too long: {gap:.2} s");
    assert_clean_protocol(&st);
}

#[test]
fn the_key_is_never_logged() {
    let mut w = Setup::start(Opts {
        rust_log: Some("debug"),
        ..Opts::default()
    });
    w.enqueue(&[
        good_job("log-ok"),
        json!({"id": "log-bad", "input": {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}}),
    ]);
    w.result("log-ok", Duration::from_secs(20));
    w.result("log-bad", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(2 * PING_MS));
    let status = w.sigterm(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        w.report()
    );
    let log = w.log();
    // Debug logging was on (else the test proves nothing).
    assert!(log.contains("DEBUG"), "no debug lines:\n{log}");
    assert!(
        log.contains("RunPodConfig"),
        "the config is not logged:\n{log}"
    );
    assert!(!log.contains(KEY), "the key is in the log:\n{log}");
    let out = fs::read_to_string(w.dir.join("worker.out")).unwrap();
    assert!(!out.contains(KEY), "the key is on stdout:\n{out}");
    assert_clean_protocol(&w.state());
}

/// Requests of `kind` (`takes`, `stop_polls`) the fake saw from `from` s (its clock) on.
fn requests_since(st: &Value, kind: &str, from: f64) -> usize {
    st[kind]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["t"].as_f64().unwrap() >= from)
        .count()
}

/// A platform that answers "no job" at once, or fails, must not be asked thousands of times a
/// second: after an empty answer the worker waits until 1 s after it asked (the SDK's stop
/// channel pace), after a failure it backs off (1 s doubling, jittered, capped); SIGTERM still
/// ends it at once.
#[test]
fn an_idle_worker_polls_at_the_sdks_pace_and_backs_off_on_errors() {
    let mut w = Setup::start(Opts {
        hold: Some(0.0),
        ..Opts::default()
    });
    // Immediate 204s: at most one take and one stop poll a second (4 s: ~4 each).
    let from = w.state()["now"].as_f64().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let st = w.state();
    let takes = requests_since(&st, "takes", from);
    let stops = requests_since(&st, "stop_polls", from);
    assert!(
        takes <= 8,
        "{takes} takes in 4 s of immediate 204s\n{}",
        w.report()
    );
    assert!(stops <= 8, "{stops} stop polls in 4 s of immediate 204s");
    assert!(
        takes >= 2,
        "the worker stopped asking: {takes} takes in 4 s"
    );
    // Immediate 500s: back-off 0.5-1 s, 1-2 s, 2-4 s, ...: at most ~5 in 6 s.
    let (code, _) = http(w.rp_port, "POST", "/control/take-status/500", b"");
    assert_eq!(code, 200);
    let from = w.state()["now"].as_f64().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let st = w.state();
    let takes = requests_since(&st, "takes", from);
    let stops = requests_since(&st, "stop_polls", from);
    assert!(
        takes <= 6,
        "{takes} takes in 6 s of errors: no back-off\n{}",
        w.report()
    );
    assert!(
        stops <= 6,
        "{stops} stop polls in 6 s of errors: no back-off"
    );
    let t0 = Instant::now();
    let status = w.sigterm(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        w.report()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "SIGTERM waited for the back-off"
    );
}

/// On RunPod with GCS_BUCKET set: the posted result names the uploaded object by a signed URL,
/// and neither the access token nor the signed URL is in the log, even at trace.
#[test]
fn gcs_outputs_are_posted_as_urls_and_kept_out_of_the_log() {
    let test = "gcs_outputs_are_posted_as_urls_and_kept_out_of_the_log";
    let bin = match common::gcs::binary() {
        Ok(b) => b,
        Err(why) => return common::cannot_run(test, &why),
    };
    let emu = common::gcs::Emulator::start(&bin);
    let front = common::gcs::Front::start(
        emu.port,
        Some(&["storage.objects.create", "storage.objects.get"]),
        0,
        0,
    );
    let keys = tempfile::tempdir().unwrap();
    let key = match common::gcs::TestKey::make(keys.path(), &format!("{}/token", front.url())) {
        Ok(k) => k,
        Err(why) => return common::cannot_run(test, &why),
    };
    let id = "gcs-posted-1";
    let mut w = Setup::start(Opts {
        rust_log: Some("trace"),
        env: vec![
            ("GCS_BUCKET", common::gcs::BUCKET.to_string()),
            ("STORAGE_EMULATOR_HOST", front.url()),
            ("GOOGLE_APPLICATION_CREDENTIALS", s(&key.json).to_string()),
        ],
        ..Opts::default()
    });
    w.enqueue(&[good_job(id)]);
    let rec = w.result(id, Duration::from_secs(20));
    let status = w.sigterm(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", w.report());
    let images = body(&rec)["output"]["images"].clone();
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{rec:#}");
    let f = &images[0];
    assert_eq!(f["type"], "gcs_url", "{f:#}");
    let object = format!("comfy/outputs/{id}/{}", f["filename"].as_str().unwrap());
    assert_eq!(
        f["gs_uri"],
        format!("gs://{}/{object}", common::gcs::BUCKET)
    );
    assert_eq!(
        sha256_hex(&emu.content(&object)),
        f["sha256"].as_str().unwrap()
    );
    let url = f["data"].as_str().unwrap();
    let signature = url.split("X-Goog-Signature=").nth(1).expect("a signed URL");
    let log = w.log();
    assert!(log.contains("TRACE"), "no trace lines:\n{log}");
    for secret in [common::gcs::TOKEN, signature, "X-Goog-Signature"] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
    let out = fs::read_to_string(w.dir.join("worker.out")).unwrap();
    assert!(
        !out.contains(signature),
        "the signed URL is on stdout:\n{out}"
    );
}

/// A failure without details is posted as `{"error": …}` alone, as the SDK posts
/// worker-comfyui's `{"error": …}` (it drops an empty output); one with details keeps them
/// under `output`.
#[test]
fn a_failed_result_without_details_has_no_output() {
    let mut w = Setup::start(Opts::default());
    w.enqueue(&[
        json!({"id": "no-workflow", "input": {"images": []}}),
        json!({"id": "fail-node-d", "input": {"workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "FailNode", "inputs": {"image": ["1", 0], "message": "failed on purpose"}},
        }}}),
    ]);
    let rec = w.result("no-workflow", Duration::from_secs(20));
    let b = body(&rec);
    assert_eq!(
        b.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["error"],
        "{b:#}"
    );
    assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()), "{b:#}");
    let rec = w.result("fail-node-d", Duration::from_secs(20));
    let b = body(&rec);
    assert!(
        b["output"]["details"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{b:#}"
    );
    assert_clean_protocol(&w.state());
}

/// A result post is retried when the platform answers 5xx (as the SDK does), not when it
/// answers 4xx (its final word on that result).
#[test]
fn result_posts_are_retried_on_5xx_only() {
    let mut w = Setup::start(Opts::default());
    let inject = |w: &Setup, status: u16, n: u32| {
        let (code, _) = http(
            w.rp_port,
            "POST",
            &format!("/control/result-status/{status}/{n}"),
            b"",
        );
        assert_eq!(code, 200);
    };
    inject(&w, 400, 1);
    w.enqueue(&[good_job("refused-400")]);
    w.result("refused-400", Duration::from_secs(20));
    inject(&w, 503, 2);
    w.enqueue(&[good_job("retried-503")]);
    let statuses = w.wait(Duration::from_secs(20), "the 503 result delivered", |st| {
        let recs = st["results"]["retried-503"].as_array()?;
        let s: Vec<u64> = recs
            .iter()
            .filter(|r| r["body"]["status"] != "IN_PROGRESS")
            .filter_map(|r| r["status"].as_u64())
            .collect();
        s.contains(&200).then_some(s)
    });
    assert_eq!(statuses, [503, 503, 200], "{}", w.report());
    let st = w.state();
    let refused: Vec<&Value> = st["results"]["refused-400"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["body"]["status"] != "IN_PROGRESS")
        .collect();
    assert_eq!(refused.len(), 1, "a 400 was retried: {st:#}");
    assert_eq!(refused[0]["status"], 400);
    assert_clean_protocol(&st);
}

/// The heartbeat's `runpod_version` is the SDK version whose protocol the worker speaks (a
/// version number, as the SDK sends); comfystore's own version is in the User-Agent of every
/// call.
#[test]
fn pings_carry_the_sdk_version_and_the_user_agent_ours() {
    let mut w = Setup::start(Opts::default());
    let st = w.wait(Duration::from_secs(10), "a ping", |st| {
        (!st["pings"].as_array()?.is_empty()).then(|| st.clone())
    });
    let ours = format!("comfystore/{}", env!("CARGO_PKG_VERSION"));
    for p in st["pings"].as_array().unwrap() {
        assert_eq!(p["query"]["runpod_version"], "1.12.0", "{p:#}");
        let ua = p["headers"]["User-Agent"].as_str().unwrap_or("");
        assert!(ua.starts_with(&ours), "{p:#}");
        assert!(ua.contains("RunPod-Python-SDK/1.12.0"), "{p:#}");
    }
    for t in st["takes"].as_array().unwrap() {
        let ua = t["headers"]["User-Agent"].as_str().unwrap_or("");
        assert!(ua.starts_with(&ours), "{t:#}");
    }
}

/// A ping the platform answers 429 or 5xx is retried with back-off (as the SDK's urllib3
/// retries), before the next regular heartbeat is due.
#[test]
fn a_failed_ping_is_retried_with_back_off() {
    let mut w = Setup::start(Opts {
        fail_pings: 2,
        env: vec![("RUNPOD_PING_INTERVAL", "8000".to_string())],
        ..Opts::default()
    });
    let pings = w.wait(Duration::from_secs(15), "a ping answered 200", |st| {
        let p = st["pings"].as_array()?;
        p.iter().any(|p| p["status"] == 200).then(|| p.clone())
    });
    let statuses: Vec<u64> = pings.iter().filter_map(|p| p["status"].as_u64()).collect();
    assert_eq!(statuses, [503, 503, 200], "{}", w.report());
    let t: Vec<f64> = pings.iter().map(|p| p["t"].as_f64().unwrap()).collect();
    assert!(
        t[2] - t[0] < 7.5,
        "no retry before the next heartbeat: pings at {t:?}"
    );
    assert!(
        t.windows(2).all(|g| g[1] - g[0] >= 0.5),
        "retried without a pause: pings at {t:?}"
    );
}

/// The heartbeat starts with the worker, as the SDK's: the platform sees it alive while
/// ComfyUI starts (here 3 s), before any job is taken.
#[test]
fn the_heartbeat_starts_before_comfyui_is_ready() {
    let w = Setup::start(Opts {
        comfy_args: vec!["--fake-start-delay=3".into()],
        ..Opts::default()
    });
    let st = w.state();
    let first_take = st["takes"][0]["t"].as_f64().unwrap();
    let before: Vec<&Value> = st["pings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["t"].as_f64().unwrap() < first_take - 0.5)
        .collect();
    assert!(
        before.len() >= 2,
        "{} pings while ComfyUI started: {st:#}\n{}",
        before.len(),
        w.report()
    );
    for p in before {
        assert!(p["query"].get("job_id").is_none(), "{p:#}");
        assert_eq!(p["query"]["runpod_version"], "1.12.0", "{p:#}");
    }
    assert_clean_protocol(&st);
}

/// A worker whose ComfyUI cannot start tells the platform before it exits, as the SDK reports
/// a failed fitness check: `ping?status=unhealthy&check=…&reason=…`, the reason without
/// secrets (ComfyUI's log here shows the key) and at most 256 characters.
#[test]
fn a_failed_start_is_reported_unhealthy() {
    let mut w = Setup::launch(Opts {
        comfy_args: vec![format!("--fake-token={KEY}"), "--fake-exit-at-start".into()],
        ..Opts::default()
    });
    let status = w.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(1),
        "exit status {status}\n{}",
        w.report()
    );
    let st = w.state();
    let unhealthy: Vec<&Value> = st["pings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["query"]["status"] == "unhealthy")
        .collect();
    assert_eq!(unhealthy.len(), 1, "{st:#}\n{}", w.report());
    let q = &unhealthy[0]["query"];
    assert_eq!(q["check"], "comfyui", "{q:#}");
    assert_eq!(q["runpod_version"], "1.12.0", "{q:#}");
    let reason = q["reason"].as_str().unwrap_or("");
    assert!(reason.contains("exited"), "{q:#}");
    assert!(reason.chars().count() <= 256, "{q:#}");
    assert!(
        reason.contains("--fake-token=***"),
        "the log line with the key is not in the reason: {q:#}"
    );
    assert!(!reason.contains(KEY), "the key is in the reason: {q:#}");
    assert_eq!(st["take_count"], 0, "{st:#}");
    assert_clean_protocol(&st);
}

/// A stop that comes while the job's last node runs (a node that does not check for an
/// interrupt, so the job completes anyway) does not post the job as a success.
#[test]
fn a_job_stopped_in_its_last_node_is_not_posted_as_a_success() {
    let id = "stop-too-late-1";
    let mut w = Setup::start(Opts::default());
    w.enqueue(&[
        json!({"id": id, "input": {"workflow": {
            "1": {"class_type": "SlowNode", "inputs": {"seconds": 2.5, "uninterruptible": true}},
        }}}),
        good_job("after-late-stop"),
    ]);
    w.wait(Duration::from_secs(10), "a ping naming the job", |st| {
        st["pings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["query"]["job_id"] == id)
            .then_some(())
    });
    w.stop_job(id);
    let next = w.result("after-late-stop", Duration::from_secs(20));
    one_image(body(&next));
    let st = w.state();
    let stop_answered = st["stop_polls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["jobs"] == json!([id]));
    assert!(stop_answered, "the stop was not handed out: {st:#}");
    let posted: Vec<&Value> = st["results"][id]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["body"]["status"] != "IN_PROGRESS")
        .collect();
    assert!(
        posted.is_empty(),
        "a stopped job's result was posted: {posted:#?}\n{}",
        w.report()
    );
    assert_clean_protocol(&st);
}

/// `REFRESH_WORKER=true` (worker-comfyui's variable): the result carries `"stopPod": true`
/// and the worker exits (status 0) after its first job, as the SDK with `refresh_worker`, so
/// the platform starts a fresh worker; the next job stays queued.
#[test]
fn refresh_worker_exits_after_one_job() {
    let id = "refresh-1";
    let mut w = Setup::start(Opts {
        env: vec![("REFRESH_WORKER", "true".to_string())],
        ..Opts::default()
    });
    w.enqueue(&[good_job(id), good_job("for-the-next-worker")]);
    let rec = w.result(id, Duration::from_secs(20));
    let b = body(&rec);
    assert_eq!(b["stopPod"], true, "{b:#}");
    one_image(b);
    let status = w.wait_exit(Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        w.report()
    );
    assert!(!listening(w.comfy_port), "ComfyUI still listens");
    let st = w.state();
    assert_eq!(st["queued"], json!(["for-the-next-worker"]), "{st:#}");
    assert_clean_protocol(&st);
}

/// A worker with no volume at all: an empty store, the version's lock (`COMFYSTORE_LOCK`) and
/// a bucket (`COMFYSTORE_REMOTE`). It fills its store from the bucket (the lock's git and HTTP
/// sources are unreachable), answers a job with the bytes the version gives where it was made,
/// and its store fscks clean; a second start on the same store downloads nothing.
#[test]
fn a_worker_with_an_empty_store_fills_it_from_the_bucket_and_answers() {
    let test = "a_worker_with_an_empty_store_fills_it_from_the_bucket_and_answers";
    let bin = match common::gcs::binary() {
        Ok(b) => b,
        Err(why) => return common::cannot_run(test, &why),
    };
    let emu = common::gcs::Emulator::start(&bin);
    let front = common::gcs::Front::start(emu.port, None, 0, 0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();

    // The version, made and locked elsewhere (store A): the fake ComfyUI writing other PNG
    // bytes than the stock fake (zlib level 0), its venv, and a model.
    let v1 = dir.join("v1");
    let fake = fs::read_to_string(FAKE_COMFY).unwrap();
    let from = "zlib.compress(raw, 4)";
    assert!(fake.contains(from), "the fake's PNG encoder changed");
    common::write(
        &v1.join("main.py"),
        fake.replace(from, "zlib.compress(raw, 0)").as_bytes(),
    );
    let out = python_cmd(python3())
        .args(["-m", "venv", "--without-pip"])
        .arg(v1.join("venv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "venv: {}", describe(&out));
    let model: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    common::write(&v1.join("models/checkpoints/tiny.safetensors"), &model);
    let a = dir.join("store-a");
    let lock = dir.join("v1.lock.json");
    let out = common::run(&a, &["lock", s(&v1), "--tag", "v1", "-o", s(&lock)]);
    assert!(out.status.success(), "lock: {}", describe(&out));
    // Its other sources, unreachable: a git remote and a model URL on a closed port.
    let closed = free_port();
    let mut l: Value = serde_json::from_slice(&fs::read(&lock).unwrap()).unwrap();
    l["comfyui"]["repo"] = json!(format!(
        "http://127.0.0.1:{closed}/comfyanonymous/ComfyUI.git"
    ));
    l["comfyui"]["commit"] = json!("0123456789abcdef0123456789abcdef01234567");
    l["models"][0]["sources"] = json!([format!("http://127.0.0.1:{closed}/tiny.safetensors")]);
    fs::write(&lock, serde_json::to_vec_pretty(&l).unwrap()).unwrap();
    let remote = format!("gs://{}/cs", common::gcs::BUCKET);
    let emu_host = format!("127.0.0.1:{}", emu.port);
    let out = common::run_env(
        &a,
        &["push", &remote, s(&lock)],
        &[
            ("STORAGE_EMULATOR_HOST", Some(emu_host.as_ref())),
            ("GOOGLE_APPLICATION_CREDENTIALS", None),
        ],
    );
    assert!(out.status.success(), "push: {}", describe(&out));

    // What the version answers where it was made: run-job on its own folder.
    let job_file = dir.join("job.json");
    fs::write(&job_file, good_job("at-home").to_string()).unwrap();
    let port = free_port().to_string();
    let mut envs: Vec<(String, Option<&std::ffi::OsStr>)> =
        scrubbed_vars().into_iter().map(|k| (k, None)).collect();
    envs.extend(NETWORK_ENV.iter().map(|k| (k.to_string(), None)));
    let envs: Vec<(&str, Option<&std::ffi::OsStr>)> =
        envs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let out = common::run_env(
        &a,
        &[
            "--json",
            "run-job",
            s(&job_file),
            "--dest",
            s(&v1),
            "--comfy-port",
            &port,
            "--comfy-arg=--cpu",
            "--ready-timeout",
            "30s",
        ],
        &envs,
    );
    assert!(out.status.success(), "run-job: {}", describe(&out));
    let at_home: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = at_home["images"][0]["sha256"].as_str().unwrap().to_string();

    // The worker: a store it has never filled, the lock and the bucket, nothing else.
    let b = dir.join("store-b");
    let opts = |job: &str| Opts {
        jobs: vec![good_job(job)],
        store: Some(b.clone()),
        no_version: true,
        env: vec![
            ("COMFYSTORE_LOCK", s(&lock).to_string()),
            ("COMFYSTORE_REMOTE", remote.clone()),
            ("STORAGE_EMULATOR_HOST", front.url()),
            ("GCS_RETRY_BASE_SLEEP", "0.05".to_string()),
        ],
        ..Opts::default()
    };
    let downloads = |seen: &[common::gcs::Seen]| {
        seen.iter()
            .filter(|r| r.method == "GET" && r.target.contains("alt=media"))
            .count()
    };
    let mut w = Setup::start(opts("from-bucket"));
    let rec = w.result("from-bucket", Duration::from_secs(30));
    let (f, _) = one_image(body(&rec));
    assert_eq!(f["sha256"], want.as_str(), "{}", w.report());
    let status = w.sigterm(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", w.report());
    let first = front.seen();
    assert!(
        downloads(&first) >= 3,
        "the store was not filled from the bucket: {first:#?}"
    );
    let dest = w.dir.join("dest");
    assert_eq!(
        fs::read(dest.join("models/checkpoints/tiny.safetensors")).unwrap(),
        model
    );
    drop(w);
    let fsck = common::run(&b, &["fsck"]);
    assert!(fsck.status.success(), "fsck: {}", describe(&fsck));

    // A second start on the same store (a fresh DEST): the bucket is not even asked.
    let mut w = Setup::start(opts("second"));
    let rec = w.result("second", Duration::from_secs(30));
    let (f, _) = one_image(body(&rec));
    assert_eq!(f["sha256"], want.as_str(), "{}", w.report());
    let second = front.seen()[first.len()..].to_vec();
    assert_eq!(downloads(&second), 0, "downloaded again: {second:#?}");
    assert!(second.is_empty(), "the bucket was asked again: {second:#?}");
}

/// A version placed before the worker starts: the fake ComfyUI and its venv locked into
/// `dir/store` (tag `v1`) and materialized at `dir/placed`. Returns (store, lock, DEST).
fn placed_version(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let v1 = dir.join("v1");
    common::fake_comfy_folder(&v1, &fs::read(FAKE_COMFY).unwrap());
    let store = dir.join("store");
    let lock = dir.join("v1.lock.json");
    let out = common::run(&store, &["lock", s(&v1), "--tag", "v1", "-o", s(&lock)]);
    assert!(out.status.success(), "lock: {}", describe(&out));
    let dest = dir.join("placed");
    let out = common::run(&store, &["materialize", s(&lock), s(&dest)]);
    assert!(out.status.success(), "materialize: {}", describe(&out));
    (store, lock, dest)
}

/// A worker on a placed version (DEST, its store and its lock) with one job, logging the end
/// of placing.
fn warm_opts(job: &str, store: PathBuf, lock: &std::path::Path, dest: PathBuf) -> Opts {
    Opts {
        jobs: vec![good_job(job)],
        store: Some(store),
        dest: Some(dest),
        env: vec![("COMFYSTORE_LOCK", s(lock).to_string())],
        rust_log: Some(PLACING_LOG),
        ..Opts::default()
    }
}

/// What the fake ComfyUI gives for minimal.json with `--cpu` (its recorded expectation).
fn fake_expected_sha256() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fake_comfyui/minimal.expected.json"
    );
    let e: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let cpu = e["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["comfy_args"] == json!(["--cpu"]))
        .unwrap();
    let out = cpu["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["node"] == "3")
        .unwrap();
    out["sha256"].as_str().unwrap().to_string()
}

/// The worker's log with the end of `materialize_lock` in it ("materialize TAG: version
/// placed"), the version check of a warm start.
const PLACING_LOG: &str = "info,comfystore::pipeline::materialize=debug";

/// Where `needle` first occurs in the worker's log, for ordering its events.
fn at(log: &str, needle: &str, report: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in the worker's log\n{report}"))
}

/// A warm start (DEST already holds the locked version): ComfyUI is spawned first and the
/// version checked while it starts; the check finds it intact, so the same ComfyUI answers
/// the job. The order is the worker's own log: the spawn, then the end of placing (the
/// check: `materialize_lock` writes nothing on an intact version). ComfyUI takes longer to
/// start than the hang timeout: still starting when the check ends, it is waited for, not
/// taken for hung and restarted.
#[test]
fn a_warm_start_spawns_comfyui_before_the_check_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (store, lock, dest) = placed_version(&dir);
    let mut w = Setup::start(Opts {
        comfy_args: vec!["--fake-start-delay=3".into()],
        worker_args: vec!["--hang-timeout", "1s"],
        ..warm_opts("warm", store, &lock, dest)
    });
    let rec = w.result("warm", Duration::from_secs(30));
    let (f, _) = one_image(body(&rec));
    assert_eq!(
        f["sha256"],
        fake_expected_sha256().as_str(),
        "{}",
        w.report()
    );
    let (log, report) = (w.log(), w.report());
    let spawned = at(&log, "spawned ComfyUI", &report);
    let checked = at(&log, "materialize v1: version placed", &report);
    assert!(spawned < checked, "checked before the spawn\n{report}");
    assert_eq!(log.matches("spawned ComfyUI").count(), 1, "{report}");
    at(
        &log,
        "intact for v1 (checked while ComfyUI started)",
        &report,
    );
}

/// A warm start on a damaged version (DEST's main.py changed after it was placed): ComfyUI
/// is spawned on it, the check finds the change and repairs it, that ComfyUI is stopped and
/// a new one spawned on the repaired file; the job gets the version's bytes, and the damaged
/// ComfyUI never got a prompt (it would have left a file saying so).
#[test]
fn a_damaged_version_is_repaired_and_comfyui_restarted_before_any_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (store, lock, dest) = placed_version(&dir);
    let main = dest.join("main.py");
    let good = fs::read(&main).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let prompted = dir.join("damaged-comfyui-got-a-prompt");
    let (png, prompt) = ("zlib.compress(raw, 4)", r#"log("got prompt")"#);
    assert!(
        text.contains(png) && text.contains(prompt),
        "the fake changed"
    );
    let damaged = text.replace(png, "zlib.compress(raw, 0)").replace(
        prompt,
        &format!(
            r#"log("got prompt"); open({:?}, "w").close()"#,
            s(&prompted)
        ),
    );
    // A new file renamed over it: the placed one may share its inode with the store.
    let tmp_main = dest.join("main.py.tmp");
    fs::write(&tmp_main, damaged).unwrap();
    fs::rename(&tmp_main, &main).unwrap();

    let mut w = Setup::start(warm_opts("repaired", store, &lock, dest));
    let rec = w.result("repaired", Duration::from_secs(30));
    let (f, _) = one_image(body(&rec));
    let (log, report) = (w.log(), w.report());
    assert_eq!(f["sha256"], fake_expected_sha256().as_str(), "{report}");
    assert!(
        !prompted.exists(),
        "a job reached the damaged ComfyUI\n{report}"
    );
    assert_eq!(fs::read(&main).unwrap(), good, "main.py not repaired");
    assert_eq!(log.matches("spawned ComfyUI").count(), 2, "{report}");
    let first = at(&log, "spawned ComfyUI", &report);
    let repaired = at(&log, "materialize v1: version placed", &report);
    let second = first + 1 + at(&log[first + 1..], "spawned ComfyUI", &report);
    assert!(first < repaired && repaired < second, "{report}");
    at(&log, "1 entries written and 0 removed", &report);
}
