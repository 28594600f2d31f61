//! docs/instructions.md, run: every block fenced as `sh check` is pasted, in order, into one
//! `bash -euo pipefail` script, with the page's placeholder names swapped for local stand-ins
//! (the table at the top of the page): a ComfyUI-shaped git repository whose `main.py` is the
//! tests' fake ComfyUI, tagged `v0.3.64` and `v0.3.65`; two local package indexes of the test
//! wheels; a model server; fake-gcs-server. Then the bucket and the volume are looked at.
//! Blocks fenced `sh docker` (image builds) are left to docker/test.sh; plain `sh` blocks are
//! for the RunPod console.

mod common;

use common::comfy::{pseudo_random, ComfyFixture};
use common::gcs::{Emulator, Front, TestKey, BUCKET};
use common::http::{Behavior, TestServer};
use common::pyindex::{scrubbed_vars, IndexServer};
use common::{cannot_run, describe, s, NETWORK_ENV};
use std::fs;
use std::path::Path;
use std::process::Command;

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/instructions.md");
const FAKE_COMFY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_comfyui/main.py"
);
const WORKFLOW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/minimal.json");
const MODEL_ROUTE: &str = "/my-org/my-models/resolve/main/tiny.safetensors";

/// The page's blocks fenced with exactly `info` (e.g. "sh check"), in order.
fn blocks(page: &str, info: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        match (&mut current, line.trim_end()) {
            (None, l) if l.strip_prefix("```") == Some(info) => current = Some(String::new()),
            (Some(_), "```") => out.extend(current.take()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```{info} block");
    out
}

/// ComfyUI's stand-in: the fake ComfyUI as `main.py`, a requirement from the test index; tag
/// `v0.3.64`, then `v0.3.65` with one more requirement.
fn comfy_repo(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    ComfyFixture::git(dir, &["init", "-q", "-b", "master"]);
    common::write(
        &dir.join(".gitignore"),
        b"__pycache__/\n/output/\n/input/\n/models/\n/temp/\n/custom_nodes/\n/user/\nvenv/\n",
    );
    common::write(&dir.join("main.py"), &fs::read(FAKE_COMFY).unwrap());
    common::write(&dir.join("requirements.txt"), b"tinyfoo>=1.0\n");
    ComfyFixture::git(dir, &["add", "-A"]);
    ComfyFixture::git(dir, &["commit", "-q", "--no-verify", "-m", "v0.3.64"]);
    ComfyFixture::git(dir, &["tag", "v0.3.64"]);
    ComfyFixture::commit_file(dir, "requirements.txt", "tinyfoo>=1.0\ntinydep\n");
    ComfyFixture::git(dir, &["tag", "v0.3.65"]);
}

#[test]
fn the_instructions_run_as_written() {
    const TEST: &str = "the_instructions_run_as_written";
    let gcs_bin = match common::gcs::binary() {
        Ok(b) => b,
        Err(why) => return cannot_run(TEST, &why),
    };
    let page = fs::read_to_string(PAGE).unwrap();
    let checked = blocks(&page, "sh check");
    assert!(checked.len() >= 8, "only {} checked blocks", checked.len());

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (home, work, volume) = (
        dir.join("home"),
        dir.join("work"),
        dir.join("runpod-volume"),
    );
    for d in [&home, &work, &volume] {
        fs::create_dir_all(d).unwrap();
    }
    let repo = dir.join("git/ComfyUI");
    comfy_repo(&repo);
    fs::copy(WORKFLOW, work.join("workflow_api.json")).unwrap();
    let (main, extra) = (IndexServer::fixture(), IndexServer::fixture());
    let models = TestServer::start();
    models.add(MODEL_ROUTE, pseudo_random(61, 48 * 1024), Behavior::Normal);
    let gcs = Emulator::start(&gcs_bin);
    // The token server and IAM check the emulator lacks; the page's key file is a test key
    // whose token_uri is the front's.
    let grants = [
        "storage.objects.create",
        "storage.objects.get",
        "storage.objects.list",
    ];
    let front = Front::start(gcs.port, Some(&grants), 0, 0);
    let keys = home.join("keys");
    fs::create_dir_all(&keys).unwrap();
    let key = match TestKey::make(&keys, &format!("{}/token", front.url())) {
        Ok(k) => k,
        Err(why) => return cannot_run(TEST, &why),
    };
    fs::rename(&key.json, keys.join("comfy-sa.json")).unwrap();

    // The page's names, and what stands for them here.
    let swaps: Vec<(&str, String)> = vec![
        (
            "https://github.com/comfyanonymous/ComfyUI",
            s(&repo).to_string(),
        ),
        ("https://pypi.org/simple", main.index_url()),
        ("https://download.pytorch.org/whl/cu128", extra.index_url()),
        (
            "https://huggingface.co/my-org/my-models/resolve/main/tiny.safetensors",
            models.url(MODEL_ROUTE),
        ),
        ("my-comfy-bucket", BUCKET.to_string()),
        ("/runpod-volume", s(&volume).to_string()),
    ];
    let mut script = String::from("set -euo pipefail\n");
    for (i, b) in checked.iter().enumerate() {
        let mut b = b.clone();
        for (from, to) in &swaps {
            b = b.replace(from, to);
        }
        script.push_str(&format!("echo '=== block {}' >&2\n{b}", i + 1));
    }
    fs::write(dir.join("instructions.sh"), &script).unwrap();

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_comfystore"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    let inherited = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .filter(|k| k.starts_with("RUNPOD_") || k.starts_with("GCS_"));
    for k in scrubbed_vars()
        .into_iter()
        .chain(inherited)
        .chain(NETWORK_ENV.iter().map(|v| v.to_string()))
        .chain(common::gcs::GCS_ENV.iter().map(|v| v.to_string()))
        .chain(["COMFY_HOME", "COMFY_PORT", "RUST_LOG", "COMFYSTORE_DIR"].map(String::from))
    {
        cmd.env_remove(k);
    }
    cmd.arg(dir.join("instructions.sh"))
        .current_dir(&work)
        .env("HOME", &home)
        .env("PATH", path)
        .env("STORAGE_EMULATOR_HOST", front.url())
        .env("COMFYSTORE_BACKOFF", "10ms")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    let out = cmd.output().expect("run bash");
    assert!(
        out.status.success(),
        "docs/instructions.md, as run by {}: {}",
        dir.join("instructions.sh").display(),
        describe(&out)
    );

    // The bucket holds both versions' lockfiles (named by their BLAKE3) and the job's output,
    // which the answer names.
    let locks = gcs.list("comfystore/locks/");
    for tag in ["v1", "v2"] {
        let bytes = fs::read(work.join(format!("lockfiles/comfy-{tag}.lock.json"))).unwrap();
        let name = format!(
            "comfystore/locks/{}.lock.json",
            blake3::hash(&bytes).to_hex()
        );
        assert!(
            locks.contains(&name),
            "no lockfile {tag} in the bucket: {locks:?}"
        );
    }
    let answer = fs::read_to_string(work.join("answer.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let uri = v["images"][0]["gs_uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{v:#}"));
    let object = uri
        .strip_prefix(&format!("gs://{BUCKET}/"))
        .unwrap_or_else(|| panic!("{uri}"));
    assert!(object.starts_with("comfy/outputs/"), "{uri}");
    let outputs = gcs.list("comfy/outputs/");
    assert!(
        outputs.iter().any(|o| o == object),
        "{object} not in {outputs:?}"
    );
    // The volume's store got the version, whole.
    let fsck = common::json(&volume.join("comfystore"), &["fsck"]);
    assert_eq!(fsck["problems"], serde_json::json!([]), "{fsck:#}");
}
