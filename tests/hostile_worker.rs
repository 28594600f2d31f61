//! Hostile input around fetching: a lock's git repo that is a git remote helper (`fd::`,
//! `ext::`), a git child that must die with comfystore, tokens that must not go over plain
//! HTTP, and `file://` sources that must not read any local file.

mod common;

use common::http::{Behavior, TestServer};
use common::{describe, NETWORK_ENV};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A lock with nothing but a ComfyUI from `repo` at a made-up commit.
fn git_lock(repo: &str) -> Value {
    json!({
        "schema": "comfystore.lock/1",
        "tag": "hostile",
        "comfyui": {"repo": repo, "commit": "a".repeat(40)},
        "custom_nodes": [],
        "python": {
            "version": "3.11.7", "implementation": "cpython", "abi": "cp311",
            "platform": "linux_x86_64", "libc": "glibc 2.36", "packages": []
        },
        "models": []
    })
}

fn write_lock(dir: &Path, lock: &Value) -> PathBuf {
    let path = dir.join("hostile.lock.json");
    fs::write(&path, serde_json::to_vec_pretty(lock).unwrap()).unwrap();
    path
}

/// `comfystore --store STORE ARGS`, without the machine's tokens and proxies, started.
fn spawn(store: &Path, args: &[&str], set: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfystore"));
    cmd.arg("--store")
        .arg(store)
        .args(args)
        .env_remove("COMFYSTORE_DIR")
        .env_remove("COMFYSTORE_INDEX")
        .env("COMFYSTORE_NO_PIN_WHEELS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in NETWORK_ENV {
        cmd.env_remove(k);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    cmd.spawn().expect("run comfystore")
}

/// [`spawn`] and wait at most `limit`: a run that hangs is killed and fails the test.
fn run_limited(store: &Path, args: &[&str], set: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = spawn(store, args, set);
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("comfystore {args:?} hung for {limit:?}\n{}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// PIDs of the processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn lock_repos_that_are_git_remote_helpers_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let marker = dir.join("pwned");
    let ext = format!("ext::sh -c touch% {}", marker.display());
    for repo in [
        "fd::3",
        ext.as_str(),
        "http::https://example.com/a",
        "ftp://example.com/a.git",
    ] {
        for node in [false, true] {
            let mut lock = git_lock("https://example.com/comfyui");
            let field = if node {
                lock["comfyui"] = json!({"tree": format!("b3:{}", "0".repeat(64))});
                lock["custom_nodes"] =
                    json!([{"name": "evil", "repo": repo, "commit": "b".repeat(40)}]);
                "custom_nodes[0].repo"
            } else {
                lock["comfyui"]["repo"] = json!(repo);
                "comfyui.repo"
            };
            let path = write_lock(dir, &lock);
            let out = run_limited(
                &dir.join("store"),
                &["fetch", path.to_str().unwrap()],
                &[],
                Duration::from_secs(30),
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{repo}: accepted\n{}",
                describe(&out)
            );
            assert!(
                err.contains(field),
                "{repo}: the error does not name {field}:\n{err}"
            );
            assert!(!marker.exists(), "{repo}: ext:: ran a command");
        }
    }
}

/// A git fetch that stalls (a server sending a byte every 5 s) is a child of comfystore; when
/// comfystore is killed with SIGKILL, git and its helpers go too.
#[test]
fn git_children_die_when_comfystore_is_killed() {
    if !Path::new("/proc/self/cmdline").exists() {
        common::cannot_run(
            "git_children_die_when_comfystore_is_killed",
            "no /proc to list processes",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = TestServer::start();
    let stall = Behavior::Trickle {
        first: 0,
        delay_ms: 5000,
        times: 1000,
    };
    server.add("/stall.git/info/refs", vec![b'0'; 4096], stall);
    let url = server.url("/stall.git");
    let path = write_lock(dir, &git_lock(&url));
    let mut child = spawn(&dir.join("store"), &["fetch", path.to_str().unwrap()], &[]);
    let needle = format!("127.0.0.1:{}", server.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.requests_for("/stall.git/info/refs").is_empty() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("git never asked the server\n{}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !processes_with(&needle).is_empty(),
        "no git process names {needle} while the fetch stalls: the test proves nothing"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(&needle);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for (pid, _) in &left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("git outlived a killed comfystore: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A lock with one model of `data`, as the lock says (`size`, `sha256`, `blake3`), from `source`.
fn model_lock(data: &[u8], size: u64, source: &str) -> Value {
    let mut lock = git_lock("https://example.invalid/comfyui");
    lock["models"] = json!([{
        "path": "models/checkpoints/m.safetensors",
        "size": size,
        "sha256": common::sha256_hex(data),
        "blake3": blake3::hash(data).to_hex().to_string(),
        "sources": [source],
    }]);
    lock
}

/// A lock's `file://` source is read only beneath `--mirror` or `--allow-file` folders
/// (COMFYSTORE_ALLOW_FILE too), with symlinks resolved: `file:///etc/shadow` in someone else's
/// lock must not be read, nor its size told.
#[test]
fn file_sources_outside_allowed_folders_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let private = dir.join("private");
    let allowed = dir.join("allowed");
    fs::create_dir_all(&private).unwrap();
    fs::create_dir_all(&allowed).unwrap();
    let data: Vec<u8> = (0..12_345u32).map(|i| (i * 7 % 251) as u8).collect();
    let secret = private.join("secret.bin");
    fs::write(&secret, &data).unwrap();
    std::os::unix::fs::symlink(&secret, allowed.join("link.bin")).unwrap();
    let url = |p: &Path| format!("file://{}", p.display());
    let fetch = |store: &str, lock: &Value, extra: &[&str], set: &[(&str, &str)]| {
        let path = write_lock(&dir, lock);
        let mut args = vec!["fetch", path.to_str().unwrap(), "--only", "models"];
        args.extend_from_slice(extra);
        run_limited(&dir.join(store), &args, set, Duration::from_secs(60))
    };
    // Refused: outside any allowed folder (the lock's size is wrong: an old comfystore told the
    // real one), /etc/shadow, and a symlink in an allowed folder to a file outside.
    let allow = ["--allow-file", allowed.to_str().unwrap()];
    for (source, extra) in [
        (url(&secret), &[][..]),
        ("file:///etc/shadow".to_string(), &[][..]),
        (url(&allowed.join("link.bin")), &allow[..]),
        (
            format!("file://{}/../private/secret.bin", allowed.display()),
            &allow[..],
        ),
    ] {
        let out = fetch("s1", &model_lock(&data, 100, &source), extra, &[]);
        let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
        assert!(!out.status.success(), "{source}: read\n{}", describe(&out));
        assert!(
            text.contains("outside the folders"),
            "{source}: not refused as outside\n{text}"
        );
        assert!(
            !text.contains("12345") && !text.contains("12 345"),
            "{source}: size told\n{text}"
        );
    }
    // Allowed: the folder named with --allow-file, or COMFYSTORE_ALLOW_FILE.
    let lock = model_lock(&data, data.len() as u64, &url(&secret));
    let out = fetch(
        "s2",
        &lock,
        &["--allow-file", private.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = fetch(
        "s3",
        &lock,
        &[],
        &[("COMFYSTORE_ALLOW_FILE", private.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", describe(&out));
    // And a file:// mirror URL given on the command line (files named by their sha256).
    fs::write(private.join(common::sha256_hex(&data)), &data).unwrap();
    let lock = model_lock(&data, data.len() as u64, "https://example.invalid/m");
    let mirror = url(&private);
    let out = fetch(
        "s4",
        &lock,
        &["--mirror-url", &mirror, "--retries", "0"],
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
}

/// A git fetch from a server that stalls ends at `COMFYSTORE_GIT_TIMEOUT`, with an error saying
/// so, and leaves no git behind.
#[test]
fn a_stalled_git_fetch_ends_at_the_git_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = TestServer::start();
    let stall = Behavior::Trickle {
        first: 0,
        delay_ms: 5000,
        times: 1000,
    };
    server.add("/slow.git/info/refs", vec![b'0'; 4096], stall);
    let path = write_lock(dir, &git_lock(&server.url("/slow.git")));
    let t0 = Instant::now();
    let out = run_limited(
        &dir.join("store"),
        &["fetch", path.to_str().unwrap()],
        &[("COMFYSTORE_GIT_TIMEOUT", "2s")],
        Duration::from_secs(40),
    );
    let err = common::stderr(&out);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(err.contains("did not finish within"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let needle = format!("127.0.0.1:{}", server.port);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        processes_with(&needle).is_empty(),
        "git left behind: {:?}",
        processes_with(&needle)
    );
}
