//! `repro run LOCK WORKFLOW`: does a workflow give the same output files on every run of a
//! version, and the files recorded for it?
//!
//! Each run gets a fresh materialization of the lock in a folder of its own (a work folder,
//! removed afterwards unless kept), so runs share no ComfyUI state: no output counter, no
//! cache, no temp files. The job itself is run by the caller (the worker is a layer above the
//! pipelines): [`run_fresh`] hands it each run's folder and takes back the output files.
//!
//! Output files are paired across runs by where they came from, not by their name: the node,
//! the node's output key (`images`, `videos`, …) and the file's place among that node's files
//! under that key. A pair differs when its SHA-256 differs, or when one side has no such file.
//!
//! An expectation file ([`ExpectFile`], `comfystore.repro-expect/1`) records, for one workflow,
//! the outputs of each set of ComfyUI arguments it was run with (metadata on, and
//! `--disable-metadata`, give other bytes): see docs/runpod.md.

use super::error::{Error, IoContext, Result};
use super::materialize::{materialize_lock, LockOptions};
use crate::lockfile::Lockfile;
use crate::place;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The `schema` of an expectation file.
pub const SCHEMA: &str = "comfystore.repro-expect/1";

/// One output file of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The node id in the workflow.
    pub node: String,
    /// The node output key it came under: `images`, `gifs`, `videos`, `audio`, …
    pub output: String,
    /// Its place among the node's files under that key (0 for the first).
    pub index: usize,
    pub filename: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl Output {
    fn key(&self) -> (&str, &str, usize) {
        (&self.node, &self.output, self.index)
    }

    /// A run's files, in the order the job answered them, numbered within their node and
    /// output key (any `index` given is replaced) and sorted by node, key and index.
    pub fn numbered(files: Vec<Output>) -> Vec<Output> {
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut out: Vec<Output> = files
            .into_iter()
            .map(|mut f| {
                let n = seen.entry((f.node.clone(), f.output.clone())).or_insert(0);
                f.index = *n;
                *n += 1;
                f
            })
            .collect();
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        out
    }
}

/// What a run is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Against {
    /// An earlier run (the first).
    Run(usize),
    /// The expectation file.
    Expectation,
}

impl fmt::Display for Against {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Against::Run(n) => write!(f, "run {n}"),
            Against::Expectation => f.write_str("expectation"),
        }
    }
}

impl Serialize for Against {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One output that is not the same in run `run` as in `against`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub run: usize,
    pub against: Against,
    pub node: String,
    pub output: String,
    pub index: usize,
    /// The file's name in the run, else in what it is compared with.
    pub filename: String,
    /// SHA-256 in what the run is compared with; `None` when it had no such file.
    pub expected: Option<String>,
    /// SHA-256 in the run; `None` when the run had no such file.
    pub got: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run {}: node {} {}[{}] {}: ",
            self.run, self.node, self.output, self.index, self.filename
        )?;
        match (&self.expected, &self.got) {
            (Some(e), Some(g)) => write!(f, "sha256 {g}, {} has {e}", self.against),
            (Some(e), None) => write!(f, "missing, {} has sha256 {e}", self.against),
            (None, Some(g)) => write!(f, "sha256 {g}, not in {}", self.against),
            (None, None) => Ok(()),
        }
    }
}

/// The differences of run `run`'s files `got` from `expected` (`against`'s files).
pub fn compare(
    run: usize,
    got: &[Output],
    against: Against,
    expected: &[Output],
) -> Vec<Difference> {
    let mut keys: Vec<(&str, &str, usize)> = got.iter().chain(expected).map(Output::key).collect();
    keys.sort();
    keys.dedup();
    let find = |list: &'_ [Output], k| list.iter().find(|o| o.key() == k).cloned();
    let mut out = Vec::new();
    for k in keys {
        let (e, g) = (find(expected, k), find(got, k));
        let (es, gs) = (e.as_ref().map(|o| &o.sha256), g.as_ref().map(|o| &o.sha256));
        if es == gs {
            continue;
        }
        let Some(named) = g.as_ref().or(e.as_ref()) else {
            continue;
        };
        out.push(Difference {
            run,
            against,
            node: named.node.clone(),
            output: named.output.clone(),
            index: named.index,
            filename: named.filename.clone(),
            expected: es.cloned(),
            got: gs.cloned(),
        });
    }
    out
}

/// Every run after the first compared with the first.
pub fn across_runs(runs: &[Vec<Output>]) -> Vec<Difference> {
    let Some((first, rest)) = runs.split_first() else {
        return Vec::new();
    };
    rest.iter()
        .enumerate()
        .flat_map(|(i, r)| compare(i + 2, r, Against::Run(1), first))
        .collect()
}

/// Every run compared with the expectation.
pub fn against_expectation(runs: &[Vec<Output>], expected: &[Output]) -> Vec<Difference> {
    runs.iter()
        .enumerate()
        .flat_map(|(i, r)| compare(i + 1, r, Against::Expectation, expected))
        .collect()
}

/// Hex SHA-256 of the workflow as ComfyUI receives it: compact JSON in the client's key order
/// (ComfyUI embeds it in every PNG, so its order is part of the output's bytes).
pub fn workflow_sha256(workflow: &serde_json::Map<String, serde_json::Value>) -> String {
    let bytes = serde_json::to_vec(workflow).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// An input image of the job, by name and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputImage {
    pub name: String,
    pub sha256: String,
}

/// What a recording was made of: the workflow and its input images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub workflow_sha256: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_images: Vec<InputImage>,
}

/// The version an expectation was recorded on (for the reader; not compared).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comfyui_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comfyui_tree: Option<String>,
}

impl LockInfo {
    pub fn of(lock: &Lockfile) -> LockInfo {
        LockInfo {
            tag: lock.tag.clone(),
            comfyui_commit: lock.comfyui.commit.clone(),
            comfyui_tree: lock.comfyui.tree.map(|t| t.to_string()),
        }
    }
}

/// The outputs recorded for one set of ComfyUI arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    /// The extra arguments ComfyUI ran with, in order (`--cpu`, `--disable-metadata`, …): the
    /// key of the expectation in its file.
    pub comfy_args: Vec<String>,
    pub lock: LockInfo,
    /// How many runs agreed on these outputs when they were recorded.
    pub runs: usize,
    pub outputs: Vec<Output>,
}

/// An expectation file: the outputs of one workflow, per set of ComfyUI arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectFile {
    pub schema: String,
    #[serde(flatten)]
    pub subject: Subject,
    pub expectations: Vec<Expectation>,
}

/// What `record` did to an expectation file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Recorded {
    /// No expectation for these arguments before (or the file was new, or was for another
    /// workflow).
    New,
    /// The same outputs were recorded already.
    Unchanged,
    /// Other outputs were recorded before, and are replaced.
    Changed,
}

impl ExpectFile {
    pub fn new(subject: Subject) -> ExpectFile {
        ExpectFile {
            schema: SCHEMA.into(),
            subject,
            expectations: Vec::new(),
        }
    }

    /// Read and check an expectation file.
    pub fn read(path: &Path) -> Result<ExpectFile> {
        let bytes = std::fs::read(path).ctx("read", path)?;
        let file: ExpectFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_input(path, format!("not a {SCHEMA} expectation file: {e}")))?;
        if file.schema != SCHEMA {
            return Err(Error::bad_input(
                path,
                format!("schema is {:?}, not {SCHEMA:?}", file.schema),
            ));
        }
        for (i, e) in file.expectations.iter().enumerate() {
            let dup = file.expectations[..i]
                .iter()
                .any(|o| o.comfy_args == e.comfy_args);
            if dup {
                return Err(Error::bad_input(
                    path,
                    format!("two expectations for comfy_args {:?}", e.comfy_args),
                ));
            }
        }
        Ok(file)
    }

    /// Write it (a temp file renamed into place), pretty-printed.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::bad_input(path, format!("cannot serialize: {e}")))?;
        bytes.push(b'\n');
        Ok(crate::store::write_file_atomic(path, &bytes, 0o644)?)
    }

    /// The expectation recorded for these ComfyUI arguments.
    pub fn expectation(&self, comfy_args: &[String]) -> Option<&Expectation> {
        self.expectations
            .iter()
            .find(|e| e.comfy_args == comfy_args)
    }

    /// Refuse to compare runs of `subject` with a file recorded for another workflow or other
    /// input images: their outputs would differ for that reason alone.
    pub fn check_subject(&self, path: &Path, subject: &Subject) -> Result<()> {
        if self.subject.workflow_sha256 != subject.workflow_sha256 {
            return Err(Error::bad_input(
                path,
                format!(
                    "recorded for another workflow (sha256 {}; this one is {}); record it again \
                     with --record",
                    self.subject.workflow_sha256, subject.workflow_sha256
                ),
            ));
        }
        if self.subject.input_images != subject.input_images {
            return Err(Error::bad_input(
                path,
                "recorded with other input images; record it again with --record",
            ));
        }
        Ok(())
    }

    /// Put `e` in the file, replacing the expectation for the same arguments. A file for
    /// another subject is started afresh.
    pub fn record(&mut self, subject: &Subject, e: Expectation) -> Recorded {
        if &self.subject != subject {
            *self = ExpectFile::new(subject.clone());
        }
        match self
            .expectations
            .iter_mut()
            .find(|o| o.comfy_args == e.comfy_args)
        {
            Some(old) => {
                let same = old.outputs == e.outputs;
                *old = e;
                if same {
                    Recorded::Unchanged
                } else {
                    Recorded::Changed
                }
            }
            None => {
                self.expectations.push(e);
                Recorded::New
            }
        }
    }
}

/// How the runs are laid out.
#[derive(Clone, Debug)]
pub struct FreshOptions {
    /// How many runs.
    pub runs: usize,
    /// The folder the work folder is made in (default: the system's temp folder).
    pub work: Option<PathBuf>,
    /// Keep each run's folder (and its GC root) instead of removing it.
    pub keep: bool,
    /// How the lock is materialized for each run.
    pub lock: LockOptions,
}

/// One run: its folder and output files.
#[derive(Clone, Debug, Serialize)]
pub struct FreshRun {
    pub run: usize,
    pub dest: PathBuf,
    pub outputs: Vec<Output>,
}

/// Run `job` `opts.runs` times, each time in a fresh materialization of `lock` (a new folder
/// `run-N` in a new work folder). `job` gets the run's number (from 1) and folder and gives
/// back its output files ([`Output::numbered`]). Each folder is removed after its run, with
/// its GC root and whatever the run wrote there, unless `opts.keep`; the first error stops
/// the runs.
pub fn run_fresh<E: From<Error>>(
    store: &Store,
    lock: &Lockfile,
    opts: &FreshOptions,
    mut job: impl FnMut(usize, &Path) -> std::result::Result<Vec<Output>, E>,
) -> std::result::Result<Vec<FreshRun>, E> {
    let parent = opts.work.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).ctx("create", &parent)?;
    let work = tempfile::Builder::new()
        .prefix("comfystore-repro-")
        .tempdir_in(&parent)
        .ctx("create a work folder in", &parent)?;
    let work = WorkDir {
        store,
        dir: Some(work),
        keep: opts.keep,
    };
    let mut runs = Vec::new();
    for run in 1..=opts.runs {
        let dest = work.path().join(format!("run-{run}"));
        materialize_lock(store, lock, &dest, &opts.lock)?;
        let outputs = job(run, &dest);
        work.done_with(&dest);
        runs.push(FreshRun {
            run,
            dest,
            outputs: outputs?,
        });
    }
    Ok(runs)
}

/// The work folder: each run's folder is removed once its run ended (its GC root too), and
/// the folder itself when dropped, unless kept.
struct WorkDir<'a> {
    store: &'a Store,
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl WorkDir<'_> {
    fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Remove what a run's folder holds (unless kept): what materialize placed and its GC
    /// root, then everything the run wrote.
    fn done_with(&self, dest: &Path) {
        if self.keep {
            return;
        }
        let materialized = place::read_marker(self.store, dest).is_ok_and(|m| m.marker.is_some());
        if materialized {
            if let Err(e) = place::remove(self.store, dest, true) {
                tracing::warn!("remove {}: {e}", dest.display());
            }
        }
    }
}

impl Drop for WorkDir<'_> {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        if self.keep {
            let _ = dir.keep();
            return;
        }
        // A run that failed before its folder was removed (materialize stopped half-way).
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            for e in entries.flatten() {
                self.done_with(&e.path());
            }
        }
        if let Err(e) = dir.close() {
            tracing::warn!("remove the work folder: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(node: &str, index: usize, sha: &str) -> Output {
        Output {
            node: node.into(),
            output: "images".into(),
            index,
            filename: format!("ComfyUI_{node}_{index}.png"),
            sha256: sha.into(),
        }
    }

    #[test]
    fn files_are_numbered_within_their_node_and_key() {
        let raw = vec![out("9", 7, "a"), out("12", 7, "b"), out("9", 7, "c")];
        let n = Output::numbered(raw);
        let keys: Vec<_> = n
            .iter()
            .map(|o| (o.node.as_str(), o.index, o.sha256.as_str()))
            .collect();
        assert_eq!(keys, [("12", 0, "b"), ("9", 0, "a"), ("9", 1, "c")]);
    }

    #[test]
    fn differences_name_the_run_the_node_and_the_file() {
        let one = vec![out("9", 0, "a"), out("9", 1, "b")];
        let same = one.clone();
        let other = vec![out("9", 0, "a"), out("9", 1, "x"), out("10", 0, "y")];
        assert_eq!(across_runs(&[one.clone(), same]), vec![]);
        let d = across_runs(&[one.clone(), one.clone(), other]);
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(
            d[0].to_string(),
            "run 3: node 10 images[0] ComfyUI_10_0.png: sha256 y, not in run 1"
        );
        assert_eq!(
            d[1].to_string(),
            "run 3: node 9 images[1] ComfyUI_9_1.png: sha256 x, run 1 has b"
        );
        let d = against_expectation(&[vec![out("9", 0, "a")]], &one);
        assert_eq!(
            d[0].to_string(),
            "run 1: node 9 images[1] ComfyUI_9_1.png: missing, expectation has sha256 b"
        );
        let v = serde_json::to_value(&d[0]).unwrap();
        assert_eq!(v["against"], "expectation");
        assert_eq!(v["got"], serde_json::Value::Null);
    }

    #[test]
    fn recording_keeps_one_expectation_per_argument_list() {
        let subject = Subject {
            workflow_sha256: "w".into(),
            input_images: vec![],
        };
        let e = |args: &[&str], sha: &str| Expectation {
            comfy_args: args.iter().map(|s| s.to_string()).collect(),
            lock: LockInfo::default(),
            runs: 2,
            outputs: vec![out("9", 0, sha)],
        };
        let mut f = ExpectFile::new(subject.clone());
        assert_eq!(f.record(&subject, e(&["--cpu"], "a")), Recorded::New);
        assert_eq!(
            f.record(&subject, e(&["--cpu", "--disable-metadata"], "b")),
            Recorded::New
        );
        assert_eq!(f.record(&subject, e(&["--cpu"], "a")), Recorded::Unchanged);
        assert_eq!(f.record(&subject, e(&["--cpu"], "c")), Recorded::Changed);
        assert_eq!(f.expectations.len(), 2);
        let args = ["--cpu".to_string()];
        assert_eq!(f.expectation(&args).unwrap().outputs[0].sha256, "c");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.expected.json");
        f.write(&path).unwrap();
        let back = ExpectFile::read(&path).unwrap();
        assert_eq!(back, f);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(SCHEMA) && text.contains("\"workflow_sha256\": \"w\""),
            "{text}"
        );

        let other = Subject {
            workflow_sha256: "v".into(),
            input_images: vec![],
        };
        assert!(back.check_subject(&path, &subject).is_ok());
        assert!(back.check_subject(&path, &other).is_err());
        let mut f = back;
        assert_eq!(f.record(&other, e(&["--cpu"], "a")), Recorded::New);
        assert_eq!(f.expectations.len(), 1);
    }

    #[test]
    fn a_file_of_another_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(
            &path,
            r#"{"schema":"comfystore.lock/1","workflow_sha256":"w","expectations":[]}"#,
        )
        .unwrap();
        let e = ExpectFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("schema"), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(ExpectFile::read(&path).is_err());
    }
}
