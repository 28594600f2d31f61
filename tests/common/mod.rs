//! Helpers shared by the integration tests: run the real binary against a store.
#![allow(dead_code)]

pub mod comfy;
pub mod gcs;
pub mod http;
pub mod net;
pub mod pyindex;
pub mod wheel;

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// Run `comfystore --store STORE ARGS...` with no store-related environment leaking in.
///
/// `lock` pins index-installed packages against PyPI by default; the fixtures' packages are on
/// no index and tests never use the internet, so pinning is off here
/// (`COMFYSTORE_NO_PIN_WHEELS`) unless a test removes that variable and names its own index.
pub fn run(store: &Path, args: &[&str]) -> Output {
    run_env(store, args, &[])
}

/// Run and require success; returns stdout.
pub fn ok(store: &Path, args: &[&str]) -> String {
    let out = run(store, args);
    assert!(
        out.status.success(),
        "comfystore {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Run with `--json` and parse stdout.
pub fn json(store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(store, &all)).expect("valid JSON output")
}

/// Write a file, creating its parent directories.
pub fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Like [`run`], with environment changes: `(name, Some(value))` sets a variable,
/// `(name, None)` removes it (`COMFYSTORE_NO_PIN_WHEELS` too).
pub fn run_env(store: &Path, args: &[&str], envs: &[(&str, Option<&std::ffi::OsStr>)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfystore"));
    cmd.arg("--store")
        .arg(store)
        .args(args)
        .env_remove("COMFYSTORE_DIR")
        .env_remove("COMFYSTORE_INDEX")
        .env("COMFYSTORE_NO_PIN_WHEELS", "1");
    for (k, v) in envs {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.output().expect("run comfystore")
}

/// The custom node of a lockfile (as JSON) named `name`.
pub fn node<'a>(lock: &'a Value, name: &str) -> &'a Value {
    lock["custom_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no custom node {name} in {lock:#}"))
}

/// The model of a lockfile (as JSON) at `path`.
pub fn model<'a>(lock: &'a Value, path: &str) -> &'a Value {
    lock["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == path)
        .unwrap_or_else(|| panic!("no model {path} in {lock:#}"))
}

/// Variables that would send test downloads elsewhere (proxies) or add credentials: tests that
/// talk to a local server remove them.
pub const NETWORK_ENV: &[&str] = &[
    "COMFYSTORE_TOKENS",
    "HF_TOKEN",
    "CIVITAI_API_TOKEN",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

/// The exit code; a test fails if a signal killed the process.
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .expect("exit code (not killed by a signal)")
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard output as JSON.
pub fn parse(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(out)))
}

/// An exit status with both output streams, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Require a helper command (python3, pip, git) to have succeeded; returns its stdout, trimmed.
pub fn check(what: &str, out: &Output) -> String {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SHA-256 as bare hex, as lockfiles and hubs print it.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A test that cannot run on this machine (a tool or privilege is missing). Under CI, which
/// installs everything the tests need, that is a failure; elsewhere it is said on stderr. The
/// caller returns right after.
pub fn cannot_run(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run under CI: {why}"
    );
    eprintln!("NOT RUN {test}: {why}");
}

/// A version folder the worker can run: `main_py` (the fake ComfyUI, as it is or edited) as its
/// `main.py`, and a venv without pip for it to run in.
pub fn fake_comfy_folder(dir: &Path, main_py: &[u8]) {
    write(&dir.join("main.py"), main_py);
    let out = pyindex::python_cmd(pyindex::python3())
        .args(["-m", "venv", "--without-pip"])
        .arg(dir.join("venv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "venv: {}", describe(&out));
}

/// The progress counts `COMFYSTORE_PROGRESS_LOG` recorded: (label, total, positions before
/// done) of every bar of at least `min` bytes.
pub fn big_bars(log: &Path, min: u64) -> Vec<(String, u64, Vec<u64>)> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut bars: std::collections::BTreeMap<u64, (String, u64, Vec<u64>)> = Default::default();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let Some(total) = v["total"].as_u64().filter(|t| *t >= min) else {
            continue;
        };
        if v["unit"] == "items" {
            continue;
        }
        let bar = bars
            .entry(v["bar"].as_u64().unwrap())
            .or_insert_with(|| (v["label"].as_str().unwrap().to_string(), total, Vec::new()));
        if v["done"] == false {
            bar.2.push(v["pos"].as_u64().unwrap());
        }
    }
    bars.into_values().collect()
}

/// Run `args` (with `envs`) and a progress log: every byte bar of 64 MiB or more must have been
/// seen between a quarter and three quarters of its total before it finished (a bar that moves
/// once per file jumps from 0 to done), and at least one bar named `label` must exist.
pub fn moves_with_the_bytes(
    store: &Path,
    args: &[&str],
    envs: &[(&str, Option<&std::ffi::OsStr>)],
    label: &str,
) {
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("progress.jsonl");
    let mut all = envs.to_vec();
    all.push(("COMFYSTORE_PROGRESS_LOG", Some(log.as_os_str())));
    let out = run_env(store, args, &all);
    assert!(out.status.success(), "{args:?}: {}", describe(&out));
    if args.contains(&"--json") {
        let _: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{args:?} --json is not clean JSON with a progress log: {e}")
        });
    }
    let bars = big_bars(&log, 64 << 20);
    assert!(
        bars.iter().any(|(l, _, _)| l.contains(label)),
        "{args:?}: no byte bar named {label:?} among {bars:?}"
    );
    for (l, total, seen) in &bars {
        assert!(
            seen.iter().any(|p| *p >= total / 4 && *p <= total / 4 * 3),
            "{args:?}: bar {l:?} of {total} bytes was never seen in its middle half: {seen:?}"
        );
    }
}
