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

use super::error::Error;
use super::failure::{JobError, OutputError, Trouble};
use super::job::{parse_input, InputImage, JobInput, JobOutput, Limits};
use super::sink::{self, Sink};
use crate::comfy::api::{Finished, Produced, Submitted};
use crate::comfy::supervisor::Supervisor;
use crate::comfy::{Client, Folders, Watch};
use crate::store::Store;
use serde_json::{Map, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Outputs are added here (by BLAKE3, with their SHA-256), when set; shared, so a caller
    /// that materializes versions from the same store (`repro run`) need not open it twice.
    store: Option<Arc<Store>>,
    /// Where output files go in the answer.
    sink: Box<dyn Sink>,
    /// The one runtime of the worker, its RunPod loop and its local API.
    rt: tokio::runtime::Runtime,
    comfy: Client,
    /// Files the last job produced (outputs and previews), deleted after the next job.
    kept: Vec<PathBuf>,
    /// ComfyUI's input, output and temp folders.
    dirs: Folders,
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
        store: Option<Arc<Store>>,
        opts: WorkerOptions,
    ) -> Result<Worker, Error> {
        // Two threads: the RunPod heartbeat and stop channel, or the local API's server, go on
        // while a job blocks on ComfyUI.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let comfy = Client::new(sup.base_url())?;
        let dirs = sup.folders();
        Ok(Worker {
            sup,
            opts,
            store,
            rt,
            comfy,
            kept: Vec::new(),
            dirs,
            sink: Box::new(sink::Base64),
        })
    }

    /// Send output files to `sink` instead of base64 in the answer.
    pub fn with_sink(mut self, sink: Box<dyn Sink>) -> Worker {
        self.sink = sink;
        self
    }

    /// The worker's runtime, for the RunPod loop and the local API to run on too.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    /// The client of the worker's ComfyUI.
    pub fn comfy(&self) -> &Client {
        &self.comfy
    }

    /// Start ComfyUI if needed and wait until it answers.
    pub fn ready(&mut self) -> crate::comfy::Result<()> {
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
        self.run_job(job_id, input, progress)
            .map_err(|e| e.answer())
    }

    /// Delete the files the last job produced (when the worker stops).
    pub fn cleanup(&mut self) {
        self.replace_kept(Vec::new());
    }

    /// Check the input and that ComfyUI answers, run the job, and delete its inputs whatever
    /// happened.
    fn run_job(
        &mut self,
        job_id: &str,
        input: &Value,
        progress: &mut dyn FnMut(&Value),
    ) -> Result<Value, JobError> {
        let job = parse_input(input, &self.opts.limits)?;
        self.ready().map_err(JobError::Unreachable)?;
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

    /// The job on a ready ComfyUI, phase by phase.
    fn run_in(
        &mut self,
        job_id: &str,
        job: JobInput,
        uploaded: &mut Vec<String>,
        progress: &mut dyn FnMut(&Value),
    ) -> Result<Value, JobError> {
        let mut workflow = job.workflow;
        let renamed = self.upload_inputs(&job.images, uploaded)?;
        rename_inputs(&mut workflow, &renamed);
        // Listening before submitting (progress, and an early "done"; the history stays the
        // source of truth when the socket drops or never connects). Stopped on every way out.
        let watch = self.rt.block_on(self.comfy.watch());
        let prompt_id = self.submit(&workflow, &watch, job.comfy_org_api_key.as_deref())?;
        let deadline = Instant::now() + job.timeout.unwrap_or(self.opts.job_timeout);
        let finished = self.wait_for(&prompt_id, &watch, deadline, progress)?;
        let out = self.collect_outputs(job_id, &prompt_id, finished)?;
        Ok(serde_json::to_value(&out)?)
    }

    /// 1. Upload the input images, each into a folder named by its content (listed in
    ///    `uploaded`, to be deleted after the job). Gives each image's name in the workflow →
    ///    its name in ComfyUI's input folder.
    fn upload_inputs(
        &self,
        images: &[InputImage],
        uploaded: &mut Vec<String>,
    ) -> Result<HashMap<String, String>, JobError> {
        let mut renamed = HashMap::new();
        for img in images {
            let tag = format!(
                "comfystore-{}",
                &hex::encode(sha2::Sha256::digest(&img.bytes))[..16]
            );
            uploaded.push(tag.clone());
            let stored = self
                .rt
                .block_on(self.comfy.upload_image(&tag, &img.name, &img.bytes));
            match stored {
                Ok(name) => {
                    renamed.insert(img.name.clone(), format!("{tag}/{name}"));
                }
                Err(e) => {
                    return Err(self.failed(Trouble::Upload, vec![format!("{}: {e}", img.name)]))
                }
            }
        }
        Ok(renamed)
    }

    /// 2. Queue the workflow under the watch's client id; its prompt id.
    fn submit(
        &mut self,
        workflow: &Map<String, Value>,
        watch: &Watch,
        comfy_org_api_key: Option<&str>,
    ) -> Result<String, JobError> {
        let submitted = self.rt.block_on(self.comfy.submit(
            workflow,
            watch.client_id(),
            comfy_org_api_key,
        ));
        match submitted {
            Ok(Submitted::Queued { prompt_id }) => Ok(prompt_id),
            Ok(Submitted::Refused { error, details }) => Err(JobError::Reported { error, details }),
            Err(e) => Err(self.lost_comfyui(Trouble::Submit, e)),
        }
    }

    /// 3. Wait until the prompt's history entry says it ended, watching the process for death
    ///    and hangs and the deadline, and passing progress on.
    fn wait_for(
        &mut self,
        prompt_id: &str,
        watch: &Watch,
        deadline: Instant,
        progress: &mut dyn FnMut(&Value),
    ) -> Result<Finished, JobError> {
        let mut answered = Instant::now();
        loop {
            self.check_process(answered)?;
            let history = self
                .rt
                .block_on(self.comfy.history(prompt_id, self.sup.hang()));
            if let Ok(h) = history {
                answered = Instant::now();
                match h {
                    Finished::Pending => {}
                    f => return Ok(f),
                }
            }
            if Instant::now() > deadline {
                let _ = self.rt.block_on(self.comfy.interrupt(Some(prompt_id)));
                return Err(self.failed(Trouble::TimedOut, vec![]));
            }
            if let Some(p) = watch.progress_of(prompt_id) {
                progress(&p);
            }
            self.rt.block_on(watch.done_or(self.opts.poll));
        }
    }

    /// ComfyUI died, or has not answered since `answered` for longer than its hang time (then
    /// it is restarted for the next job).
    fn check_process(&mut self, answered: Instant) -> Result<(), JobError> {
        if !self.sup.alive() {
            return Err(self.crashed(vec![]));
        }
        if answered.elapsed() > self.sup.hang() {
            let err = self.failed(Trouble::Hung, vec![]);
            let _ = self.sup.restart(self.opts.ready_timeout);
            return Err(err);
        }
        Ok(())
    }

    /// 4. Every output file into the answer (previews are deleted, not answered); then the
    ///    previous job's files and this prompt's history entry go. A failed prompt that still
    ///    produced files answers them, with its errors.
    fn collect_outputs(
        &mut self,
        job_id: &str,
        prompt_id: &str,
        finished: Finished,
    ) -> Result<JobOutput, JobError> {
        let (files, failure) = match finished {
            Finished::Success { files } => (files, None),
            Finished::Failed {
                error,
                details,
                files,
            } => (files, Some((error, details))),
            Finished::Pending => (Vec::new(), None),
        };
        let mut out = JobOutput::default();
        // Every listed path is confined to ComfyUI's folders before anything is read or
        // deleted: a custom node chooses `subfolder` and `filename`.
        let mut now = Vec::new();
        let mut refused = false;
        for f in &files {
            let path = match self.dirs.path_of(f) {
                Ok(p) => p,
                Err(r) => {
                    tracing::warn!("job {job_id}: {r}");
                    out.errors.push(r.to_string());
                    refused = true;
                    continue;
                }
            };
            now.push(path);
            if f.kind == "temp" {
                continue;
            }
            match self.deliver(job_id, f) {
                Ok(d) => {
                    out.push(d.file);
                    out.errors.extend(d.note);
                }
                Err(e) => out.errors.push(format!("{}: {e}", f.filename)),
            }
        }
        self.release(prompt_id, now);
        if let Some((error, mut details)) = failure {
            if out.is_empty() {
                details.extend(out.errors);
                return Err(JobError::Reported { error, details });
            }
            out.errors.extend(details);
        } else if refused && out.is_empty() {
            return Err(JobError::Reported {
                error: "ComfyUI named output files outside its folders".to_string(),
                details: out.errors,
            });
        }
        Ok(out.finish())
    }

    /// One output file: `GET /view`, into the store, then to the sink.
    fn deliver(&self, job_id: &str, f: &Produced) -> Result<sink::Delivered, OutputError> {
        self.dirs.path_of(f)?;
        let bytes = self.rt.block_on(self.comfy.view(f))?;
        let stored = self.store_output(&f.filename, &bytes);
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        self.sink
            .deliver(&sink::Produced {
                job_id,
                filename: &f.filename,
                output: &f.output,
                node: &f.node,
                bytes: &bytes,
                sha256: &sha256,
                stored,
            })
            .map_err(OutputError::Sink)
    }

    /// Add an output to the store, when the worker has one; a failure only warns (the answer
    /// still carries the file). Whether it is in the store.
    fn store_output(&self, filename: &str, bytes: &[u8]) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        // A worker on a store it may only read (store-layout.md, "Permissions") keeps its
        // outputs in the answer alone.
        if store.writable().is_err() {
            return false;
        }
        let put = store
            .put_bytes(bytes, false, true)
            .and_then(|p| store.record_object(&p).map(|()| p));
        if let Err(e) = &put {
            tracing::warn!("output {filename} not stored: {e}");
        }
        put.is_ok()
    }

    /// 5. Keep this job's files (deleting the previous job's others) and let ComfyUI forget
    ///    the prompt.
    fn release(&mut self, prompt_id: &str, now: Vec<PathBuf>) {
        self.replace_kept(now);
        let _ = self.rt.block_on(self.comfy.forget(prompt_id));
    }

    /// Keep `now` (this job's files) and delete the previous job's others, with the folders
    /// that leaves empty.
    fn replace_kept(&mut self, now: Vec<PathBuf>) {
        for old in std::mem::replace(&mut self.kept, now) {
            if self.kept.contains(&old) {
                continue;
            }
            // Checked again: a folder on the way may have become a symlink since.
            if !self.dirs.beneath(&old) {
                tracing::warn!(
                    "{} is no longer inside ComfyUI's folders: kept",
                    old.display()
                );
                continue;
            }
            let _ = std::fs::remove_file(&old);
            let mut dir = old.parent();
            while let Some(d) = dir {
                if self.dirs.is_root(d) || !self.dirs.beneath(d) || std::fs::remove_dir(d).is_err()
                {
                    break;
                }
                dir = d.parent();
            }
        }
    }

    /// A request to ComfyUI failed: if the process died, say so and start it again for the
    /// next job; else report the HTTP error.
    fn lost_comfyui(&mut self, what: Trouble, e: crate::comfy::Error) -> JobError {
        if self.sup.alive() {
            return self.failed(what, vec![e.to_string()]);
        }
        self.crashed(vec![e.to_string()])
    }

    /// ComfyUI died during the job: the error, with its log; then start it for the next job.
    fn crashed(&mut self, details: Vec<String>) -> JobError {
        let err = self.failed(Trouble::Crashed, details);
        let _ = self.ready();
        err
    }

    /// A failure around ComfyUI, with its recent log.
    fn failed(&self, what: Trouble, details: Vec<String>) -> JobError {
        JobError::Logged {
            what,
            details,
            log: self.sup.log_tail(20),
        }
    }
}

/// Point the workflow's inputs that name an uploaded image at its name in ComfyUI.
fn rename_inputs(workflow: &mut Map<String, Value>, renamed: &HashMap<String, String>) {
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
}
