//! Running one job on a supervised ComfyUI: check the input, upload its images, submit the
//! workflow, wait for it, collect every output file, clean up.
//!
//! Jobs are kept apart without changing the workflow ComfyUI runs (its outputs embed the
//! prompt, and runs are compared by hash): each job's answer is read from its own
//! `/history/{prompt_id}`, so no other job's files appear in it. Input images go into a folder
//! named by their content (`input/comfystore-<sha256>/`), so the same job gives the same
//! prompt. Output files are kept until the next job finishes and then deleted, unless that
//! job's answer names them again: ComfyUI answers an identical prompt from its cache with
//! the earlier files, which must still be there. Completion is read from `GET /history/{id}`,
//! the source of truth that survives a dropped websocket.

use super::job::{error_answer, parse_input, JobOutput, Limits, OutputFile};
use crate::comfy::api::{read_history, read_submit, Finished, Produced, Submitted};
use crate::comfy::supervisor::Supervisor;
use crate::store::Store;
use serde_json::{json, Value};
use sha2::Digest;
use std::time::{Duration, Instant};

/// How jobs run.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub limits: Limits,
    /// How long ComfyUI may take to answer after a (re)start.
    pub ready_timeout: Duration,
    /// A job's time limit when its input gives no `timeout_s`.
    pub job_timeout: Duration,
    /// How often `/history` is asked while a job runs.
    pub poll: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            limits: Limits::default(),
            ready_timeout: Duration::from_secs(300),
            job_timeout: Duration::from_secs(600),
            poll: Duration::from_millis(200),
        }
    }
}

/// A supervised ComfyUI and what it needs to answer jobs.
pub struct Worker {
    pub sup: Supervisor,
    opts: WorkerOptions,
    /// Outputs are added here (by BLAKE3, with their SHA-256), when set.
    store: Option<Store>,
    /// Where output files go in the answer.
    sink: Box<dyn super::sink::Sink>,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// Files the last job produced (outputs and previews), deleted after the next job.
    kept: Vec<std::path::PathBuf>,
    /// ComfyUI's input, output and temp folders.
    dirs: Folders,
}

/// Where ComfyUI keeps files: its own folders, or those `--input-directory`,
/// `--output-directory` and `--temp-directory` name.
#[derive(Clone, Debug)]
struct Folders {
    input: std::path::PathBuf,
    output: std::path::PathBuf,
    temp: std::path::PathBuf,
}

impl Folders {
    fn of(dest: &std::path::Path, args: &[String]) -> Folders {
        let flag = |name: &str, default: &str| {
            let mut it = args.iter();
            while let Some(a) = it.next() {
                if let Some(v) = a.strip_prefix(&format!("{name}=")) {
                    return dest.join(v);
                }
                if a == name {
                    if let Some(v) = it.next() {
                        return dest.join(v);
                    }
                }
            }
            dest.join(default)
        };
        Folders {
            input: flag("--input-directory", "input"),
            output: flag("--output-directory", "output"),
            temp: flag("--temp-directory", "temp"),
        }
    }

    fn of_kind(&self, kind: &str) -> &std::path::Path {
        match kind {
            "temp" => &self.temp,
            "input" => &self.input,
            _ => &self.output,
        }
    }
}

/// A job's answer: the handler's `output`, or `{"error", "details"}`.
pub type Answer = std::result::Result<Value, Value>;

impl Drop for Worker {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl Worker {
    pub fn new(
        sup: Supervisor,
        store: Option<Store>,
        opts: WorkerOptions,
    ) -> crate::Result<Worker> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::python("worker", format!("runtime: {e}")))?;
        // No idle connections kept: after ComfyUI restarts, a pooled one would still lead to
        // the dead process (and reuse saves nothing on loopback).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| crate::Error::python("worker", format!("http client: {e}")))?;
        let dirs = Folders::of(sup.dest(), sup.args());
        Ok(Worker {
            sup,
            opts,
            store,
            rt,
            http,
            kept: Vec::new(),
            dirs,
            sink: Box::new(super::sink::Base64),
        })
    }

    /// Send output files to `sink` instead of base64 in the answer.
    pub fn with_sink(mut self, sink: Box<dyn super::sink::Sink>) -> Worker {
        self.sink = sink;
        self
    }

    /// Start ComfyUI if needed and wait until it answers.
    pub fn ready(&mut self) -> crate::Result<()> {
        self.sup.ensure(self.opts.ready_timeout)
    }

    /// Run one job. Never panics on input; every failure is an `Err` answer, and ComfyUI is
    /// restarted for the next job if it died.
    pub fn run(&mut self, job_id: &str, input: &Value) -> Answer {
        self.run_with_progress(job_id, input, &mut |_| {})
    }

    /// [`Worker::run`], calling `progress` with ComfyUI's progress events of the job
    /// (`{"node", "value", "max"}`) as they arrive on its websocket.
    pub fn run_with_progress(
        &mut self,
        job_id: &str,
        input: &Value,
        progress: &mut dyn FnMut(&Value),
    ) -> Answer {
        let job =
            parse_input(input, &self.opts.limits).map_err(|e| error_answer(&e.to_string(), &[]))?;
        if let Err(e) = self.ready() {
            return Err(error_answer("ComfyUI is not reachable", &[e.to_string()]));
        }
        let started = Instant::now();
        let mut uploaded = Vec::new();
        let result = self.run_in(job_id, job, &mut uploaded, progress);
        tracing::info!(
            "job {job_id}: {} in {:?}",
            if result.is_ok() { "done" } else { "failed" },
            started.elapsed()
        );
        // The job's inputs go now, whatever happened.
        for dir in uploaded {
            let _ = std::fs::remove_dir_all(self.dirs.input.join(dir));
        }
        result
    }

    /// Delete the files the last job produced (when the worker stops).
    pub fn cleanup(&mut self) {
        self.replace_kept(Vec::new());
    }

    /// Keep `now` (this job's files) and delete the previous job's others, with the folders
    /// that leaves empty.
    fn replace_kept(&mut self, now: Vec<std::path::PathBuf>) {
        for old in std::mem::replace(&mut self.kept, now) {
            if self.kept.contains(&old) {
                continue;
            }
            let _ = std::fs::remove_file(&old);
            let mut dir = old.parent();
            while let Some(d) = dir {
                let root = [&self.dirs.input, &self.dirs.output, &self.dirs.temp]
                    .iter()
                    .any(|r| d == r.as_path());
                if root || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
    }

    fn run_in(
        &mut self,
        job_id: &str,
        job: super::job::JobInput,
        uploaded: &mut Vec<String>,
        progress: &mut dyn FnMut(&Value),
    ) -> Answer {
        let base = self.sup.base_url();
        let mut workflow = job.workflow;
        // 1. Input images, each into a folder named by its content.
        let mut renamed = std::collections::HashMap::new();
        for img in &job.images {
            let tag = format!(
                "comfystore-{}",
                &hex::encode(sha2::Sha256::digest(&img.bytes))[..16]
            );
            uploaded.push(tag.clone());
            let part =
                reqwest::multipart::Part::bytes(img.bytes.clone()).file_name(img.name.clone());
            let form = reqwest::multipart::Form::new()
                .part("image", part)
                .text("overwrite", "true")
                .text("type", "input")
                .text("subfolder", tag.to_string());
            let r = self.rt.block_on(async {
                let resp = self
                    .http
                    .post(format!("{base}/upload/image"))
                    .multipart(form)
                    .send()
                    .await?;
                resp.error_for_status()?.json::<Value>().await
            });
            match r {
                Ok(v) => {
                    let name = v.get("name").and_then(Value::as_str).unwrap_or(&img.name);
                    renamed.insert(img.name.clone(), format!("{tag}/{name}"));
                }
                Err(e) => {
                    return Err(self.failed(
                        "Failed to upload one or more input images",
                        vec![format!("{}: {e}", img.name)],
                    ))
                }
            }
        }
        for node in workflow.values_mut() {
            let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) else {
                continue;
            };
            for v in inputs.values_mut() {
                if let Some(r) = v.as_str().and_then(|s| renamed.get(s)) {
                    *v = Value::String(r.clone());
                }
            }
        }
        // 2. Submit, listening on the websocket first (progress, and an early "done"; the
        //    history stays the source of truth when the socket drops or never connects).
        let client_id = client_id();
        let watch = Watch::default();
        // Stopped on every way out of this function.
        let _reader = self
            .rt
            .block_on(watch.connect(&base, &client_id))
            .map(AbortOnDrop);
        let mut body = json!({ "prompt": workflow, "client_id": client_id });
        if let Some(k) = &job.comfy_org_api_key {
            body["extra_data"] = json!({ "api_key_comfy_org": k });
        }
        let submitted = self.rt.block_on(async {
            let resp = self
                .http
                .post(format!("{base}/prompt"))
                .json(&body)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let v = resp.json::<Value>().await.unwrap_or(Value::Null);
            Ok::<_, reqwest::Error>((status, v))
        });
        let prompt_id = match submitted {
            Ok((status, v)) => match read_submit(status, &v) {
                Submitted::Queued { prompt_id } => prompt_id,
                Submitted::Refused { error, details } => {
                    return Err(error_answer(&error, &details))
                }
            },
            Err(e) => return Err(self.lost_comfyui("HTTP communication error with ComfyUI", e)),
        };
        // 3. Wait, watching the process.
        let deadline = Instant::now() + job.timeout.unwrap_or(self.opts.job_timeout);
        let mut answered = Instant::now();
        let finished = loop {
            if !self.sup.alive() {
                return Err(self.crashed(vec![]));
            }
            if answered.elapsed() > self.sup.hang() {
                let err = self.failed("ComfyUI stopped answering during the job", vec![]);
                let _ = self.sup.restart(self.opts.ready_timeout);
                return Err(err);
            }
            // Bounded by the hang timeout: a hung ComfyUI accepts and never answers.
            let hang = self.sup.hang();
            let h = self.rt.block_on(async {
                self.http
                    .get(format!("{base}/history/{prompt_id}"))
                    .timeout(hang)
                    .send()
                    .await?
                    .json::<Value>()
                    .await
            });
            if let Ok(h) = h {
                answered = Instant::now();
                match read_history(&h, &prompt_id) {
                    Finished::Pending => {}
                    f => break f,
                }
            }
            if Instant::now() > deadline {
                let _ = self.rt.block_on(async {
                    self.http
                        .post(format!("{base}/interrupt"))
                        .json(&json!({ "prompt_id": prompt_id }))
                        .send()
                        .await
                });
                return Err(self.failed("The job timed out", vec![]));
            }
            if let Some(p) = watch.progress_of(&prompt_id) {
                progress(&p);
            }
            let done = watch.done.clone();
            let poll = self.opts.poll;
            self.rt.block_on(async {
                tokio::select! {
                    _ = done.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            });
        };

        let (files, failure) = match finished {
            Finished::Success { files } => (files, None),
            Finished::Failed {
                error,
                details,
                files,
            } => (files, Some((error, details))),
            Finished::Pending => (Vec::new(), None),
        };
        // 4. Outputs (previews are deleted, not answered).
        let now: Vec<std::path::PathBuf> = files
            .iter()
            .map(|f| {
                self.dirs
                    .of_kind(&f.kind)
                    .join(&f.subfolder)
                    .join(&f.filename)
            })
            .collect();
        let mut out = JobOutput::default();
        for f in files.iter().filter(|f| f.kind != "temp") {
            match self.fetch(&base, job_id, f) {
                Ok(file) => out.images.push(file),
                Err(e) => out.errors.push(format!("{}: {e}", f.filename)),
            }
        }
        self.replace_kept(now);
        let _ = self.rt.block_on(async {
            self.http
                .post(format!("{base}/history"))
                .json(&json!({ "delete": [prompt_id] }))
                .send()
                .await
        });
        if let Some((error, mut details)) = failure {
            if out.images.is_empty() {
                details.extend(out.errors);
                return Err(error_answer(&error, &details));
            }
            out.errors.extend(details);
        }
        serde_json::to_value(&out).map_err(|e| error_answer(&e.to_string(), &[]))
    }

    /// `GET /view` one file; hash it, store it, encode it.
    fn fetch(
        &self,
        base: &str,
        job_id: &str,
        f: &Produced,
    ) -> std::result::Result<OutputFile, String> {
        let bytes = self
            .rt
            .block_on(async {
                let query = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("filename", &f.filename)
                    .append_pair("subfolder", &f.subfolder)
                    .append_pair("type", &f.kind)
                    .finish();
                let url = format!("{base}/view?{query}");
                self.http
                    .get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await
            })
            .map_err(|e| e.to_string())?;
        if let Some(store) = &self.store {
            let put = store
                .put_bytes(&bytes, false, true)
                .and_then(|p| store.record_object(&p).map(|()| p));
            if let Err(e) = put {
                tracing::warn!("output {} not stored: {e}", f.filename);
            }
        }
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        self.sink.deliver(&super::sink::Produced {
            job_id,
            filename: &f.filename,
            output: &f.output,
            node: &f.node,
            bytes: &bytes,
            sha256: &sha256,
        })
    }

    /// A request to ComfyUI failed: if the process died, say so and start it again for the
    /// next job; else report the HTTP error.
    fn lost_comfyui(&mut self, what: &str, e: reqwest::Error) -> Value {
        if self.sup.alive() {
            return self.failed(what, vec![e.to_string()]);
        }
        self.crashed(vec![e.to_string()])
    }

    /// ComfyUI died during the job: the error, with its log; then start it for the next job.
    fn crashed(&mut self, details: Vec<String>) -> Value {
        let err = self.failed("ComfyUI crashed while running the job", details);
        let _ = self.ready();
        err
    }

    /// An error answer with ComfyUI's recent log.
    fn failed(&self, error: &str, mut details: Vec<String>) -> Value {
        let tail = self.sup.log_tail(20);
        if !tail.is_empty() {
            details.push(format!("ComfyUI log (last lines):\n{}", tail.join("\n")));
        }
        error_answer(error, &details)
    }
}

/// What the job's websocket said: the latest progress event, and a signal when ComfyUI says
/// a prompt is done (`executing` with no node).
#[derive(Default, Clone)]
struct Watch {
    latest: std::sync::Arc<std::sync::Mutex<Option<Value>>>,
    /// The progress last handed to the caller, so each event is reported once.
    reported: std::sync::Arc<std::sync::Mutex<Option<Value>>>,
    done: std::sync::Arc<tokio::sync::Notify>,
}

impl Watch {
    /// Connect `ws://…/ws?clientId=` and read it in a task of the worker's runtime (it runs
    /// while the worker waits). `None` when the socket cannot be opened: polling does it all.
    async fn connect(&self, base: &str, client_id: &str) -> Option<tokio::task::JoinHandle<()>> {
        use futures_util::StreamExt;
        let url = format!(
            "{}/ws?clientId={client_id}",
            base.replacen("http://", "ws://", 1)
        );
        let connect = tokio_tungstenite::connect_async(url);
        let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(c)) => c,
            other => {
                tracing::debug!("websocket not used: {:?}", other.err().map(|_| "timeout"));
                return None;
            }
        };
        tracing::debug!("websocket {client_id} connected");
        let watch = self.clone();
        Some(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let Ok(text) = msg.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("progress") => {
                        if let Ok(mut l) = watch.latest.lock() {
                            *l = Some(v["data"].clone());
                        }
                    }
                    Some("executing") if v["data"]["node"].is_null() => watch.done.notify_one(),
                    _ => {}
                }
            }
            tracing::debug!("websocket closed");
        }))
    }

    /// The newest progress event of `prompt_id` not reported yet.
    fn progress_of(&self, prompt_id: &str) -> Option<Value> {
        let latest = self.latest.lock().ok()?.clone()?;
        if latest["prompt_id"].as_str() != Some(prompt_id) {
            return None;
        }
        let mut reported = self.reported.lock().ok()?;
        if reported.as_ref() == Some(&latest) {
            return None;
        }
        *reported = Some(latest.clone());
        Some(json!({
            "node": latest["node"],
            "value": latest["value"],
            "max": latest["max"],
        }))
    }
}

/// A task that ends when this goes out of scope.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fresh websocket client id, `comfystore-<random>`.
fn client_id() -> String {
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    format!("comfystore-{}", hex::encode(r))
}
