//! A store used by another user than its owner: a non-root worker on a volume root owns, root
//! on a store a user owns, and a group-shared store both write (store-layout.md,
//! "Permissions"). Runs comfystore as a non-root uid with `setpriv`, so it needs root.

mod common;

use common::comfy::pseudo_random;
use common::http::{Behavior, TestServer};
use common::{cannot_run, code, describe, s, sha256_hex, NETWORK_ENV};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The worker's uid and gid: no account needs to exist for it.
const UID: u32 = 4242;

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl World {
    /// A folder every uid can search, with a tree to store.
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let w = World { _tmp: tmp, dir };
        for (home, uid) in [("home-root", 0), ("home-user", UID)] {
            let h = w.p(home);
            fs::create_dir_all(&h).unwrap();
            std::os::unix::fs::chown(&h, Some(uid), Some(uid)).unwrap();
        }
        let src = w.p("src");
        common::write(&src.join("a.txt"), b"hello\n");
        common::write(&src.join("sub/b.txt"), b"world\n");
        common::write(
            &src.join("models/m.safetensors"),
            &pseudo_random(7, 64 * 1024),
        );
        let mut perms = fs::Permissions::from_mode(0o755);
        for d in ["src", "src/sub", "src/models"] {
            fs::set_permissions(w.p(d), perms.clone()).unwrap();
        }
        perms.set_mode(0o644);
        for f in ["src/a.txt", "src/sub/b.txt", "src/models/m.safetensors"] {
            fs::set_permissions(w.p(f), perms.clone()).unwrap();
        }
        w
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `comfystore --store STORE ARGS` as root (`uid` 0) or as [`UID`] through setpriv, with a
    /// home of its own (where its per-user index goes) and info-level logs.
    fn run(&self, uid: u32, store: &Path, args: &[&str]) -> Output {
        let bin = env!("CARGO_BIN_EXE_comfystore");
        let mut cmd = if uid == 0 {
            Command::new(bin)
        } else {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(bin);
            c
        };
        let home = self.p(if uid == 0 { "home-root" } else { "home-user" });
        cmd.arg("--store")
            .arg(store)
            .args(args)
            .current_dir(&self.dir)
            .env("HOME", &home)
            .env("RUST_LOG", "info")
            .env("COMFYSTORE_BACKOFF", "10ms")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("COMFYSTORE_DIR")
            .env_remove("COMFYSTORE_INDEX")
            .env_remove("COMFYSTORE_NO_LOCKS");
        for k in NETWORK_ENV {
            cmd.env_remove(k);
        }
        cmd.output().expect("run comfystore")
    }

    fn ok(&self, uid: u32, store: &Path, args: &[&str]) -> String {
        let out = self.run(uid, store, args);
        assert_eq!(code(&out), 0, "uid {uid}: {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Store `src` as `uid`; the tree's id.
    fn add_src(&self, uid: u32, store: &Path) -> String {
        let out = self.ok(uid, store, &["add", s(&self.p("src")), "--root", "src"]);
        out.split('\t').next().unwrap().trim().to_string()
    }

    /// A store root owns, holding `src`, that others may read (0755): its path and the tree.
    fn roots_readable_store(&self) -> (PathBuf, String) {
        let store = self.p("store");
        let tree = self.add_src(0, &store);
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
        (store, tree)
    }

    /// A run that must fail for lack of a permission: exit 77 and `message` on stderr.
    fn denied(&self, uid: u32, store: &Path, args: &[&str], message: &str) {
        let out = self.run(uid, store, args);
        assert_eq!(code(&out), 77, "uid {uid}: {args:?}: {}", describe(&out));
        assert!(
            common::stderr(&out).contains(message),
            "uid {uid}: {args:?}: stderr lacks {message:?}: {}",
            describe(&out)
        );
    }
}

/// The test's world, or `None` (said by `cannot_run`) where users cannot be switched.
fn world(test: &str) -> Option<World> {
    match can_switch_users() {
        Ok(()) => Some(World::new()),
        Err(why) => {
            cannot_run(test, &why);
            None
        }
    }
}

/// What a worker is told by a store root owns and it may only read.
fn not_writable(store: &Path) -> String {
    format!(
        "store {} is not writable by uid {UID} (owner root, group 0, mode 0755)",
        store.display()
    )
}

/// Whether we can run commands as another uid (root, setpriv).
fn can_switch_users() -> Result<(), String> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
            "true",
        ])
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "setpriv cannot switch to uid {UID} (root needed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Every path in the store with its owner, group and mode (and size for files).
fn snapshot(store: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, u64)> {
    walkdir::WalkDir::new(store)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let size = if m.is_file() { m.len() } else { 0 };
            (
                e.path().to_path_buf(),
                (m.uid(), m.gid(), m.mode() & 0o7777, size),
            )
        })
        .collect()
}

/// The files of DEST: their bytes, and the uid owning them.
fn assert_placed(w: &World, dest: &Path, uid: u32) {
    for f in ["a.txt", "sub/b.txt", "models/m.safetensors"] {
        let placed = dest.join(f);
        assert_eq!(
            fs::read(&placed).unwrap(),
            fs::read(w.p("src").join(f)).unwrap(),
            "{f}"
        );
        assert_eq!(placed.metadata().unwrap().uid(), uid, "{f} owner");
    }
}

#[test]
fn a_worker_reads_a_store_root_owns_and_is_told_what_it_cannot_write() {
    let Some(w) = world("a_worker_reads_a_store_root_owns_and_is_told_what_it_cannot_write") else {
        return;
    };
    let (store, tree) = w.roots_readable_store();
    let before = snapshot(&store);

    // A version fully in the store materializes; the kernel refuses hardlinks to root's
    // files (fs.protected_hardlinks), so placing falls back to copies, said once.
    let dest = w.p("dest");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::chown(&dest, Some(UID), Some(UID)).unwrap();
    let d = dest.join("v1");
    let out = w.run(
        UID,
        &store,
        &["materialize", &tree, s(&d), "--link", "hardlink"],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_placed(&w, &d, UID);
    let err = common::stderr(&out);
    let fallbacks: Vec<&str> = err.lines().filter(|l| l.contains("falling back")).collect();
    assert_eq!(fallbacks.len(), 1, "{err}");
    assert!(fallbacks[0].contains("fs.protected_hardlinks"), "{err}");
    // Reading commands work too.
    w.ok(UID, &store, &["ls", &tree]);

    // Whatever writes fails at once, naming the store, the user, owner and mode; exit 77.
    let said = not_writable(&store);
    w.denied(UID, &store, &["add", s(&w.p("src/sub"))], &said);
    w.denied(UID, &store, &["gc"], &said);
    w.denied(UID, &store, &["root", "rm", "src"], &said);
    assert_eq!(snapshot(&store), before, "the worker changed root's store");
}

#[test]
fn a_worker_fetching_into_a_store_it_cannot_write_fails_before_downloading() {
    let Some(w) = world("a_worker_fetching_into_a_store_it_cannot_write_fails_before_downloading")
    else {
        return;
    };
    let (store, tree) = w.roots_readable_store();
    let srv = TestServer::start();
    let model = pseudo_random(9, 4096);
    srv.add("/m.safetensors", model.clone(), Behavior::Normal);
    let lock = w.p("v1.lock.json");
    let v = json!({
        "schema": "comfystore.lock/1",
        "tag": "v1",
        "comfyui": {"tree": tree},
        "models": [{
            "path": "models/checkpoints/new.safetensors",
            "size": model.len(),
            "sha256": sha256_hex(&model),
            "sources": [srv.url("/m.safetensors")],
        }],
    });
    fs::write(&lock, serde_json::to_vec(&v).unwrap()).unwrap();
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).unwrap();
    let said = not_writable(&store);
    w.denied(UID, &store, &["fetch", s(&lock)], &said);
    assert!(srv.requests().is_empty(), "downloaded before failing");
}

#[test]
fn a_private_store_is_named_as_unreadable() {
    let Some(w) = world("a_private_store_is_named_as_unreadable") else {
        return;
    };
    let store = w.p("store");
    let tree = w.add_src(0, &store);
    // A new store is created 0700.
    assert_eq!(store.metadata().unwrap().mode() & 0o7777, 0o700);
    let said = format!(
        "store {} is not readable by uid {UID} (owner root, group 0, mode 0700)",
        store.display()
    );
    w.denied(UID, &store, &["ls", &tree], &said);
}

#[test]
fn root_reads_a_users_store_and_writes_nothing_into_it() {
    let Some(w) = world("root_reads_a_users_store_and_writes_nothing_into_it") else {
        return;
    };
    // The user's own store, in a folder of theirs.
    let store = w.p("store");
    fs::create_dir(&store).unwrap();
    std::os::unix::fs::chown(&store, Some(UID), Some(UID)).unwrap();
    let tree = w.add_src(UID, &store);
    let before = snapshot(&store);
    let d = w.p("dest-root");
    w.ok(0, &store, &["materialize", &tree, s(&d)]);
    assert_placed(&w, &d, 0);
    let said = format!(
        "store {} belongs to uid {UID}, not to uid 0 (owner uid {UID}, group {UID}, mode 0700)",
        store.display()
    );
    w.denied(0, &store, &["add", s(&w.p("src/sub"))], &said);
    w.denied(0, &store, &["gc"], &said);
    assert_eq!(snapshot(&store), before, "root changed the user's store");
}

#[test]
fn a_group_shared_store_is_written_by_root_and_a_worker() {
    let Some(w) = world("a_group_shared_store_is_written_by_root_and_a_worker") else {
        return;
    };
    // The operator makes the volume's folder group-shared before first use.
    let store = w.p("store");
    fs::create_dir(&store).unwrap();
    std::os::unix::fs::chown(&store, Some(0), Some(UID)).unwrap();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o2775)).unwrap();
    let tree = w.add_src(0, &store);
    // The worker adds, materializes root's tree, collects garbage; root then does too.
    common::write(&w.p("more/c.txt"), b"more\n");
    fs::set_permissions(w.p("more"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(w.p("more/c.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    w.ok(UID, &store, &["add", s(&w.p("more")), "--root", "more"]);
    let d = w.p("dest-user");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(UID), Some(UID)).unwrap();
    w.ok(UID, &store, &["materialize", &tree, s(&d.join("v1"))]);
    assert_placed(&w, &d.join("v1"), UID);
    w.ok(UID, &store, &["root", "rm", "src"]);
    w.ok(UID, &store, &["gc", "--grace", "0"]);
    w.ok(0, &store, &["add", s(&w.p("src")), "--root", "src"]);
    w.ok(0, &store, &["gc", "--grace", "0"]);
    for uid in [0, UID] {
        let out = w.ok(uid, &store, &["--json", "fsck"]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["problems"], json!([]), "fsck as uid {uid}");
    }
    // Every folder stays the group's and group-writable, whoever made it.
    for (path, (_, gid, mode, _)) in snapshot(&store) {
        if path.is_dir() && !path.starts_with(store.join("tmp")) {
            assert_eq!(gid, UID, "{} group", path.display());
            assert_eq!(mode & 0o2070, 0o2070, "{} mode {mode:o}", path.display());
        }
    }
}

/// A Python another uid can run (`/root/.pyenv` is not theirs to reach), or why there is none.
fn python_for_others() -> Result<&'static str, String> {
    const PY: &str = "/usr/bin/python3";
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={UID}"),
            &format!("--regid={UID}"),
            "--clear-groups",
        ])
        .args([PY, "-c", "import venv"])
        .output()
        .map_err(|e| format!("setpriv: {e}"))?;
    if out.status.success() {
        Ok(PY)
    } else {
        Err(format!(
            "{PY} cannot be run by uid {UID}: {}",
            describe(&out)
        ))
    }
}

#[test]
fn a_worker_runs_a_job_on_a_store_it_may_only_read() {
    let Some(w) = world("a_worker_runs_a_job_on_a_store_it_may_only_read") else {
        return;
    };
    let python = match python_for_others() {
        Ok(p) => p,
        Err(why) => return cannot_run("a_worker_runs_a_job_on_a_store_it_may_only_read", &why),
    };
    let (store, _) = w.roots_readable_store();
    let before = snapshot(&store);
    // A version folder of the worker's: the fake ComfyUI and a venv, as run_job.rs has it.
    let dest = w.p("dest");
    fs::create_dir(&dest).unwrap();
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fake_comfyui/main.py"
        ),
        dest.join("main.py"),
    )
    .unwrap();
    let venv = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(dest.join("venv"))
        .output()
        .unwrap();
    assert!(venv.status.success(), "venv: {}", describe(&venv));
    for e in walkdir::WalkDir::new(&dest) {
        let e = e.unwrap();
        std::os::unix::fs::lchown(e.path(), Some(UID), Some(UID)).unwrap();
    }
    let workflow: serde_json::Value = serde_json::from_slice(
        &fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/workflows/minimal.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let job = w.p("job.json");
    fs::write(&job, json!({"input": {"workflow": workflow}}).to_string()).unwrap();
    fs::set_permissions(&job, fs::Permissions::from_mode(0o644)).unwrap();
    let port = common::net::free_port().to_string();
    let out = w.run(
        UID,
        &store,
        &[
            "--json",
            "run-job",
            s(&job),
            "--dest",
            s(&dest),
            "--comfy-port",
            &port,
            "--comfy-arg=--cpu",
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let answer = common::parse(&out);
    assert_eq!(answer["images"][0]["type"], "base64", "{answer:#}");
    assert!(
        !common::stderr(&out).contains("not stored"),
        "{}",
        describe(&out)
    );
    assert_eq!(snapshot(&store), before, "the worker changed root's store");
}
