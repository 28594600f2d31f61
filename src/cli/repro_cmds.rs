//! `repro`: is a version the same on two machines, or in two folders (`repro env`)? Does a
//! workflow give the same files on every run of it, and the recorded ones (`repro run`)?

use super::run_cmds::{worker_at, ComfyRunArgs};
use super::{open_store, Cli, SourceArgs, EXIT_FAILURE, EXIT_USAGE};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use comfystore::lockfile::diff::Change;
use comfystore::lockfile::Lockfile;
use comfystore::pipeline::materialize::LockOptions;
use comfystore::pipeline::repro::{compare, version_of, Kind};
use comfystore::pipeline::repro_run::{
    across_runs, against_expectation, run_fresh, workflow_sha256, Difference, ExpectFile,
    Expectation, FreshOptions, FreshRun, InputImage, LockInfo, Output, Recorded, Subject,
};
use comfystore::worker::job::{input_of, parse_input, JobOutput, Limits};
use comfystore::worker::{sink, Answer};
use serde_json::{json, Value};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum ReproCommand {
    /// Compare two versions by what decides their bytes: exit 0 when the same, 1 when they
    /// differ, 2 on error (like diff).
    ///
    /// A and B are each a lockfile or a folder: a ComfyUI install or a materialized DEST, which
    /// is scanned as `lock` scans it (its parts go into the store; no lockfile is written).
    /// Compared: ComfyUI's and each node's commit (where both sides have one) and tree id, the
    /// Python version, packages and environment id, and every model's hash. Model sources and
    /// repo remotes are left out: they change no byte.
    #[command(
        after_help = "Examples:\n  comfystore repro env lockfiles/comfy-v1.lock.json /workspace/ComfyUI   # did the install drift from its lock?\n  comfystore repro env /workspace/v1 /workspace/v1-rebuilt\n\nLines read: + added, - removed, ~ changed (moved, tree, upgraded, …), with from -> to."
    )]
    Env { a: PathBuf, b: PathBuf },
    /// Run a workflow N times, each in a fresh materialization of LOCK, and compare the
    /// output files' SHA-256: across runs, and with an expectation file. Exit 0 when all are
    /// the same, 1 when any differs (each difference names the run, the node and the file),
    /// 2 on error (a bad file, a lock that cannot be materialized, a job ComfyUI failed).
    ///
    /// Each run materializes LOCK into a new empty folder (run-N in a work folder), starts
    /// ComfyUI there with the --comfy-arg arguments, runs the job as `run-job` does and stops
    /// ComfyUI; the folder is removed afterwards (--keep keeps them). Runs share nothing but
    /// the store: no output counter, cache or temp file. Output files are added to the store
    /// (`comfystore cat sha256:HASH` gives one back).
    ///
    /// WORKFLOW is an API-format workflow (ComfyUI's Export (API)) or a worker-comfyui job
    /// (`{"input": {"workflow": …, "images": […]}}`); it reaches ComfyUI in its own key order.
    /// Outputs are paired by node, output key and place, and compared by SHA-256.
    ///
    /// --expect FILE compares every run with FILE's outputs for the same --comfy-arg list;
    /// with --record, FILE is written instead (temp file, then rename), only when every run
    /// agrees. FILE is JSON: {"schema": "comfystore.repro-expect/1", "workflow_sha256",
    /// "input_images"?, "expectations": [{"comfy_args": […], "lock": {"tag", "comfyui_commit"?,
    /// "comfyui_tree"?}, "runs", "outputs": [{"node", "output", "index", "filename",
    /// "sha256"}]}]}: one entry per argument list (ComfyUI's PNG metadata, or
    /// --disable-metadata, changes the bytes). See docs/runpod.md.
    #[command(
        after_help = "Examples:\n  comfystore repro run lockfiles/comfy-v1.lock.json workflows/minimal.json --comfy-arg=--cpu --runs 3\n  comfystore repro run lockfiles/comfy-v1.lock.json workflows/minimal.json --comfy-arg=--cpu --expect workflows/minimal.expected.json --record\n  comfystore repro run lockfiles/comfy-v2.lock.json workflows/minimal.json --comfy-arg=--cpu --expect workflows/minimal.expected.json\n  comfystore repro run lockfiles/comfy-v2.lock.json workflows/minimal.json --comfy-arg=--cpu --comfy-arg=--disable-metadata --expect workflows/minimal.expected.json --record\n\nA difference reads: run 2: node 9 images[0] ComfyUI_00001_.png: sha256 <got>, run 1 has <expected>"
    )]
    Run(Box<RunArgs>),
}

/// `repro run`'s arguments (no doc comment: the subcommand's own text is its help).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The lockfile of the version to run.
    pub lock: PathBuf,
    /// The workflow (API format) or job file.
    pub workflow: PathBuf,
    /// How many runs, each in a fresh materialization.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Compare every run with the outputs FILE records for the same --comfy-arg list.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// Write the runs' outputs into the --expect FILE (when every run agrees), replacing what
    /// it held for the same --comfy-arg list.
    #[arg(long, requires = "expect")]
    pub record: bool,
    /// Make the work folder (one run-N folder per run) in DIR; default: the temp folder.
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Keep each run's folder and its GC root (`comfystore remove --all DIR` removes one).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub comfy: ComfyRunArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// `repro env A B`.
pub fn env(cli: &Cli, a: &Path, b: &Path) -> Result<u8> {
    let side = |p: &Path| version_of(p, || open_store(cli));
    let (ka, la, kb, lb) = match (side(a), side(b)) {
        (Ok((ka, la)), Ok((kb, lb))) => (ka, la, kb, lb),
        // Like diff(1): trouble is 2, so that 1 always means "they differ".
        (Err(e), _) | (_, Err(e)) => {
            if cli.json {
                println!("{}", json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let changes = compare(&la, &lb);
    if cli.json {
        let v = json!({
            "equal": changes.is_empty(),
            "a": { "path": a, "kind": ka },
            "b": { "path": b, "kind": kb },
            "changes": changes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_changes(&changes, ka, kb);
    }
    Ok(if changes.is_empty() { 0 } else { EXIT_FAILURE })
}

/// One line per difference; a summary on stderr when they are the same.
fn print_changes(changes: &[Change], ka: Kind, kb: Kind) {
    if changes.is_empty() {
        let kind = |k| if k == Kind::Lock { "lock" } else { "install" };
        eprintln!("same version ({} vs {})", kind(ka), kind(kb));
    }
    for c in changes {
        let fromto = c
            .from
            .as_ref()
            .zip(c.to.as_ref())
            .map(|(f, t)| format!(": {f} -> {t}"));
        println!(
            "{} {} {} {}{}",
            c.sign(),
            c.part,
            c.name,
            c.change,
            fromto.unwrap_or_default()
        );
    }
}

/// `repro run LOCK WORKFLOW`: any error is exit 2, so that 1 always means "an output differs".
pub fn run(cli: &Cli, a: &RunArgs) -> Result<u8> {
    match run_checked(cli, a) {
        Ok(code) => Ok(code),
        Err(e) => {
            if cli.json {
                println!("{}", json!({ "error": format!("{e:#}") }));
            }
            eprintln!("error: {e:#}");
            Ok(EXIT_USAGE)
        }
    }
}

/// The job of a workflow file, checked as the worker checks it, and what it is made of.
struct Job {
    input: Value,
    subject: Subject,
}

fn read_job(path: &Path, a: &ComfyRunArgs) -> Result<Job> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON workflow", path.display()))?;
    let input = input_of(doc);
    let limits = Limits {
        input_bytes: a.max_input_mb * 1000 * 1000,
        ..Limits::default()
    };
    let job = parse_input(&input, &limits).with_context(|| format!("{}", path.display()))?;
    let input_images = job
        .images
        .iter()
        .map(|i| InputImage {
            name: i.name.clone(),
            sha256: hex::encode(sha2::Sha256::digest(&i.bytes)),
        })
        .collect();
    Ok(Job {
        input,
        subject: Subject {
            workflow_sha256: workflow_sha256(&job.workflow),
            input_images,
        },
    })
}

/// What --expect names: the file to compare with, or the one to record into (if any).
enum Expect {
    None,
    Compare(Expectation),
    Record(PathBuf, Option<ExpectFile>),
}

/// Read (and check) the expectation file before anything runs. A file --record would
/// overwrite must be an expectation file already, or not exist.
fn read_expect(a: &RunArgs, subject: &Subject) -> Result<Expect> {
    let Some(path) = &a.expect else {
        return Ok(Expect::None);
    };
    if a.record {
        let old = match path.try_exists() {
            Ok(false) => None,
            _ => Some(ExpectFile::read(path).context("--record writes only expectation files")?),
        };
        return Ok(Expect::Record(path.clone(), old));
    }
    let file = ExpectFile::read(path)?;
    file.check_subject(path, subject)?;
    let args = &a.comfy.comfy_arg;
    let Some(e) = file.expectation(args) else {
        let known: Vec<_> = file.expectations.iter().map(|e| &e.comfy_args).collect();
        anyhow::bail!(
            "{}: no expectation for --comfy-arg {args:?} (it has {known:?}); record one with --record",
            path.display()
        );
    };
    Ok(Expect::Compare(e.clone()))
}

fn run_checked(cli: &Cli, a: &RunArgs) -> Result<u8> {
    let job = read_job(&a.workflow, &a.comfy)?;
    let expect = read_expect(a, &job.subject)?;
    let lock = Lockfile::read(&a.lock)?;
    let store = Arc::new(open_store(cli)?);
    let opts = FreshOptions {
        runs: a.runs as usize,
        work: a.work.clone(),
        keep: a.keep,
        lock: LockOptions {
            fetch: a.sources.options()?,
            ..LockOptions::default()
        },
    };
    let talk = !(cli.quiet || cli.json);
    let runs = run_fresh(&store, &lock, &opts, |n, dest| -> Result<Vec<Output>> {
        if talk {
            eprintln!("run {n}/{}: {} in {}", a.runs, lock.tag, dest.display());
        }
        let mut w = worker_at(store.clone(), dest, &a.comfy)?.with_sink(Box::new(sink::HashOnly));
        let answer = w.run(&format!("repro-run-{n}"), &job.input);
        w.sup.stop(Duration::from_secs(10));
        drop(w);
        outputs_of(n, answer)
    })?;
    let outputs: Vec<Vec<Output>> = runs.iter().map(|r| r.outputs.clone()).collect();
    let mut differences = across_runs(&outputs);
    let mut recorded = None;
    match &expect {
        Expect::Compare(e) => differences.extend(against_expectation(&outputs, &e.outputs)),
        Expect::Record(path, old) if differences.is_empty() => {
            let mut file = old
                .clone()
                .unwrap_or_else(|| ExpectFile::new(job.subject.clone()));
            let e = Expectation {
                comfy_args: a.comfy.comfy_arg.clone(),
                lock: LockInfo::of(&lock),
                runs: runs.len(),
                outputs: outputs.first().cloned().unwrap_or_default(),
            };
            let what = file.record(&job.subject, e);
            file.write(path)?;
            recorded = Some(what);
        }
        _ => {}
    }
    let report = Report {
        a,
        lock: &lock,
        subject: &job.subject,
        runs: &runs,
        differences: &differences,
        recorded,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print(cli.quiet);
    }
    Ok(if differences.is_empty() {
        0
    } else {
        EXIT_FAILURE
    })
}

/// A run's output files, or why the job gave none to compare.
fn outputs_of(n: usize, answer: Answer) -> Result<Vec<Output>> {
    let out = match answer {
        Ok(v) => v,
        Err(e) => {
            let mut msg = format!(
                "run {n}: {}",
                e["error"].as_str().unwrap_or("the job failed")
            );
            for d in e["details"].as_array().into_iter().flatten() {
                msg.push_str("\n  ");
                msg.push_str(d.as_str().unwrap_or_default());
            }
            anyhow::bail!(msg);
        }
    };
    let out: JobOutput = serde_json::from_value(out).context("the worker's answer")?;
    anyhow::ensure!(
        out.errors.is_empty(),
        "run {n}: some outputs could not be read: {}",
        out.errors.join("; ")
    );
    anyhow::ensure!(
        !out.is_empty(),
        "run {n}: the workflow wrote no output file (it needs an output node such as SaveImage)"
    );
    let files = out
        .all()
        .cloned()
        .map(|f| Output {
            node: f.node,
            output: f.output,
            index: 0,
            filename: f.filename,
            sha256: f.sha256,
        })
        .collect();
    Ok(Output::numbered(files))
}

/// What `repro run` found.
struct Report<'a> {
    a: &'a RunArgs,
    lock: &'a Lockfile,
    subject: &'a Subject,
    runs: &'a [FreshRun],
    differences: &'a [Difference],
    recorded: Option<Recorded>,
}

impl Report<'_> {
    fn json(&self) -> Value {
        let expect = self.a.expect.as_ref().map(|f| {
            json!({
                "file": f,
                "recorded": self.recorded,
                "compared": !self.a.record,
            })
        });
        json!({
            "equal": self.differences.is_empty(),
            "lock": self.lock.tag,
            "workflow": self.a.workflow,
            "workflow_sha256": self.subject.workflow_sha256,
            "comfy_args": self.a.comfy.comfy_arg,
            "kept": self.a.keep,
            "runs": self.runs,
            "expect": expect,
            "differences": self.differences,
        })
    }

    /// One line per difference on stdout; a summary on stderr (unless `quiet`).
    fn print(&self, quiet: bool) {
        for d in self.differences {
            println!("{d}");
        }
        if quiet {
            return;
        }
        let n = self.runs.len();
        let wf = self.a.workflow.display();
        if !self.differences.is_empty() {
            let what = match (&self.a.expect, self.a.record) {
                (Some(f), true) => format!("; {} not written", f.display()),
                _ => String::new(),
            };
            eprintln!(
                "{} difference(s) in {n} run(s) of {wf} on {}{what}",
                self.differences.len(),
                self.lock.tag
            );
            return;
        }
        let first = self
            .runs
            .first()
            .map(|r| r.outputs.as_slice())
            .unwrap_or_default();
        let against = match (&self.a.expect, self.recorded) {
            (Some(f), Some(r)) => format!("; recorded in {} ({})", f.display(), recorded_word(r)),
            (Some(f), None) => format!(", and as {} expects", f.display()),
            (None, _) => String::new(),
        };
        eprintln!(
            "the same {} output(s) in {n} run(s) of {wf} on {}{against}:",
            first.len(),
            self.lock.tag
        );
        for o in first {
            eprintln!(
                "  node {} {}[{}] {}: sha256 {}",
                o.node, o.output, o.index, o.filename, o.sha256
            );
        }
        if self.a.keep {
            for r in self.runs {
                eprintln!("  kept {}", r.dest.display());
            }
        }
    }
}

fn recorded_word(r: Recorded) -> &'static str {
    match r {
        Recorded::New => "new",
        Recorded::Unchanged => "unchanged",
        Recorded::Changed => "changed",
    }
}
