//! The reference locks in `lockfiles/` are what comfystore makes of their inputs today:
//! `comfy-demo` is the Quickstart example locked again byte for byte; `comfy-0.3.64-cpu` (real
//! ComfyUI, made by `scripts/real/portable_check.sh`) is a valid, portable lock, and
//! `workflows/minimal.expected.json` is an expectation for the workflow beside it.

mod common;

use common::{code, describe, run_env, s};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The interpreter fields of a `python` section, which depend on the machine.
const MACHINE_FIELDS: [&str; 5] = ["version", "implementation", "abi", "platform", "libc"];

#[test]
fn the_quickstart_lock_is_made_again_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = tmp.path().join("demo.lock.json");
    let no_home = [
        ("HOME", Some(tmp.path().as_os_str())),
        ("VIRTUAL_ENV", None),
    ];
    let o = run_env(
        &store,
        &[
            "lock",
            s(&repo("examples/comfyui-mini")),
            "--tag",
            "demo",
            "--no-python",
            "--adopt",
            "copy",
            "-o",
            s(&out),
        ],
        &no_home,
    );
    assert_eq!(code(&o), 0, "lock: {}", describe(&o));
    let o = run_env(
        &store,
        &[
            "pin",
            s(&repo("examples/comfyui-mini/requirements.txt")),
            "--offline",
            "--wheels-dir",
            s(&repo("examples/wheels")),
            "--lock",
            s(&out),
        ],
        &no_home,
    );
    assert_eq!(code(&o), 0, "pin: {}", describe(&o));
    let reference = repo("lockfiles/comfy-demo.lock.json");
    let (made, want) = (fs::read(&out).unwrap(), fs::read(&reference).unwrap());
    let (mut a, mut b) = (read_json(&out), read_json(&reference));
    let same_machine = MACHINE_FIELDS
        .iter()
        .all(|f| a["python"][f] == b["python"][f]);
    if same_machine {
        assert!(
            made == want,
            "lockfiles/comfy-demo.lock.json differs from a fresh lock:\n{}",
            String::from_utf8_lossy(&made)
        );
    } else {
        eprintln!(
            "note: this interpreter is not the reference lock's ({}); compared without its fields",
            MACHINE_FIELDS.map(|f| b["python"][f].to_string()).join(" ")
        );
        for f in MACHINE_FIELDS {
            a["python"][f] = Value::Null;
            b["python"][f] = Value::Null;
        }
        assert_eq!(a, b);
    }
}

#[test]
fn the_real_comfyui_lock_is_valid_and_portable_and_its_expectation_fits_the_workflow() {
    let tmp = tempfile::tempdir().unwrap();
    let lock = repo("lockfiles/comfy-0.3.64-cpu.lock.json");
    let o = run_env(
        &tmp.path().join("store"),
        &["--json", "show", s(&lock)],
        &[],
    );
    assert_eq!(code(&o), 0, "show: {}", describe(&o));
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["portable"], true, "{shown:#}");
    let doc = read_json(&lock);
    let py = &doc["python"];
    assert_eq!(py["built_with"], "uv", "{py:#}");
    let packages = py["packages"].as_array().unwrap();
    assert!(packages
        .iter()
        .any(|p| p["name"] == "torch" && p["version"] == "2.8.0"));
    assert!(packages
        .iter()
        .all(|p| p["sha256"].is_string()
            && p["url"].as_str().is_some_and(|u| u.starts_with("https://"))));

    let expect = read_json(&repo("workflows/minimal.expected.json"));
    assert_eq!(expect["schema"], "comfystore.repro-expect/1");
    let args: Vec<String> = expect["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["comfy_args"].to_string())
        .collect();
    assert_eq!(args, [r#"["--cpu"]"#, r#"["--cpu","--disable-metadata"]"#]);
}
