//! A store shared by several workers, as on a RunPod network volume: processes each in its own
//! mount namespace (`unshare --mount`), each seeing one shared folder bind-mounted at a path of
//! its own (as different hosts would), all materializing one version whose model and git
//! trees the store lacks, at once, from a local HTTP server that counts requests.
//!
//! With working locks, the model is downloaded once and each tree is rebuilt from git once;
//! with locks off (`COMFYSTORE_NO_LOCKS=1`, as where locks do not hold across hosts), at most
//! once per process. Either way every process succeeds, `fsck` is clean and every DEST
//! verifies.

mod common;

use common::comfy::{pseudo_random, ComfyFixture};
use common::http::{Behavior, TestServer};
use common::{cannot_run, describe, s, sha256_hex, NETWORK_ENV};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WORKERS: usize = 4;
const MODEL: &str = "/files/shared.safetensors";
const MODEL_LEN: usize = 256 * 1024;
/// The tail every GET of the model trickles, one byte per 50 ms: a download lasts long enough
/// for the other workers to reach it while it runs (what makes a missing lock show).
const TAIL: usize = 40;

/// The shared folder, the hosts' private folders, the repos and the lock.
struct Volume {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    shared: PathBuf,
    lock: PathBuf,
    model: Vec<u8>,
}

impl Volume {
    fn new(srv: &TestServer) -> Volume {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let shared = dir.join("volume");
        fs::create_dir_all(&shared).unwrap();
        let repo = |name: &str, file: &str, body: &str| {
            let r = dir.join("git").join(name);
            fs::create_dir_all(&r).unwrap();
            ComfyFixture::git(&r, &["init", "-q", "-b", "main"]);
            ComfyFixture::commit_file(&r, file, body)
        };
        let comfy_commit = repo("ComfyUI", "main.py", "print('shared volume')\n");
        let node_commit = repo("NodeA", "__init__.py", "NODE_CLASS_MAPPINGS = {}\n");
        let model = pseudo_random(18, MODEL_LEN);
        srv.add(
            MODEL,
            model.clone(),
            Behavior::Trickle {
                first: MODEL_LEN - TAIL,
                delay_ms: 50,
                times: WORKERS,
            },
        );
        let lock = dir.join("v1.lock.json");
        let v = json!({
            "schema": "comfystore.lock/1",
            "tag": "v1",
            "comfyui": {"repo": s(&dir.join("git/ComfyUI")), "commit": comfy_commit},
            "custom_nodes": [
                {"name": "NodeA", "repo": s(&dir.join("git/NodeA")), "commit": node_commit}
            ],
            "models": [{
                "path": "models/checkpoints/shared.safetensors",
                "size": MODEL_LEN,
                "sha256": sha256_hex(&model),
                "sources": [srv.url(MODEL)],
            }],
        });
        fs::write(&lock, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        Volume {
            _tmp: tmp,
            dir,
            shared,
            lock,
            model,
        }
    }

    /// Host `i`'s folder: where it mounts the volume, keeps its index and its DEST.
    fn host(&self, i: usize) -> PathBuf {
        self.dir.join(format!("host{i}"))
    }

    /// `comfystore --store <mount>/comfystore ARGS` in a mount namespace of its own where the
    /// shared folder is bind-mounted at host `i`'s mount point; each host has its own index on
    /// its own disk, as comfystore puts it for a store on a network filesystem.
    fn command(&self, i: usize, args: &[&str], no_locks: bool) -> Command {
        let host = self.host(i);
        let mnt = host.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(&self.shared)
            .arg(&mnt)
            .arg(env!("CARGO_BIN_EXE_comfystore"))
            .arg("--store")
            .arg(mnt.join("comfystore"))
            .args(args)
            .env("COMFYSTORE_INDEX", host.join("index.redb"))
            .env("COMFYSTORE_BACKOFF", "10ms")
            .env("HOME", &host)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("COMFYSTORE_DIR")
            .env_remove("COMFYSTORE_NO_LOCKS")
            .env_remove("RUST_LOG");
        for k in NETWORK_ENV {
            cmd.env_remove(k);
        }
        if no_locks {
            cmd.env("COMFYSTORE_NO_LOCKS", "1");
        }
        cmd
    }

    fn dest(&self, i: usize) -> PathBuf {
        self.host(i).join("ComfyUI")
    }

    /// Every worker materializes the lock into its own DEST at once; their JSON reports.
    fn materialize_all(&self, no_locks: bool) -> Vec<Value> {
        let children: Vec<_> = (0..WORKERS)
            .map(|i| {
                let dest = self.dest(i);
                let args = ["--json", "materialize", s(&self.lock), s(&dest)];
                self.command(i, &args, no_locks)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn unshare")
            })
            .collect();
        children
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let out = c.wait_with_output().unwrap();
                assert!(out.status.success(), "worker {i}: {}", describe(&out));
                serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("worker {i}: JSON ({e}): {}", describe(&out)))
            })
            .collect()
    }

    fn run(&self, i: usize, args: &[&str]) -> Output {
        self.command(i, args, false).output().unwrap()
    }

    /// fsck (from host 0) finds no problem; every DEST verifies from its own host and holds
    /// the model's bytes.
    fn check_store_and_dests(&self) {
        let out = self.run(0, &["--json", "fsck"]);
        assert!(out.status.success(), "fsck: {}", describe(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["problems"], json!([]), "fsck: {report:#}");
        for i in 0..WORKERS {
            let out = self.run(i, &["verify", s(&self.lock), s(&self.dest(i)), "--full"]);
            assert!(out.status.success(), "verify host {i}: {}", describe(&out));
            let placed = self.dest(i).join("models/checkpoints/shared.safetensors");
            // Placed as a link into the store as this host sees it: read it through the volume.
            let target = fs::read_link(&placed).unwrap_or_else(|e| panic!("host {i}: {e}"));
            let mnt = self.host(i).join("mnt");
            let rel = target.strip_prefix(&mnt).unwrap_or_else(|_| {
                panic!("host {i}: the model links to {target:?}, not into the volume at {mnt:?}")
            });
            assert!(
                fs::read(self.shared.join(rel)).unwrap() == self.model,
                "host {i}: model"
            );
            assert!(self
                .dest(i)
                .join("custom_nodes/NodeA/__init__.py")
                .is_file());
        }
    }
}

/// Whether this machine lets us make mount namespaces and bind mounts (root, util-linux).
fn namespaces_work() -> Result<(), String> {
    let probe = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "mount", "--bind"])
        .arg(probe.path())
        .arg(probe.path())
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "unshare --mount + mount --bind failed (root and util-linux needed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The GET requests the model's source received.
fn model_gets(srv: &TestServer) -> usize {
    srv.requests_for(MODEL)
        .iter()
        .filter(|r| r.method == "GET")
        .count()
}

/// How many workers' reports say they rebuilt `label` from git.
fn rebuilt(reports: &[Value], label: &str) -> usize {
    reports
        .iter()
        .filter(|r| {
            r["fetched"]["trees"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["label"] == label))
        })
        .count()
}

#[test]
fn workers_on_one_volume_download_a_model_once_and_corrupt_nothing() {
    const TEST: &str = "workers_on_one_volume_download_a_model_once_and_corrupt_nothing";
    if let Err(why) = namespaces_work() {
        return cannot_run(TEST, &why);
    }
    let srv = TestServer::start();
    let v = Volume::new(&srv);
    let reports = v.materialize_all(false);
    assert_eq!(
        model_gets(&srv),
        1,
        "the model was downloaded more than once"
    );
    for label in ["comfyui", "custom_nodes/NodeA"] {
        assert_eq!(rebuilt(&reports, label), 1, "{label}: {}", json!(reports));
    }
    v.check_store_and_dests();
    // Nothing of the named locks is left behind.
    let left = fs::read_dir(v.shared.join("comfystore/locks/named"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "named lock files left in the store");
}

#[test]
fn workers_without_locks_may_download_twice_but_corrupt_nothing() {
    const TEST: &str = "workers_without_locks_may_download_twice_but_corrupt_nothing";
    if let Err(why) = namespaces_work() {
        return cannot_run(TEST, &why);
    }
    let srv = TestServer::start();
    let v = Volume::new(&srv);
    let reports = v.materialize_all(true);
    let gets = model_gets(&srv);
    eprintln!("without locks: {gets} download(s) of the model by {WORKERS} workers");
    assert!((1..=WORKERS).contains(&gets), "{gets} downloads");
    for label in ["comfyui", "custom_nodes/NodeA"] {
        let n = rebuilt(&reports, label);
        eprintln!("without locks: {label} rebuilt from git by {n} worker(s)");
        assert!((1..=WORKERS).contains(&n), "{label} rebuilt {n} times");
    }
    v.check_store_and_dests();
    // No lock file at all was made: the mode takes none.
    assert!(!v.shared.join("comfystore/locks/named").exists());
    assert!(!Path::new(&v.shared.join("comfystore/locks/writers"))
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
}
