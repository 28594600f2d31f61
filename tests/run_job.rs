//! `comfystore run-job` through the real binary, against a fake ComfyUI
//! (tests/fixtures/fake_comfyui/main.py, Python standard library only) that answers with the
//! shapes recorded from a real ComfyUI 0.3.26 (tests/fixtures/comfyui/).
//!
//! Each test gets its own temp dir: `dest/` holds a copy of the fake `main.py` and a
//! `venv --without-pip` (so run-job finds `dest/venv/bin/python` as for a materialized
//! version), `store/` the store, and a free port on 127.0.0.1. run-job starts the fake exactly
//! as it starts ComfyUI (`python main.py --listen 127.0.0.1 --port P --disable-auto-launch
//! --cpu`, cwd = dest), runs one job and stops it; every test checks that it was stopped.
//!
//! `harness_*` checks the fake alone against the recorded answers, so the other tests can
//! trust it.

mod common;

use base64::Engine;
use common::comfy::pseudo_random;
use common::gcs;
use common::net::{self, free_port, listening};
use common::pyindex::{python3, python_cmd, scrubbed_vars};
use common::{code, describe, parse, run, run_env, s, sha256_hex, NETWORK_ENV};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_comfyui/main.py"
);
const RECORDED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/comfyui");

fn minimal_workflow() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/minimal.json");
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn recorded(name: &str) -> Value {
    let path = Path::new(RECORDED).join(name);
    serde_json::from_slice(&fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One test's temp dir, version folder, store and port.
struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    dest: PathBuf,
    store: PathBuf,
    port: u16,
    jobs: std::cell::Cell<u32>,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let dest = dir.join("dest");
        common::fake_comfy_folder(&dest, &fs::read(FAKE).unwrap());
        Env {
            _tmp: tmp,
            store: dir.join("store"),
            dest,
            dir,
            port: free_port(),
            jobs: std::cell::Cell::new(0),
        }
    }

    /// Write a job file (JSON, or raw text) and return its path.
    fn job_file(&self, job: &Value) -> PathBuf {
        self.job_text(&serde_json::to_string(job).unwrap())
    }

    fn job_text(&self, text: &str) -> PathBuf {
        let n = self.jobs.get() + 1;
        self.jobs.set(n);
        let path = self.dir.join(format!("jobs/job-{n}.json"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    /// `comfystore --store S --json run-job JOB --dest DEST --comfy-port P --comfy-arg=--cpu
    /// [extra]`, with no Python, store, ComfyUI or proxy variables from the machine; then
    /// checks that ComfyUI was stopped.
    fn run_job(&self, job: &Path, extra: &[&str]) -> Output {
        self.run_job_env(job, extra, &[])
    }

    /// [`Env::run_job`] with variables `set` in comfystore's environment.
    fn run_job_env(&self, job: &Path, extra: &[&str], set: &[(&str, &str)]) -> Output {
        let port = self.port.to_string();
        let mut args = vec![
            "--json",
            "run-job",
            s(job),
            "--dest",
            s(&self.dest),
            "--comfy-port",
            &port,
            "--comfy-arg=--cpu",
            "--ready-timeout",
            "30s",
            "--job-timeout",
            "40s",
        ];
        args.extend_from_slice(extra);
        let mut remove: Vec<String> = scrubbed_vars();
        remove.extend(NETWORK_ENV.iter().map(|v| v.to_string()));
        remove.extend(["COMFY_PORT", "COMFY_HOME", "COMFY_ORG_API_KEY"].map(String::from));
        // Output settings of the machine never reach a test (the GCS tests set their own).
        remove.extend(
            common::gcs::GCS_ENV
                .iter()
                .chain(&["RUST_LOG"])
                .map(|v| v.to_string()),
        );
        let mut envs: Vec<(&str, Option<&OsStr>)> =
            remove.iter().map(|k| (k.as_str(), None)).collect();
        envs.extend(set.iter().map(|(k, v)| (*k, Some(OsStr::new(*v)))));
        let out = run_env(&self.store, &args, &envs);
        assert!(
            !listening(self.port),
            "ComfyUI still listens on {} after run-job\n{}",
            self.port,
            describe(&out)
        );
        out
    }

    /// A job that must succeed: its `output`.
    fn ok(&self, job: &Value, extra: &[&str]) -> Value {
        let out = self.run_job(&self.job_file(job), extra);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        parse(&out)
    }

    /// A job that must fail with exit 1: its `{error, details}`.
    fn fails(&self, job: &Value, extra: &[&str]) -> Value {
        self.fails_file(&self.job_file(job), extra)
    }

    fn fails_file(&self, file: &Path, extra: &[&str]) -> Value {
        let out = self.run_job(file, extra);
        assert_eq!(code(&out), 1, "{}", describe(&out));
        let v = parse(&out);
        assert!(v["error"].is_string(), "no error: {v:#}");
        assert!(v["details"].is_array(), "no details: {v:#}");
        v
    }

    /// Entries directly under `dest/<sub>` (none when it does not exist).
    fn entries(&self, sub: &str) -> Vec<String> {
        match fs::read_dir(self.dest.join(sub)) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// No job folder (or file) left in ComfyUI's input, output and temp folders.
    fn assert_nothing_left(&self) {
        for sub in ["input", "output", "temp"] {
            let left = self.entries(sub);
            assert!(left.is_empty(), "dest/{sub} keeps {left:?}");
        }
    }
}

/// `error` and `details` as one text.
fn error_text(v: &Value) -> String {
    let mut t = v["error"].as_str().unwrap_or("").to_string();
    for d in v["details"].as_array().into_iter().flatten() {
        t.push('\n');
        t.push_str(d.as_str().unwrap_or(""));
    }
    t
}

/// The only output file of a job, checked: base64 data whose sha256 is `sha256`.
/// Every output file of an answer: `images` (always there), then `videos`, `audio`, `files`.
fn all_files(output: &Value) -> Vec<Value> {
    let images = output["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images list: {output:#}"));
    let mut all = images.clone();
    for k in ["videos", "audio", "files"] {
        if let Some(v) = output.get(k) {
            all.extend(
                v.as_array()
                    .unwrap_or_else(|| panic!("{k}: {output:#}"))
                    .clone(),
            );
        }
    }
    all
}

fn one_file(output: &Value) -> (Value, Vec<u8>) {
    let all = all_files(output);
    assert_eq!(all.len(), 1, "{output:#}");
    let f = all[0].clone();
    assert_eq!(f["type"], "base64", "{f:#}");
    let data = base64::engine::general_purpose::STANDARD
        .decode(f["data"].as_str().unwrap())
        .expect("data is base64");
    assert_eq!(f["sha256"], sha256_hex(&data), "sha256 is not of the data");
    (f, data)
}

// ---------------------------------------------------------------------------------------------
// A small PNG encoder (stored deflate blocks), for input images with every byte value.

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_rgb(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    for row in rgb.chunks(width as usize * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push((i + 1 == blocks.len()) as u8);
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", b"");
    png
}

/// (width, height) from a PNG's IHDR; panics when it is not a PNG.
fn png_size(data: &[u8]) -> (u32, u32) {
    assert!(
        data.starts_with(b"\x89PNG\r\n\x1a\n") && &data[12..16] == b"IHDR",
        "not a PNG: {:?}",
        &data[..data.len().min(16)]
    );
    let w = u32::from_be_bytes(data[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(data[20..24].try_into().unwrap());
    (w, h)
}

fn data_uri(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

// ---------------------------------------------------------------------------------------------
// The fake alone.

/// The fake started by hand (for the harness test), killed on drop.
struct Fake {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Fake {
    fn start(dir: &Path) -> Fake {
        fs::create_dir_all(dir).unwrap();
        fs::copy(FAKE, dir.join("main.py")).unwrap();
        let port = free_port();
        let child = python_cmd(python3())
            .arg("main.py")
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(["--disable-auto-launch", "--cpu", "--some-unknown-flag"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut fake = Fake {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = fake.child.try_wait() {
                panic!("the fake ComfyUI exited: {st}");
            }
            if listening(port) && fake.get("/").0 == 200 {
                return fake;
            }
            assert!(Instant::now() < deadline, "the fake ComfyUI did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One HTTP/1.1 request (Connection: close): (status, body).
    fn request(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, Vec<u8>) {
        net::request(self.port, method, path, ctype, body)
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.request("GET", path, "text/plain", b"")
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (st, b) = self.request(
            "POST",
            path,
            "application/json",
            &serde_json::to_vec(body).unwrap(),
        );
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    fn upload(&self, name: &str, subfolder: &str, data: &[u8]) -> (u16, Vec<u8>) {
        let b = "----fakeboundary7MA4YWxkTrZu0gW";
        let mut body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(data);
        for (k, v) in [
            ("overwrite", "true"),
            ("type", "input"),
            ("subfolder", subfolder),
        ] {
            body.extend_from_slice(
                format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        self.request(
            "POST",
            "/upload/image",
            &format!("multipart/form-data; boundary={b}"),
            &body,
        )
    }

    /// Submit and wait for the history entry.
    fn run(&self, graph: &Value) -> (String, Value) {
        let (st, v) = self.post("/prompt", &json!({"prompt": graph, "client_id": "harness"}));
        assert_eq!(st, 200, "{v:#}");
        let id = v["prompt_id"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = self.get(&format!("/history/{id}"));
            let h: Value = serde_json::from_slice(&body).unwrap();
            if let Some(e) = h.get(&id) {
                return (id, e.clone());
            }
            assert!(h == json!({}), "history of an unfinished prompt: {h:#}");
            assert!(Instant::now() < deadline, "prompt {id} did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn files(&self, sub: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walkdir::WalkDir::new(self.dir.join(sub))
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().to_path_buf())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn message_kinds(entry: &Value) -> Vec<String> {
    entry["status"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[0].as_str().unwrap().to_string())
        .collect()
}

/// The first (only) entry of a recorded `/history/{id}` answer.
fn recorded_entry(name: &str) -> Value {
    recorded(name)
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone()
}

#[test]
fn harness_fake_comfyui_answers_like_the_recorded_one() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Fake::start(&tmp.path().join("comfy"));

    // POST /prompt refusals, as recorded.
    let (st, v) = fake.post("/prompt", &json!({"client_id": "x"}));
    let want = recorded("post_prompt_no_prompt.json");
    assert_eq!((st, &v), (400, &want["body"]));
    let (st, v) = fake.post(
        "/prompt",
        &json!({"prompt": {"7": {"class_type": "NoSuchNode", "inputs": {}}}}),
    );
    assert_eq!(
        (st, &v),
        (400, &recorded("post_prompt_missing_node.json")["body"])
    );
    let (st, v) = fake.post(
        "/prompt",
        &json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}}),
    );
    assert_eq!(
        (st, &v),
        (400, &recorded("post_prompt_no_outputs.json")["body"])
    );
    let bad = json!({
        "5": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    });
    let (st, v) = fake.post("/prompt", &json!({ "prompt": bad }));
    let want = &recorded("post_prompt_bad_values.json")["body"];
    assert_eq!(st, 400, "{v:#}");
    assert_eq!(v["error"], want["error"]);
    assert_eq!(
        keys(&v["node_errors"]["5"]),
        keys(&want["node_errors"]["5"])
    );
    assert_eq!(
        v["node_errors"]["5"]["errors"][0],
        want["node_errors"]["5"]["errors"][0]
    );
    assert_eq!(v["node_errors"]["5"]["dependent_outputs"], json!(["6"]));

    // A success: the recorded entry's shape, files under the prefix's folder, counters.
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 3368601}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "probe/test", "images": ["2", 0]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    });
    let (id, e) = fake.run(&graph);
    let want = recorded_entry("history_success.json");
    assert_eq!(keys(&e), keys(&want));
    assert_eq!(keys(&e["status"]), keys(&want["status"]));
    assert_eq!(message_kinds(&e), message_kinds(&want));
    assert_eq!(e["status"]["status_str"], "success");
    assert_eq!(e["prompt"][1], id.as_str());
    assert_eq!(e["prompt"][2], graph);
    assert_eq!(e["prompt"][3], json!({"client_id": "harness"}));
    assert_eq!(e["outputs"]["4"], want["outputs"]["4"], "SaveImage's files");
    assert_eq!(e["outputs"]["6"]["images"][0]["type"], "temp");
    let saved = fake.files("output");
    assert_eq!(saved.len(), 2, "{saved:?}");
    let (st, png) = fake.get("/view?filename=test_00001_.png&subfolder=probe&type=output");
    assert_eq!(st, 200);
    assert_eq!(png_size(&png), (64, 48));
    assert_eq!(png, fs::read(&saved[0]).unwrap());

    // The identical prompt again: fully cached, no new file, the old names.
    let (_, again) = fake.run(&graph);
    let cached = &again["status"]["messages"][1];
    assert_eq!(cached[0], "execution_cached");
    assert_eq!(cached[1]["nodes"], json!(["1", "2", "4", "6"]));
    assert_eq!(again["outputs"], e["outputs"]);
    assert_eq!(fake.files("output"), saved, "a cached prompt wrote files");
    // A changed graph runs again, and the counter goes on from the files there.
    let mut other = graph.clone();
    other["4"]["inputs"]["filename_prefix"] = json!("probe/test");
    other["1"]["inputs"]["color"] = json!(0);
    let (_, third) = fake.run(&other);
    assert_eq!(
        third["outputs"]["4"]["images"][0]["filename"],
        "test_00003_.png"
    );

    // An execution error, as recorded.
    let fail = json!({"1": {"class_type": "FailNode", "inputs": {"message": "boom"}}});
    let (_, e) = fake.run(&fail);
    let want = recorded_entry("history_exec_error.json");
    assert_eq!(keys(&e), keys(&want));
    assert_eq!(message_kinds(&e), message_kinds(&want));
    assert_eq!(e["status"]["status_str"], "error");
    assert_eq!(e["status"]["completed"], false);
    let err = &e["status"]["messages"][2][1];
    let want_err = &want["status"]["messages"][2][1];
    assert_eq!(keys(err), keys(want_err));
    assert_eq!(err["node_type"], "FailNode");
    assert_eq!(err["exception_message"], "boom");

    // Unknown and deleted history, /view and /upload/image refusals.
    let (st, body) = fake.get("/history/no-such-id");
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        recorded("history_unknown.json")
    );
    assert_eq!(fake.post("/history", &json!({"delete": [id]})).0, 200);
    assert_eq!(fake.get(&format!("/history/{id}")).1, b"{}");
    assert_eq!(fake.get("/view?filename=missing.png&type=output").0, 404);
    assert_eq!(fake.get("/view?filename=../main.py&type=output").0, 400);
    assert_eq!(
        fake.get("/view?filename=main.py&subfolder=..&type=output")
            .0,
        400
    );
    let bytes = png_rgb(8, 8, &pseudo_random(3, 8 * 8 * 3));
    let (st, body) = fake.upload("in.png", "job1", &bytes);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"name": "in.png", "subfolder": "job1", "type": "input"})
    );
    assert_eq!(fs::read(fake.dir.join("input/job1/in.png")).unwrap(), bytes);
    assert_eq!(fake.upload("x.png", "../escape", &bytes).0, 400);
    assert_eq!(fake.upload("../x.png", "", &bytes).0, 400);
    assert!(!tmp.path().join("escape").exists() && !tmp.path().join("x.png").exists());
    assert_eq!(fake.post("/interrupt", &json!({})).0, 200);
}

// ---------------------------------------------------------------------------------------------
// run-job.

#[test]
fn minimal_workflow_returns_a_png_that_is_also_stored() {
    let env = Env::new();
    let out = env.ok(&json!({"input": {"workflow": minimal_workflow()}}), &[]);
    let (f, png) = one_file(&out);
    assert_eq!(f["output"], "images");
    assert_eq!(f["node"], "3");
    let name = f["filename"].as_str().unwrap();
    assert!(
        name.starts_with("minimal_") && name.ends_with("_.png"),
        "{name}"
    );
    assert_eq!(png_size(&png), (64, 64));
    assert!(out.get("errors").is_none(), "{out:#}");
    // The same bytes from the store, by sha256.
    let hex = f["sha256"].as_str().unwrap();
    let cat = run(&env.store, &["cat", &format!("sha256:{hex}")]);
    assert_eq!(code(&cat), 0, "{}", describe(&cat));
    assert!(
        cat.stdout == png,
        "the stored object differs from the output"
    );
    env.assert_nothing_left();
}

#[test]
fn input_image_is_uploaded_and_returned_unchanged() {
    let env = Env::new();
    // Random pixels, stored uncompressed: every byte value, CR and LF included.
    let input = png_rgb(32, 32, &pseudo_random(11, 32 * 32 * 3));
    let job = json!({"input": {
        "workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "roundtrip", "images": ["1", 0]}},
        },
        "images": [{"name": "in.png", "image": data_uri(&input)}],
    }});
    let out = env.ok(&job, &[]);
    let (f, data) = one_file(&out);
    assert_eq!(f["sha256"], sha256_hex(&input));
    assert!(data == input, "the image came back changed");
    assert_eq!(f["node"], "2");
    env.assert_nothing_left();
}

#[test]
fn input_and_workflow_given_as_json_strings() {
    let env = Env::new();
    let wf = minimal_workflow();
    // The whole input as a string.
    let whole = serde_json::to_string(&json!({ "workflow": wf })).unwrap();
    let a = env.ok(&json!({ "input": whole }), &[]);
    // The workflow alone as a string.
    let b = env.ok(
        &json!({"input": {"workflow": serde_json::to_string(&wf).unwrap()}}),
        &[],
    );
    // The file holding the input alone (no "input" key).
    let c = env.ok(&json!({ "workflow": wf }), &[]);
    let (fa, _) = one_file(&a);
    let (fb, _) = one_file(&b);
    let (fc, _) = one_file(&c);
    assert_eq!(fa["filename"], fb["filename"]);
    assert_eq!(fa["filename"], fc["filename"]);
    env.assert_nothing_left();
}

/// A ComfyUI that stays up between jobs answers an identical prompt from its cache, naming the
/// files of the earlier job: the worker must have kept them until this job is answered.
#[test]
fn identical_job_twice_returns_images_both_times() {
    // ComfyUI's cache lives as long as its process: two jobs on one `serve --api` worker. The
    // second, identical prompt is answered from the cache with the first job's file name,
    // so that file must still be there.
    let env = Env::new();
    let (mut child, api) = serve_api(&env, &["--comfy-arg=--disable-metadata"]);
    let job = json!({"input": {"workflow": minimal_workflow()}});
    let first = http_post(api, "/runsync", &job);
    let second = http_post(api, "/runsync", &job);
    assert_eq!(first["status"], "COMPLETED", "{first:#}");
    assert_eq!(second["status"], "COMPLETED", "{second:#}");
    let (f1, d1) = one_file(&first["output"]);
    let (f2, d2) = one_file(&second["output"]);
    assert_eq!(
        f1["filename"], f2["filename"],
        "the second job was not answered from ComfyUI's cache: the test proves nothing"
    );
    assert!(d1 == d2);
    // SIGTERM: the worker stops ComfyUI and deletes what the last job left.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve --api after SIGTERM: {status}");
    assert!(
        !listening(env.port),
        "ComfyUI still listens after serve stopped"
    );
    env.assert_nothing_left();
}

/// `comfystore serve --api` on a free port, for `env`'s DEST, once it listens.
fn serve_api(env: &Env, extra: &[&str]) -> (Child, u16) {
    let api = free_port();
    let mut remove: Vec<String> = scrubbed_vars();
    remove.extend(NETWORK_ENV.iter().map(|v| v.to_string()));
    remove.extend(
        common::gcs::GCS_ENV
            .iter()
            .chain(&["RUST_LOG"])
            .map(|v| v.to_string()),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfystore"));
    cmd.args(["--store", s(&env.store), "serve", "--api"])
        .arg(format!("127.0.0.1:{api}"))
        .args([
            "--dest",
            s(&env.dest),
            "--comfy-port",
            &env.port.to_string(),
        ])
        .args(["--comfy-arg=--cpu", "--ready-timeout", "30s"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for k in &remove {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !listening(api) {
        assert!(
            std::time::Instant::now() < deadline,
            "serve --api never listened"
        );
        assert!(child.try_wait().unwrap().is_none(), "serve --api exited");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (child, api)
}

/// A ComfyUI that lives but stops answering is hung: the job fails saying so, ComfyUI is
/// replaced, and the next job on the same worker succeeds.
#[test]
fn a_hung_comfyui_fails_the_job_and_is_replaced() {
    let env = Env::new();
    let (mut child, api) = serve_api(&env, &["--hang-timeout", "2s"]);
    let started = std::time::Instant::now();
    let hung = http_post(
        api,
        "/runsync",
        &json!({"input": {"workflow": {"1": {"class_type": "HangNode", "inputs": {}}}}}),
    );
    assert_eq!(hung["status"], "FAILED", "{hung:#}");
    assert!(
        hung["error"]
            .as_str()
            .unwrap_or("")
            .contains("stopped answering"),
        "{hung:#}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "the hang was noticed only after {:?}",
        started.elapsed()
    );
    let next = http_post(
        api,
        "/runsync",
        &json!({"input": {"workflow": minimal_workflow()}}),
    );
    assert_eq!(next["status"], "COMPLETED", "{next:#}");
    one_file(&next["output"]);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        !listening(env.port),
        "ComfyUI still listens after serve stopped"
    );
}

/// ComfyUI drops the job's websocket right after the job starts: the answer still comes,
/// from the history.
#[test]
fn a_dropped_websocket_does_not_lose_the_job() {
    let env = Env::new();
    let job = json!({"input": {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SlowNode", "inputs": {"image": ["1", 0], "seconds": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "dropped", "images": ["2", 0]}},
    }}});
    let out = env.ok(&job, &["--comfy-arg=--fake-drop-ws"]);
    one_file(&out);
    env.assert_nothing_left();
}

/// The local API answers every kind of job like `run-job` does, and one bad job never stops
/// the worker: /runsync for success and failures, /run then /status, /health counts.
#[test]
fn local_api_answers_good_and_bad_jobs_and_goes_on() {
    let env = Env::new();
    let (mut child, api) = serve_api(&env, &["--max-input-mb", "1"]);
    let ok = json!({"input": {"workflow": minimal_workflow()}});
    let r = http_post(api, "/runsync", &ok);
    assert_eq!(r["status"], "COMPLETED", "{r:#}");
    one_file(&r["output"]);
    let bad = |input: Value, needle: &str| {
        let r = http_post(api, "/runsync", &json!({ "input": input }));
        assert_eq!(r["status"], "FAILED", "{r:#}");
        let text = format!("{} {}", r["error"], r["output"]);
        assert!(text.contains(needle), "{needle:?} not in {r:#}");
    };
    bad(
        json!({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}),
        "NoSuchNode",
    );
    bad(json!({"images": []}), "Missing 'workflow' parameter");
    bad(
        json!({"workflow": minimal_workflow(), "images": [{"name": "../x.png", "image": "aGk="}]}),
        "../x.png",
    );
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1_500_000]);
    bad(
        json!({"workflow": minimal_workflow(), "images": [{"name": "big.png", "image": big}]}),
        "over the limit",
    );
    bad(
        json!({"workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "FailNode", "inputs": {"image": ["1", 0], "message": "boom"}},
        }}),
        "FailNode",
    );
    bad(
        json!({"workflow": {"1": {"class_type": "CrashNode", "inputs": {}}}}),
        "crashed",
    );
    // Restarted after the crash: /run, then /status until it is done.
    let queued = http_post(api, "/run", &ok);
    assert_eq!(queued["status"], "IN_QUEUE", "{queued:#}");
    let id = queued["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let done = loop {
        let st = http_post(api, &format!("/status/{id}"), &json!({}));
        if st["status"] == "COMPLETED" || st["status"] == "FAILED" {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "{st:#}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(done["status"], "COMPLETED", "{done:#}");
    one_file(&done["output"]);
    let unknown = http_post(api, "/status/no-such-job", &json!({}));
    assert_eq!(unknown["error"], "Job ID not found", "{unknown:#}");
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());
    env.assert_nothing_left();
}

/// A worker killed with SIGKILL (no chance to clean up) takes its ComfyUI with it.
#[test]
fn comfyui_goes_when_the_worker_is_killed() {
    let env = Env::new();
    let (mut child, _api) = serve_api(&env, &[]);
    assert!(listening(env.port), "ComfyUI is not up");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while listening(env.port) {
        assert!(
            std::time::Instant::now() < deadline,
            "ComfyUI still listens 10 s after its worker was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// POST JSON to the local API and read the JSON answer.
fn http_post(port: u16, path: &str, body: &Value) -> Value {
    let (_, answer) = net::request(
        port,
        "POST",
        path,
        "application/json",
        &serde_json::to_vec(body).unwrap(),
    );
    serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&answer)))
}

/// ComfyUI writes the prompt it received into every PNG it saves (a `prompt` tEXt chunk, on
/// by default; tests/../comfy_runpod.md 4.3, real_comfyui.md 5). So an identical job must not
/// reach ComfyUI as a different prompt, or the "same" job gives other bytes (and hashes) each
/// time, and the worker's private folder names end up in the user's files.
#[test]
fn identical_job_twice_gives_identical_bytes_with_comfyui_metadata() {
    let env = Env::new();
    let job = json!({"input": {"workflow": minimal_workflow()}});
    let (f1, d1) = one_file(&env.ok(&job, &[]));
    let (f2, d2) = one_file(&env.ok(&job, &[]));
    assert!(
        d1.windows(4).any(|w| w == b"tEXt"),
        "the fake wrote no metadata: the test proves nothing"
    );
    let leaked = |d: &[u8]| d.windows(11).any(|w| w == b"comfystore-");
    assert!(
        !leaked(&d1),
        "the output PNG carries the worker's job folder (its prompt metadata has the \
         rewritten filename_prefix): {}",
        String::from_utf8_lossy(&d1)
    );
    assert_eq!(
        f1["sha256"], f2["sha256"],
        "the same job gave different bytes on two runs"
    );
    assert!(d1 == d2);
}

/// The workflow reaches ComfyUI with the client's key order, byte for byte: ComfyUI embeds
/// the prompt it received in every PNG, so a reordered prompt gives other bytes (and another
/// sha256) than worker-comfyui gives for the same job. Node ids and input keys here are in
/// neither sorted nor numeric order.
#[test]
fn the_workflow_reaches_comfyui_in_the_clients_key_order() {
    let env = Env::new();
    let workflow = concat!(
        r#"{"5":{"inputs":{"width":8,"height":4,"batch_size":1,"color":255},"class_type":"EmptyImage"},"#,
        r#""10":{"class_type":"ImageInvert","inputs":{"image":["5",0]}},"#,
        r#""2":{"inputs":{"images":["10",0],"filename_prefix":"order"},"class_type":"SaveImage"}}"#
    );
    let job = env.job_text(&format!(r#"{{"input": {{"workflow": {workflow}}}}}"#));
    let record = env.dir.join("prompt-body.json");
    let flag = format!("--comfy-arg=--fake-record-prompt={}", s(&record));
    let out = env.run_job(&job, &[&flag]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let body = String::from_utf8(fs::read(&record).expect("the fake recorded no prompt")).unwrap();
    assert!(
        body.contains(&format!(r#""prompt":{workflow}"#)),
        "the prompt sent to ComfyUI is not the client's workflow, byte for byte:\n sent {body}\n want {workflow}"
    );
    // And so the prompt ComfyUI embeds in the PNG keeps that order.
    let (_, png) = one_file(&parse(&out));
    let text = String::from_utf8_lossy(&png);
    let at = |key: &str| {
        text.find(key)
            .unwrap_or_else(|| panic!("{key} not in the PNG's prompt"))
    };
    assert!(
        at(r#""5""#) < at(r#""10""#) && at(r#""10""#) < at(r#""2""#),
        "{text}"
    );
    assert!(
        at("width") < at("height") && at("height") < at("batch_size"),
        "{text}"
    );
}

#[test]
fn execution_error_names_the_node() {
    let env = Env::new();
    let job = json!({"input": {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "FailNode", "inputs": {"image": ["1", 0], "message": "boom on purpose"}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "never", "images": ["2", 0]}},
    }}});
    let v = env.fails(&job, &[]);
    assert_eq!(v["error"], "Job processing failed", "{v:#}");
    let t = error_text(&v);
    assert!(
        t.contains("FailNode") && t.contains("boom on purpose") && t.contains("Node ID: 2"),
        "{v:#}"
    );
    env.assert_nothing_left();
}

#[test]
fn invalid_workflows_are_refused() {
    let env = Env::new();
    // A node type ComfyUI does not know: refused by POST /prompt.
    let mut wf = minimal_workflow();
    wf["4"] = json!({"class_type": "NoSuchNode", "inputs": {}});
    let v = env.fails(&json!({"input": {"workflow": wf}}), &[]);
    let t = error_text(&v);
    assert!(
        t.contains("NoSuchNode") && t.contains("does not exist"),
        "{v:#}"
    );
    // A LoadImage of a file nobody uploaded: the node errors are listed.
    let v = env.fails(
        &json!({"input": {"workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["1", 0]}},
        }}}),
        &[],
    );
    let t = error_text(&v);
    assert!(t.contains("validation failed"), "{v:#}");
    assert!(
        t.contains("Node 1 (LoadImage)") && t.contains("missing.png"),
        "{v:#}"
    );
    // A job file that is not JSON.
    let v = env.fails_file(&env.job_text("{\"input\": {\"workflow\": "), &[]);
    assert!(
        v["error"].as_str().unwrap().contains("Invalid JSON"),
        "{v:#}"
    );
    // No workflow.
    let v = env.fails(&json!({"input": {"images": []}}), &[]);
    assert_eq!(v["error"], "Missing 'workflow' parameter", "{v:#}");
    // A workflow string that is not JSON.
    let v = env.fails(&json!({"input": {"workflow": "{not json"}}), &[]);
    assert!(v["error"].as_str().unwrap().contains("workflow"), "{v:#}");
    env.assert_nothing_left();
}

fn tree(root: &Path, skip: &[&Path]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| !skip.contains(&e.path()))
        .map(|e| e.unwrap().path().to_path_buf())
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_image_names_are_refused_and_nothing_is_written() {
    let env = Env::new();
    let img = png_rgb(4, 4, &[7; 48]);
    for name in ["../x.png", "a/b.png", "../../dest/main.py", ".hidden.png"] {
        let skip = [
            env.store.as_path(),
            &env.dest.join("venv"),
            &env.dir.join("jobs"),
        ];
        let before = tree(&env.dir, &skip);
        let job = json!({"input": {
            "workflow": {
                "1": {"class_type": "LoadImage", "inputs": {"image": name}},
                "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "h", "images": ["1", 0]}},
            },
            "images": [{"name": name, "image": data_uri(&img)}],
        }});
        let v = env.fails(&job, &[]);
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(name), "{name}: {v:#}");
        assert!(
            e.contains("file name") || e.contains("dot"),
            "{name}: {v:#}"
        );
        let mut after = tree(&env.dir, &skip);
        after.retain(|p| {
            !p.starts_with(env.dir.join("job-")) && !p.starts_with(env.dest.join("input"))
        });
        let before: Vec<_> = before
            .into_iter()
            .filter(|p| {
                !p.starts_with(env.dir.join("job-")) && !p.starts_with(env.dest.join("input"))
            })
            .collect();
        assert_eq!(before, after, "{name}: files appeared outside dest/input");
        assert_eq!(
            fs::read(env.dest.join("main.py")).unwrap(),
            fs::read(FAKE).unwrap()
        );
    }
    env.assert_nothing_left();
}

#[test]
fn oversized_input_is_refused() {
    let env = Env::new();
    let big = pseudo_random(5, 2_000_000);
    let job = json!({"input": {
        "workflow": minimal_workflow(),
        "images": [{"name": "big.png", "image": data_uri(&big)}],
    }});
    let v = env.fails(&job, &["--max-input-mb", "1"]);
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("over the limit"), "{v:#}");
    assert!(e.contains("1000000"), "the limit is named: {v:#}");
    env.assert_nothing_left();
}

#[test]
fn comfyui_dying_mid_job_is_reported_with_its_log() {
    let env = Env::new();
    let job = json!({"input": {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "CrashNode", "inputs": {"image": ["1", 0]}},
    }}});
    let v = env.fails(&job, &[]);
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("crashed"), "{v:#}");
    let t = error_text(&v);
    assert!(t.contains("ComfyUI log"), "no log: {v:#}");
    assert!(
        t.contains("got prompt") && t.contains("GET /history/"),
        "the log lacks the fake's lines: {v:#}"
    );
    assert!(t.contains("exited"), "the exit is not reported: {v:#}");
    env.assert_nothing_left();
}

#[test]
fn non_image_outputs_are_returned() {
    let env = Env::new();
    let job = json!({"input": {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": 255}},
        "2": {"class_type": "SaveVideo", "inputs": {"filename_prefix": "clips/v", "images": ["1", 0]}},
    }}});
    let out = env.ok(&job, &[]);
    // A video is not an image: worker-comfyui's clients decode every `images[].data` as one.
    assert_eq!(out["images"], json!([]), "{out:#}");
    assert_eq!(out["status"], "success_no_images", "{out:#}");
    assert_eq!(out["videos"].as_array().map(Vec::len), Some(1), "{out:#}");
    let (f, data) = one_file(&out);
    assert_eq!(f["output"], "videos", "{f:#}");
    assert_eq!(f["node"], "2");
    assert!(f["filename"].as_str().unwrap().ends_with(".mp4"), "{f:#}");
    assert_eq!(&data[4..8], b"ftyp");
    env.assert_nothing_left();
}

#[test]
fn timeout_interrupts_the_job() {
    let env = Env::new();
    let job = json!({"input": {
        "workflow": {"1": {"class_type": "SlowNode", "inputs": {"seconds": 10}}},
        "timeout_s": 1,
    }});
    let t0 = Instant::now();
    let v = env.fails(&job, &[]);
    let took = t0.elapsed();
    assert!(v["error"].as_str().unwrap().contains("timed out"), "{v:#}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    env.assert_nothing_left();
}

/// A custom node chooses the `subfolder` and `filename` ComfyUI reports: a place outside
/// ComfyUI's folders (absolute, `..`, a symlink the node made) is refused and named in the
/// answer; nothing there is deleted and no byte of it reaches the answer. With no other output
/// the job fails; with one, that output is answered and the refusal listed in `errors`.
#[test]
fn reported_outputs_outside_comfyuis_folders_are_neither_deleted_nor_read() {
    let env = Env::new();
    let victim = env.dir.join("victim");
    let secret = b"victim secret 5f1c9a".to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&secret);
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("keep.txt"), &secret).unwrap();
    let link = env.dest.join("output/evil");
    let cases = [
        json!({"filename": "keep.txt", "subfolder": s(&victim)}),
        json!({"filename": "keep.txt", "subfolder": "../../victim"}),
        json!({"filename": "keep.txt", "subfolder": "../../victim", "type": "temp"}),
        json!({"filename": "../../victim/keep.txt", "subfolder": ""}),
        json!({"filename": "keep.txt", "subfolder": "x", "type": "../../victim"}),
        json!({"filename": "keep.txt", "subfolder": "evil", "link": "evil", "link_to": s(&victim)}),
    ];
    for (i, inputs) in cases.iter().enumerate() {
        for with_image in [false, true] {
            let mut wf = json!({"1": {"class_type": "ReportFile", "inputs": inputs}});
            if with_image {
                wf["2"] = json!({"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": i}});
                wf["3"] = json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "ok", "images": ["2", 0]}});
            }
            let out = env.run_job(&env.job_file(&json!({"input": {"workflow": wf}})), &[]);
            let text = format!("{}{}", describe(&out), String::from_utf8_lossy(&out.stdout));
            let v = parse(&out);
            let what = format!("{inputs} (with an image: {with_image}): {v:#}");
            if with_image {
                assert_eq!(code(&out), 0, "{what}");
                assert_eq!(v["images"].as_array().map(Vec::len), Some(1), "{what}");
                assert!(v["errors"].to_string().contains("refused"), "{what}");
            } else {
                assert_eq!(code(&out), 1, "{what}");
                assert!(error_text(&v).contains("refused"), "{what}");
            }
            assert!(
                !text.contains(&b64) && !text.contains("victim secret"),
                "the file outside was read into the answer: {what}"
            );
            assert_eq!(
                fs::read(victim.join("keep.txt")).ok(),
                Some(secret.clone()),
                "the file outside was deleted: {what}"
            );
            let _ = fs::remove_file(&link);
        }
    }
    env.assert_nothing_left();
}

/// ComfyUI runs every custom node in its process: it gets a cleaned environment, without
/// comfystore's tokens and keys, plus what `--comfy-env` (and COMFYSTORE_COMFY_ENV) name.
#[test]
fn comfyui_gets_no_secrets_from_the_environment_only_what_comfy_env_names() {
    let env = Env::new();
    let job = env.job_file(&json!({"input": {"workflow": {
        "1": {"class_type": "Environ", "inputs": {}},
    }}}));
    let set = [
        ("HF_TOKEN", "hf_secret_token"),
        ("RUNPOD_AI_API_KEY", "rp_secret"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/secret/gcs.json"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret"),
        ("HF_HOME", "/cache/hf"),
        ("CUDA_VISIBLE_DEVICES", "0"),
        ("COMFYSTORE_TEST_PASSED", "1"),
        ("COMFYSTORE_TEST_ALSO", "1"),
        ("COMFYSTORE_TEST_FROM_VAR", "1"),
    ];
    let out = env.run_job_env(&job, &["--comfy-env", "COMFYSTORE_TEST_PASSED"], &set);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let (f, data) = one_file(&parse(&out));
    assert_eq!(f["output"], "text", "{f:#}");
    let names: Vec<String> = String::from_utf8(data)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for secret in [
        "HF_TOKEN",
        "RUNPOD_AI_API_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "AWS_SECRET_ACCESS_KEY",
        "COMFYSTORE_TEST_ALSO",
        "COMFYSTORE_COMFY_ENV",
    ] {
        assert!(
            !names.iter().any(|n| n == secret),
            "ComfyUI got {secret}: {names:?}"
        );
    }
    for passed in [
        "PATH",
        "HF_HOME",
        "CUDA_VISIBLE_DEVICES",
        "PYTHONUNBUFFERED",
        "COMFYSTORE_TEST_PASSED",
    ] {
        assert!(
            names.iter().any(|n| n == passed),
            "ComfyUI lacks {passed}: {names:?}"
        );
    }
    env.assert_nothing_left();
}

// ---------------------------------------------------------------------------------------------
// Outputs to Google Cloud Storage, against fake-gcs-server behind a front (tests/common/gcs.rs)
// that serves the token, testIamPermissions and injected upload faults.

/// An emulator with the bucket, its front, and a service-account key whose token server is the
/// front; `None` (after `cannot_run`) when the emulator or openssl is missing.
struct Gcs {
    emu: gcs::Emulator,
    front: gcs::Front,
    key: gcs::TestKey,
}

impl Gcs {
    fn start(
        test: &str,
        env: &Env,
        granted: Option<&[&str]>,
        fail_uploads: usize,
        fail_status: u16,
    ) -> Option<Gcs> {
        let bin = match gcs::binary() {
            Ok(b) => b,
            Err(why) => {
                common::cannot_run(test, &why);
                return None;
            }
        };
        let emu = gcs::Emulator::start(&bin);
        let front = gcs::Front::start(emu.port, granted, fail_uploads, fail_status);
        let key = match gcs::TestKey::make(&env.dir, &format!("{}/token", front.url())) {
            Ok(k) => k,
            Err(why) => {
                common::cannot_run(test, &why);
                return None;
            }
        };
        Some(Gcs { emu, front, key })
    }

    /// The variables of a worker writing to the bucket through the front, retrying fast.
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GCS_BUCKET", gcs::BUCKET.to_string()),
            ("STORAGE_EMULATOR_HOST", self.front.url()),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                s(&self.key.json).to_string(),
            ),
            ("GCS_RETRY_BASE_SLEEP", "0.05".to_string()),
        ]
    }
}

/// run-job with the GCS variables, and `more`.
fn run_gcs(env: &Env, g: &Gcs, job: &Value, more: &[(&str, &str)]) -> Output {
    let vars = g.vars();
    let mut set: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    set.extend_from_slice(more);
    env.run_job_env(&env.job_file(job), &[], &set)
}

/// The value of a query parameter as written in the URL.
fn query_param<'a>(url: &'a str, name: &str) -> &'a str {
    let query = url.split_once('?').expect("a query").1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in the URL"))
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Check a V4 signed URL the way GCS does, from Google's description of the V4 signing
/// process, with openssl: canonical request → string to sign → RSA-SHA256 signature over it
/// with the service account's public key.
fn verify_v4(url: &str, public_pem: &Path, dir: &Path) {
    let (base, query) = url.split_once('?').unwrap();
    let rest = base.split_once("://").unwrap().1;
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("X-Goog-Signature="))
        .collect();
    params.sort();
    let canonical = format!(
        "GET\n{path}\n{}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD",
        params.join("&")
    );
    let credential = pct_decode(query_param(url, "X-Goog-Credential"));
    let scope = credential.split_once('/').unwrap().1;
    let to_sign = format!(
        "GOOG4-RSA-SHA256\n{}\n{scope}\n{}",
        query_param(url, "X-Goog-Date"),
        sha256_hex(canonical.as_bytes())
    );
    let sig = hex::decode(query_param(url, "X-Goog-Signature")).expect("hex signature");
    fs::write(dir.join("to-sign.txt"), &to_sign).unwrap();
    fs::write(dir.join("sig.bin"), &sig).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public_pem)
        .arg("-signature")
        .arg(dir.join("sig.bin"))
        .arg(dir.join("to-sign.txt"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
        "openssl does not accept the signature of {url}\n{}",
        describe(&out)
    );
}

/// The only output file of an answer, as a GCS URL.
fn one_gcs_file(out: &Value) -> Value {
    let all = all_files(out);
    assert_eq!(all.len(), 1, "{out:#}");
    let f = all[0].clone();
    assert_eq!(f["type"], "gcs_url", "{f:#}");
    f
}

/// A job answered with a signed URL: the object holds the output, with its Content-Type and
/// sha256; the signature is one GCS accepts (checked by openssl); the login and the permission
/// check happened; and at RUST_LOG=trace neither the token, the signed URL nor the key reach
/// the log.
#[test]
fn gcs_job_answers_a_signed_url_to_the_uploaded_object() {
    let env = Env::new();
    let perms: &[&str] = &["storage.objects.create", "storage.objects.get"];
    let Some(g) = Gcs::start(
        "gcs_job_answers_a_signed_url_to_the_uploaded_object",
        &env,
        Some(perms),
        0,
        0,
    ) else {
        return;
    };
    let job = json!({"id": "job-gcs-1", "input": {"workflow": minimal_workflow()}});
    let out = run_gcs(&env, &g, &job, &[("RUST_LOG", "trace")]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = parse(&out);
    assert!(answer.get("errors").is_none(), "{answer:#}");
    let f = one_gcs_file(&answer);
    let name = f["filename"].as_str().unwrap();
    let object = format!("comfy/outputs/job-gcs-1/{name}");
    assert_eq!(
        f["gs_uri"],
        format!("gs://{}/{object}", gcs::BUCKET),
        "{f:#}"
    );
    assert_eq!(f["output"], "images");
    assert_eq!(f["node"], "3");
    // The object: the output's bytes (as the store has them), its type and its sha256.
    let hex = f["sha256"].as_str().unwrap();
    let cat = run(&env.store, &["cat", &format!("sha256:{hex}")]);
    assert_eq!(code(&cat), 0, "{}", describe(&cat));
    let bytes = g.emu.content(&object);
    assert!(bytes == cat.stdout, "the object differs from the output");
    assert_eq!(sha256_hex(&bytes), hex);
    let meta = g.emu.metadata(&object).expect("the object exists");
    assert_eq!(meta["contentType"], "image/png", "{meta:#}");
    assert_eq!(meta["metadata"]["sha256"], hex, "{meta:#}");
    // The URL: V4, 7 days by default, for the service account, signed right.
    let url = f["data"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/{}/comfy/outputs/job-gcs-1/",
            g.front.url(),
            gcs::BUCKET
        )),
        "{url}"
    );
    assert_eq!(query_param(url, "X-Goog-Algorithm"), "GOOG4-RSA-SHA256");
    assert_eq!(query_param(url, "X-Goog-Expires"), "604800");
    assert!(pct_decode(query_param(url, "X-Goog-Credential")).starts_with(&g.key.email));
    verify_v4(url, &g.key.public_pem, &env.dir);
    // What went over the wire: a login, the permission check, an authorised conditional upload.
    assert_eq!(g.front.seen_at("/token").len(), 1, "the token is not kept");
    let iam = g.front.seen_at(&format!(
        "/storage/v1/b/{}/iam/testPermissions",
        gcs::BUCKET
    ));
    assert_eq!(iam.len(), 1, "{iam:?}");
    assert!(iam[0].target.contains("storage.objects.get"), "{iam:?}");
    let uploads = g.front.seen_at("/upload/");
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert!(
        uploads[0].target.contains("ifGenerationMatch=0"),
        "{uploads:?}"
    );
    assert_eq!(
        uploads[0].header("authorization"),
        Some(format!("Bearer {}", gcs::TOKEN).as_str())
    );
    // Secrets stay out of the log, even at trace.
    let log = common::stderr(&out);
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "RUST_LOG=trace gave no log:\n{log}"
    );
    let signature = query_param(url, "X-Goog-Signature");
    for secret in [gcs::TOKEN, signature, "X-Goog-Signature", "assertion="] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
    let key_line = g.key.private_pem.lines().nth(3).unwrap();
    assert!(!log.contains(key_line), "the log shows the private key");
    env.assert_nothing_left();
}

/// `GCS_PUBLIC=1` answers the public URL; a video keeps its name and gets video/mp4; an
/// emulator without IAM makes the permission check say it was skipped.
#[test]
fn gcs_public_url_keeps_names_and_content_types() {
    let env = Env::new();
    let Some(g) = Gcs::start(
        "gcs_public_url_keeps_names_and_content_types",
        &env,
        None,
        0,
        0,
    ) else {
        return;
    };
    let job = json!({"id": "job-gcs-2", "input": {"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": 255}},
        "2": {"class_type": "SaveVideo", "inputs": {"filename_prefix": "clips/v", "images": ["1", 0]}},
    }}});
    let out = run_gcs(
        &env,
        &g,
        &job,
        &[("GCS_PUBLIC", "1"), ("GCS_PREFIX", "/runs/a/")],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        common::stderr(&out).contains("permission check skipped"),
        "{}",
        describe(&out)
    );
    let f = one_gcs_file(&parse(&out));
    let name = f["filename"].as_str().unwrap();
    assert!(name.ends_with(".mp4"), "{f:#}");
    let object = format!("runs/a/job-gcs-2/{name}");
    assert_eq!(
        f["data"],
        format!("{}/{}/{object}", g.front.url(), gcs::BUCKET)
    );
    let meta = g.emu.metadata(&object).expect("the object exists");
    assert_eq!(meta["contentType"], "video/mp4", "{meta:#}");
    // The public URL serves the bytes (the emulator's XML-style path, through the front).
    let path = f["data"]
        .as_str()
        .unwrap()
        .strip_prefix(&g.front.url())
        .unwrap()
        .to_string();
    let (status, bytes) = net::request(g.front.port, "GET", &path, "text/plain", b"");
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&bytes), f["sha256"].as_str().unwrap());
    assert_eq!(&bytes[4..8], b"ftyp");
    env.assert_nothing_left();
}

/// Two 503s on the upload are retried away: the answer has the URL, the object is there once.
#[test]
fn gcs_upload_that_gets_503_twice_then_succeeds() {
    let env = Env::new();
    let Some(g) = Gcs::start(
        "gcs_upload_that_gets_503_twice_then_succeeds",
        &env,
        None,
        2,
        503,
    ) else {
        return;
    };
    let job = json!({"id": "job-gcs-3", "input": {"workflow": minimal_workflow()}});
    let out = run_gcs(&env, &g, &job, &[]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = parse(&out);
    assert!(answer.get("errors").is_none(), "{answer:#}");
    let f = one_gcs_file(&answer);
    let statuses: Vec<u16> = g
        .front
        .seen_at("/upload/")
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, vec![503, 503, 200]);
    let objects = g.emu.list("comfy/outputs/job-gcs-3/");
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(
        sha256_hex(&g.emu.content(&objects[0])),
        f["sha256"].as_str().unwrap()
    );
}

/// Connections dropped without an answer are retried like a 503.
#[test]
fn gcs_upload_after_two_dropped_connections_succeeds() {
    let env = Env::new();
    let Some(g) = Gcs::start(
        "gcs_upload_after_two_dropped_connections_succeeds",
        &env,
        None,
        2,
        0,
    ) else {
        return;
    };
    let job = json!({"id": "job-gcs-drop", "input": {"workflow": minimal_workflow()}});
    let out = run_gcs(&env, &g, &job, &[]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = parse(&out);
    assert!(answer.get("errors").is_none(), "{answer:#}");
    let f = one_gcs_file(&answer);
    let statuses: Vec<u16> = g
        .front
        .seen_at("/upload/")
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, vec![0, 0, 200]);
    assert!(
        common::stderr(&out).contains("retrying"),
        "{}",
        describe(&out)
    );
    let object = format!(
        "comfy/outputs/job-gcs-drop/{}",
        f["filename"].as_str().unwrap()
    );
    assert_eq!(
        sha256_hex(&g.emu.content(&object)),
        f["sha256"].as_str().unwrap()
    );
}

/// An upload that keeps failing loses nothing: the file stays in the store, the answer says
/// so, and a small file comes back as base64 (or, with the fallback off, only the error).
#[test]
fn gcs_upload_that_keeps_failing_keeps_the_output_and_says_so() {
    let env = Env::new();
    let Some(g) = Gcs::start(
        "gcs_upload_that_keeps_failing_keeps_the_output_and_says_so",
        &env,
        None,
        usize::MAX,
        503,
    ) else {
        return;
    };
    let job = json!({"id": "job-gcs-4", "input": {"workflow": minimal_workflow()}});
    let out = run_gcs(&env, &g, &job, &[("GCS_RETRIES", "2")]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = parse(&out);
    let (f, png) = one_file(&answer);
    let hex = f["sha256"].as_str().unwrap();
    let errors = answer["errors"].to_string();
    for said in [
        "not uploaded",
        "HTTP 503",
        "after 3 attempts",
        &format!("sha256:{hex}"),
        "base64",
    ] {
        assert!(errors.contains(said), "errors lack {said:?}: {errors}");
    }
    assert_eq!(g.front.seen_at("/upload/").len(), 3);
    let cat = run(&env.store, &["cat", &format!("sha256:{hex}")]);
    assert!(cat.stdout == png, "the store does not keep the output");
    // Without the fallback: no file in the answer, the error names it and where it is kept.
    let out = run_gcs(
        &env,
        &g,
        &job,
        &[("GCS_RETRIES", "1"), ("GCS_FALLBACK_MAX_MB", "0")],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = parse(&out);
    assert_eq!(answer["images"], json!([]), "{answer:#}");
    let errors = answer["errors"].to_string();
    assert!(errors.contains(f["filename"].as_str().unwrap()), "{errors}");
    assert!(errors.contains(&format!("sha256:{hex}")), "{errors}");
    assert!(g.emu.list("comfy/outputs/").is_empty());
}

/// An object of that name with other content is never replaced (ifGenerationMatch=0); the
/// same job run again finds its own object and answers it.
#[test]
fn gcs_never_overwrites_another_object_and_a_rerun_finds_its_own() {
    let env = Env::new();
    let Some(g) = Gcs::start(
        "gcs_never_overwrites_another_object_and_a_rerun_finds_its_own",
        &env,
        None,
        0,
        0,
    ) else {
        return;
    };
    let job = json!({"id": "job-gcs-5", "input": {"workflow": minimal_workflow()}});
    let first = run_gcs(&env, &g, &job, &[]);
    assert_eq!(code(&first), 0, "{}", describe(&first));
    let f = one_gcs_file(&parse(&first));
    let again = run_gcs(&env, &g, &job, &[]);
    assert_eq!(code(&again), 0, "{}", describe(&again));
    let again = parse(&again);
    assert!(again.get("errors").is_none(), "{again:#}");
    assert_eq!(one_gcs_file(&again)["gs_uri"], f["gs_uri"]);
    // Someone else's object where the next job would write.
    let name = f["filename"].as_str().unwrap();
    let theirs = format!("comfy/outputs/job-gcs-6/{name}");
    g.emu.put(&theirs, b"someone else's bytes");
    let job = json!({"id": "job-gcs-6", "input": {"workflow": minimal_workflow()}});
    let out = run_gcs(&env, &g, &job, &[]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = parse(&out);
    one_file(&answer);
    let errors = answer["errors"].to_string();
    assert!(
        errors.contains("already exists with other content"),
        "{errors}"
    );
    assert_eq!(g.emu.content(&theirs), b"someone else's bytes");
}

/// A missing permission stops the worker before ComfyUI starts, naming it and the bucket.
#[test]
fn gcs_missing_permission_fails_at_start_naming_it() {
    let env = Env::new();
    let granted: &[&str] = &["storage.objects.create"];
    let Some(g) = Gcs::start(
        "gcs_missing_permission_fails_at_start_naming_it",
        &env,
        Some(granted),
        0,
        0,
    ) else {
        return;
    };
    let job = json!({"input": {"workflow": minimal_workflow()}});
    let out = run_gcs(&env, &g, &job, &[]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    let err = common::stderr(&out);
    assert!(err.contains("storage.objects.get"), "{err}");
    assert!(err.contains(gcs::BUCKET), "{err}");
    assert!(g.front.seen_at("/upload/").is_empty());
    assert!(env.entries("output").is_empty(), "ComfyUI ran a job");
    // A signed URL longer than GCS allows, or both kinds of URL, are refused at start too.
    for bad in [
        vec![("GCS_SIGNED_URL_TTL", "8d")],
        vec![("GCS_SIGNED_URL_TTL", "1h"), ("GCS_PUBLIC", "true")],
    ] {
        let out = run_gcs(&env, &g, &job, &bad);
        assert_ne!(code(&out), 0, "{}", describe(&out));
        let err = common::stderr(&out);
        assert!(err.contains("GCS_SIGNED_URL_TTL"), "{err}");
    }
}

/// A file bigger than GCS_CHUNK_MB goes up in a resumable session, chunk by chunk (a failed
/// chunk is sent again), and arrives whole with its type and hash.
#[test]
fn gcs_big_output_goes_up_in_a_resumable_session() {
    let env = Env::new();
    let Some(g) = Gcs::start(
        "gcs_big_output_goes_up_in_a_resumable_session",
        &env,
        None,
        1,
        503,
    ) else {
        return;
    };
    // 2.3 MB of random pixels, stored uncompressed: SaveImage gives the same bytes back.
    let input = png_rgb(900, 850, &pseudo_random(7, 900 * 850 * 3));
    let job = json!({"id": "job-gcs-big", "input": {
        "workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "big", "images": ["1", 0]}},
        },
        "images": [{"name": "in.png", "image": data_uri(&input)}],
    }});
    // The second chunk fails once: it is sent again from where the session stands.
    g.front.pass_first(2);
    let out = run_gcs(
        &env,
        &g,
        &job,
        &[("GCS_CHUNK_MB", "1"), ("GCS_PUBLIC", "1")],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = parse(&out);
    assert!(answer.get("errors").is_none(), "{answer:#}");
    let f = one_gcs_file(&answer);
    assert_eq!(f["sha256"], sha256_hex(&input));
    let object = format!(
        "comfy/outputs/job-gcs-big/{}",
        f["filename"].as_str().unwrap()
    );
    assert!(
        g.emu.content(&object) == input,
        "the object differs from the output"
    );
    let uploads = g.front.seen_at("/upload/");
    assert!(
        uploads[0].method == "POST" && uploads[0].target.contains("uploadType=resumable"),
        "{uploads:?}"
    );
    let chunks: Vec<u16> = uploads
        .iter()
        .filter(|u| u.method == "PUT")
        .map(|u| u.status)
        .collect();
    assert_eq!(chunks, vec![308, 503, 308, 200], "{uploads:?}");
    let meta = g.emu.metadata(&object).unwrap();
    assert_eq!(meta["metadata"]["sha256"], sha256_hex(&input), "{meta:#}");
    assert_eq!(meta["contentType"], "image/png", "{meta:#}");
}

/// `serve` takes the GCS settings as flags too: the local API answers a job with a URL; and a
/// missing permission stops `serve` at once, before ComfyUI starts, naming it and the bucket.
#[test]
fn gcs_serve_by_flags_answers_urls_and_stops_at_once_without_permission() {
    let env = Env::new();
    let Some(g) = Gcs::start(
        "gcs_serve_by_flags_answers_urls_and_stops_at_once_without_permission",
        &env,
        Some(&["storage.objects.create", "storage.objects.get"]),
        0,
        0,
    ) else {
        return;
    };
    let front = g.front.url();
    let flags = [
        "--gcs-bucket",
        gcs::BUCKET,
        "--gcs-emulator",
        &front,
        "--gcs-credentials",
        s(&g.key.json),
        "--gcs-prefix",
        "served",
        "--gcs-signed-url-ttl",
        "1h",
    ];
    let (mut child, api) = serve_api(&env, &flags);
    let r = http_post(
        api,
        "/runsync",
        &json!({"input": {"workflow": minimal_workflow()}}),
    );
    assert_eq!(r["status"], "COMPLETED", "{r:#}");
    let f = one_gcs_file(&r["output"]);
    let url = f["data"].as_str().unwrap();
    assert_eq!(query_param(url, "X-Goog-Expires"), "3600");
    verify_v4(url, &g.key.public_pem, &env.dir);
    let id = r["id"].as_str().unwrap();
    let object = format!("served/{id}/{}", f["filename"].as_str().unwrap());
    assert_eq!(
        sha256_hex(&g.emu.content(&object)),
        f["sha256"].as_str().unwrap()
    );
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(child.wait().unwrap().success());

    // The same flags against a front that grants only create: signing needs get.
    let g2 = Gcs::start(
        "gcs_serve_by_flags_answers_urls_and_stops_at_once_without_permission",
        &env,
        Some(&["storage.objects.create"]),
        0,
        0,
    )
    .unwrap();
    let front2 = g2.front.url();
    let key2 = s(&g2.key.json).to_string();
    let mut flags2 = flags;
    flags2[3] = &front2;
    flags2[5] = &key2;
    let mut remove: Vec<String> = scrubbed_vars();
    remove.extend(NETWORK_ENV.iter().map(|v| v.to_string()));
    remove.extend(
        common::gcs::GCS_ENV
            .iter()
            .chain(&["RUST_LOG"])
            .map(|v| v.to_string()),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfystore"));
    cmd.args(["--store", s(&env.store), "serve", "--api"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .args([
            "--dest",
            s(&env.dest),
            "--comfy-port",
            &env.port.to_string(),
        ])
        .args(["--comfy-arg=--cpu"])
        .args(flags2);
    for k in &remove {
        cmd.env_remove(k);
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "serve took {:?} to stop",
        started.elapsed()
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("missing permission storage.objects.get on bucket outputs-test"),
        "{err}"
    );
    assert!(!listening(env.port));
    assert!(g2.front.seen_at("/upload/").is_empty());
}
