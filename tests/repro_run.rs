//! `comfystore repro run LOCK WORKFLOW` through the real binary, on versions whose ComfyUI is
//! the fake of tests/fixtures/fake_comfyui (Python standard library only).
//!
//! A version here is a folder holding the fake's `main.py` and a `venv --without-pip`, locked
//! with `comfystore lock` (ComfyUI by its tree, the venv as the environment): `repro run`
//! materializes it afresh for every run, starts the fake there as it starts ComfyUI, runs the
//! job, stops it and removes the folder. `v2` is the same fake with its PNG encoder at zlib
//! level 0 instead of 4: a version whose outputs have other bytes. The fake's `NoiseImage`
//! node writes random pixels: a workflow whose output changes from run to run.
//!
//! Every command runs with HOME in the test's temp dir and no Python, store, ComfyUI or proxy
//! variables from the machine, a port of its own, and `--work` in the temp dir, which must be
//! empty again afterwards (and ComfyUI stopped).

mod common;

use common::net::{free_port, listening};
use common::pyindex::scrubbed_vars;
use common::{code, describe, parse, run_env, s, sha256_hex, stderr, stdout, NETWORK_ENV};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

const FAKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_comfyui/main.py"
);
const MINIMAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/minimal.json");

/// A test's temp dir, store and port.
struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: PathBuf,
    work: PathBuf,
    port: u16,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        Env {
            store: dir.join("store"),
            work: dir.join("work"),
            dir,
            _tmp: tmp,
            port: free_port(),
        }
    }

    /// An Env where versions can be made and run: None (said, or failed under CI) without
    /// python3.
    fn with_python(test: &str) -> Option<Env> {
        let ok = std::process::Command::new("python3")
            .args(["-c", "import venv, zlib"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            common::cannot_run(test, "no python3 (with venv) on PATH");
            return None;
        }
        Some(Env::new())
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `comfystore --store S ARGS` with HOME here and nothing from the machine's Python,
    /// store, ComfyUI, Hugging Face or proxy settings.
    fn cs(&self, args: &[&str]) -> Output {
        let mut remove: Vec<String> = scrubbed_vars();
        remove.extend(NETWORK_ENV.iter().map(|v| v.to_string()));
        remove.extend(
            [
                "COMFY_PORT",
                "COMFY_HOME",
                "COMFY_ORG_API_KEY",
                "HF_HOME",
                "HF_HUB_CACHE",
            ]
            .map(String::from),
        );
        let mut envs: Vec<(&str, Option<&OsStr>)> =
            remove.iter().map(|k| (k.as_str(), None)).collect();
        envs.push(("HOME", Some(self.dir.as_os_str())));
        run_env(&self.store, args, &envs)
    }

    /// A version: `name/main.py` (the fake, with `edit` applied) and `name/venv`, locked as
    /// tag `name`; the lockfile's path.
    fn version(&self, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let comfy = self.p(name);
        common::fake_comfy_folder(&comfy, edit(fs::read_to_string(FAKE).unwrap()).as_bytes());
        let lock = self.p(&format!("{name}.lock.json"));
        let out = self.cs(&["lock", s(&comfy), "--tag", name, "-o", s(&lock)]);
        assert_eq!(code(&out), 0, "lock: {}", describe(&out));
        lock
    }

    /// The fake as it is.
    fn v1(&self) -> PathBuf {
        self.version("v1", |t| t)
    }

    /// The fake writing other PNG bytes (zlib level 0: stored blocks) for the same pixels.
    fn v2(&self) -> PathBuf {
        self.version("v2", |t| {
            let from = "zlib.compress(raw, 4)";
            assert!(t.contains(from), "the fake's PNG encoder changed");
            t.replace(from, "zlib.compress(raw, 0)")
        })
    }

    /// Write a file here; its path.
    fn file(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.p(rel);
        fs::write(&path, text).unwrap();
        path
    }

    /// `comfystore [--json] repro run LOCK WORKFLOW --comfy-port P --work W --comfy-arg=--cpu
    /// EXTRA…`; then ComfyUI must be stopped and the work folder empty.
    fn repro(&self, json: bool, lock: &Path, workflow: &Path, extra: &[&str]) -> Output {
        let port = self.port.to_string();
        let mut args = vec![];
        if json {
            args.push("--json");
        }
        args.extend([
            "repro",
            "run",
            s(lock),
            s(workflow),
            "--comfy-port",
            &port,
            "--work",
            s(&self.work),
            "--comfy-arg=--cpu",
            "--ready-timeout",
            "30s",
            "--job-timeout",
            "40s",
        ]);
        args.extend_from_slice(extra);
        let out = self.cs(&args);
        assert!(
            !listening(self.port),
            "ComfyUI still listens on {} after repro run\n{}",
            self.port,
            describe(&out)
        );
        let left: Vec<_> = fs::read_dir(&self.work)
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "work folder keeps {left:?}\n{}",
            describe(&out)
        );
        let roots = self.store.join("roots/materialized");
        let kept: Vec<_> = fs::read_dir(&roots)
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(kept.is_empty(), "GC roots left: {kept:?}");
        out
    }

    /// `repro run` in JSON that must exit `want`: its report.
    fn report(&self, want: i32, lock: &Path, workflow: &Path, extra: &[&str]) -> Value {
        let out = self.repro(true, lock, workflow, extra);
        assert_eq!(code(&out), want, "{}", describe(&out));
        parse(&out)
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The expectation of `file` for `args`.
fn expectation<'a>(file: &'a Value, args: &[&str]) -> &'a Value {
    file["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["comfy_args"] == json!(args))
        .unwrap_or_else(|| panic!("no expectation for {args:?} in {file:#}"))
}

#[test]
fn repro_run_records_when_runs_agree_and_matches_the_recording() {
    let Some(e) = Env::with_python("repro_run_records_when_runs_agree_and_matches_the_recording")
    else {
        return;
    };
    let v1 = e.v1();
    let wf = Path::new(MINIMAL);
    let expected = e.p("minimal.expected.json");

    // Three fresh runs agree; nothing to compare with yet.
    let r = e.report(0, &v1, wf, &["--runs", "3"]);
    assert_eq!(r["equal"], true, "{r:#}");
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{r:#}");
    let dests: Vec<&str> = runs.iter().map(|r| r["dest"].as_str().unwrap()).collect();
    assert!(dests[0] != dests[1] && dests[1] != dests[2], "{dests:?}");
    let first = &runs[0]["outputs"];
    assert_eq!(first.as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(
        (&first[0]["node"], &first[0]["output"], &first[0]["index"]),
        (&json!("3"), &json!("images"), &json!(0))
    );
    // Fresh folders: ComfyUI's counter starts again every run.
    assert_eq!(first[0]["filename"], "minimal_00001_.png");
    for run in runs {
        assert_eq!(&run["outputs"], first, "{r:#}");
    }
    // The output is in the store, and is the file the hash names.
    let sha = first[0]["sha256"].as_str().unwrap().to_string();
    let cat = e.cs(&["cat", &format!("sha256:{sha}")]);
    assert_eq!(code(&cat), 0, "{}", describe(&cat));
    assert!(cat.stdout.starts_with(b"\x89PNG"), "not a PNG");
    assert_eq!(sha256_hex(&cat.stdout), sha);

    // Recorded, with ComfyUI's metadata on and then off: one expectation each.
    let rec = e.report(0, &v1, wf, &["--expect", s(&expected), "--record"]);
    assert_eq!(rec["expect"]["recorded"], "new", "{rec:#}");
    let no_meta = ["--comfy-arg=--disable-metadata"];
    let rec = e.report(
        0,
        &v1,
        wf,
        &[no_meta[0], "--expect", s(&expected), "--record"],
    );
    assert_eq!(rec["expect"]["recorded"], "new", "{rec:#}");
    let file = read_json(&expected);
    assert_eq!(file["schema"], "comfystore.repro-expect/1", "{file:#}");
    let workflow: Value = serde_json::from_slice(&fs::read(wf).unwrap()).unwrap();
    assert_eq!(
        file["workflow_sha256"],
        sha256_hex(&serde_json::to_vec(&workflow).unwrap()),
        "the workflow's hash is of its compact JSON in its own key order"
    );
    let with_meta = expectation(&file, &["--cpu"]);
    let without = expectation(&file, &["--cpu", "--disable-metadata"]);
    assert_eq!(with_meta["lock"]["tag"], "v1", "{file:#}");
    assert_eq!(with_meta["runs"], 2, "{file:#}");
    assert_eq!(with_meta["outputs"][0]["sha256"], sha.as_str(), "{file:#}");
    assert_ne!(
        without["outputs"][0]["sha256"], with_meta["outputs"][0]["sha256"],
        "--disable-metadata did not reach ComfyUI"
    );

    // Each run matches the recording for its own arguments; recording again changes nothing.
    let bytes = fs::read(&expected).unwrap();
    let r = e.report(0, &v1, wf, &["--expect", s(&expected), "--runs", "1"]);
    assert_eq!((&r["equal"], &r["differences"]), (&json!(true), &json!([])));
    let out = e.repro(false, &v1, wf, &[no_meta[0], "--expect", s(&expected)]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "", "no difference to print");
    let rec = e.report(0, &v1, wf, &["--expect", s(&expected), "--record"]);
    assert_eq!(rec["expect"]["recorded"], "unchanged", "{rec:#}");
    assert_eq!(fs::read(&expected).unwrap(), bytes);

    // The same workflow given as a worker-comfyui job is the same subject.
    let job = e.file(
        "job.json",
        &serde_json::to_string(&json!({ "input": { "workflow": workflow } })).unwrap(),
    );
    e.report(0, &v1, &job, &["--expect", s(&expected), "--runs", "1"]);
}

#[test]
fn repro_run_catches_a_workflow_whose_output_changes() {
    let Some(e) = Env::with_python("repro_run_catches_a_workflow_whose_output_changes") else {
        return;
    };
    let v1 = e.v1();
    let noise = e.file(
        "noise.json",
        r#"{"input": {"workflow": {
            "1": {"class_type": "NoiseImage", "inputs": {"width": 8, "height": 8}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "noise"}}
        }}}"#,
    );
    let r = e.report(1, &v1, &noise, &["--runs", "3"]);
    assert_eq!(r["equal"], false, "{r:#}");
    let d = r["differences"].as_array().unwrap();
    assert_eq!(d.len(), 2, "runs 2 and 3 each differ from run 1: {r:#}");
    for (i, diff) in d.iter().enumerate() {
        assert_eq!(diff["run"], i + 2, "{diff:#}");
        assert_eq!(diff["against"], "run 1", "{diff:#}");
        assert_eq!(
            (&diff["node"], &diff["filename"]),
            (&json!("9"), &json!("noise_00001_.png"))
        );
        assert_eq!(diff["expected"], r["runs"][0]["outputs"][0]["sha256"]);
        assert_eq!(diff["got"], r["runs"][i + 1]["outputs"][0]["sha256"]);
        assert_ne!(diff["expected"], diff["got"]);
    }

    // The text names the run, the node and the file, one line each.
    let out = e.repro(false, &v1, &noise, &[]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("run 2: node 9 images[0] noise_00001_.png: sha256 "),
        "{text}"
    );
    assert!(text.contains(", run 1 has "), "{text}");

    // Runs that disagree are not recorded.
    let expected = e.p("noise.expected.json");
    let r = e.report(1, &v1, &noise, &["--expect", s(&expected), "--record"]);
    assert_eq!(r["expect"]["recorded"], Value::Null, "{r:#}");
    assert!(!expected.exists(), "recorded runs that disagree");
}

#[test]
fn repro_run_names_an_output_that_differs_from_the_expectation() {
    let Some(e) = Env::with_python("repro_run_names_an_output_that_differs_from_the_expectation")
    else {
        return;
    };
    let (v1, v2) = (e.v1(), e.v2());
    let wf = Path::new(MINIMAL);
    let expected = e.p("minimal.expected.json");
    e.report(0, &v1, wf, &["--expect", s(&expected), "--record"]);
    let want = expectation(&read_json(&expected), &["--cpu"])["outputs"][0]["sha256"].clone();

    // v2 agrees with itself, not with what v1 recorded.
    let r = e.report(1, &v2, wf, &["--expect", s(&expected)]);
    let d = r["differences"].as_array().unwrap();
    assert_eq!(d.len(), 2, "each run differs from the expectation: {r:#}");
    for (i, diff) in d.iter().enumerate() {
        assert_eq!(diff["run"], i + 1, "{diff:#}");
        assert_eq!(diff["against"], "expectation", "{diff:#}");
        assert_eq!(
            (&diff["node"], &diff["output"], &diff["filename"]),
            (&json!("3"), &json!("images"), &json!("minimal_00001_.png"))
        );
        assert_eq!(diff["expected"], want, "{diff:#}");
        assert_eq!(diff["got"], r["runs"][i]["outputs"][0]["sha256"]);
        assert_ne!(diff["got"], want, "{diff:#}");
    }
    let out = e.repro(false, &v2, wf, &["--expect", s(&expected), "--runs", "1"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let line = format!(
        "run 1: node 3 images[0] minimal_00001_.png: sha256 {}, expectation has {}\n",
        d[0]["got"].as_str().unwrap(),
        want.as_str().unwrap()
    );
    assert_eq!(stdout(&out), line);
    // Recording v2 replaces the expectation for these arguments, and says so.
    let rec = e.report(0, &v2, wf, &["--expect", s(&expected), "--record"]);
    assert_eq!(rec["expect"]["recorded"], "changed", "{rec:#}");
    let file = read_json(&expected);
    assert_eq!(file["expectations"].as_array().unwrap().len(), 1);
    assert_eq!(expectation(&file, &["--cpu"])["lock"]["tag"], "v2");
}

#[test]
fn repro_run_exits_2_when_comfyui_fails_the_job() {
    let Some(e) = Env::with_python("repro_run_exits_2_when_comfyui_fails_the_job") else {
        return;
    };
    let v1 = e.v1();
    let fail = e.file(
        "fail.json",
        r#"{"1": {"class_type": "FailNode", "inputs": {"message": "broken on purpose"}}}"#,
    );
    let out = e.repro(true, &v1, &fail, &[]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    let err = parse(&out)["error"].as_str().unwrap().to_string();
    assert!(
        err.starts_with("run 1: ") && err.contains("broken on purpose"),
        "{err}"
    );
}

#[test]
fn repro_run_exits_2_naming_a_bad_workflow_or_expectation_file() {
    // Everything here is refused before a version is materialized: no Python needed.
    let e = Env::new();
    let lock = e.file(
        "min.lock.json",
        &format!(
            r#"{{"schema":"comfystore.lock/1","tag":"x","comfyui":{{"repo":"https://x/c","commit":"{}"}}}}"#,
            "a".repeat(40)
        ),
    );
    let good = Path::new(MINIMAL);
    let cases = [
        (e.file("not-json.json", "{\"1\": "), "not a JSON workflow"),
        (
            e.file("no-class.json", r#"{"1": {"inputs": {}}}"#),
            "has no class_type",
        ),
        (e.file("empty.json", "{}"), "it has no nodes"),
        (e.file("list.json", "[1, 2]"), "not an object"),
        (e.p("missing.json"), "missing.json"),
    ];
    for (wf, why) in &cases {
        let out = e.cs(&["--json", "repro", "run", s(&lock), s(wf)]);
        assert_eq!(code(&out), 2, "{}: {}", wf.display(), describe(&out));
        let err = parse(&out)["error"].as_str().unwrap().to_string();
        assert!(
            err.contains(s(wf)) || err.contains(why),
            "{err} names neither {} nor {why:?}",
            wf.display()
        );
        assert!(err.contains(why), "{err} does not say {why:?}");
        let text = e.cs(&["repro", "run", s(&lock), s(wf)]);
        assert_eq!(code(&text), 2, "{}", describe(&text));
        assert!(
            stderr(&text).contains(wf.file_name().unwrap().to_str().unwrap()),
            "{}",
            describe(&text)
        );
    }

    // An expectation file that is missing, not one, for another workflow, or without these
    // arguments; and --record refuses to overwrite a file that is not an expectation file.
    let expect = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "--json",
            "repro",
            "run",
            s(&lock),
            s(good),
            "--expect",
            s(file),
        ];
        args.extend_from_slice(extra);
        let out = e.cs(&args);
        assert_eq!(code(&out), 2, "{}", describe(&out));
        parse(&out)["error"].as_str().unwrap().to_string()
    };
    let err = expect(&e.p("none.expected.json"), &[]);
    assert!(err.contains("none.expected.json"), "{err}");
    let other = e.file(
        "other.expected.json",
        r#"{"schema": "comfystore.repro-expect/1", "workflow_sha256": "00",
            "expectations": [{"comfy_args": [], "lock": {"tag": "x"}, "runs": 1, "outputs": []}]}"#,
    );
    let err = expect(&other, &[]);
    assert!(
        err.contains("other.expected.json") && err.contains("another workflow"),
        "{err}"
    );
    let workflow: Value = serde_json::from_slice(&fs::read(good).unwrap()).unwrap();
    let sha = sha256_hex(&serde_json::to_vec(&workflow).unwrap());
    let same = e.file(
        "same.expected.json",
        &format!(
            r#"{{"schema": "comfystore.repro-expect/1", "workflow_sha256": "{sha}",
                "expectations": [{{"comfy_args": ["--cpu"], "lock": {{"tag": "x"}}, "runs": 1, "outputs": []}}]}}"#
        ),
    );
    let err = expect(&same, &["--comfy-arg=--disable-metadata"]);
    assert!(
        err.contains("same.expected.json") && err.contains("no expectation for"),
        "{err}"
    );
    let before = fs::read(&lock).unwrap();
    let err = expect(&lock, &["--record"]);
    assert!(err.contains("min.lock.json"), "{err}");
    assert_eq!(
        fs::read(&lock).unwrap(),
        before,
        "--record overwrote a lockfile"
    );

    // --record needs a file to write.
    let out = e.cs(&["repro", "run", s(&lock), s(good), "--record"]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
}
