//! Functional tests of the store through its CLI and its library API, on real directories.

use comfystore::store::{AddOptions, GcOptions, Root, Store, StoreOptions};
mod common;

use common::{json, ok, run, write};
use serde_json::Value;
use sha2::Digest;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn add_id(store: &Path, path: &Path) -> String {
    let out = ok(store, &["add", path.to_str().unwrap()]);
    let (id, p) = out.trim_end().split_once('\t').expect("id<TAB>path");
    assert_eq!(p, path.to_str().unwrap());
    id.to_string()
}

/// A small ComfyUI-shaped tree: code, an executable, a symlink, an empty dir, an empty file.
fn sample_tree(dir: &Path) {
    write(&dir.join("main.py"), b"print('comfy')\n");
    write(&dir.join("comfy/model.py"), &vec![7u8; 100_000]);
    write(&dir.join("comfy/__init__.py"), b"");
    write(&dir.join("venv/bin/tool"), b"#!/bin/sh\necho tool\n");
    fs::set_permissions(dir.join("venv/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("/usr/bin/python3", dir.join("venv/bin/python")).unwrap();
    symlink("../main.py", dir.join("comfy/main-link")).unwrap();
    fs::create_dir_all(dir.join("output")).unwrap();
}

fn object_files(store: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn shared_files_are_stored_once() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let shared = vec![42u8; 300_000];
    write(&t.path().join("a/shared.bin"), &shared);
    write(&t.path().join("a/only-a.txt"), b"a");
    write(&t.path().join("b/deep/shared-copy.bin"), &shared);
    write(&t.path().join("b/only-b.txt"), b"b");
    let a = add_id(&store, &t.path().join("a"));
    let b = add_id(&store, &t.path().join("b"));
    assert_ne!(a, b);
    // shared.bin + only-a + only-b: three objects, the 300 kB stored once.
    assert_eq!(object_files(&store).len(), 3);
    let stats = json(&store, &["stats"]);
    assert_eq!(stats["objects"], 3);
    assert_eq!(stats["stored_bytes"], 300_002);
    assert_eq!(stats["logical_bytes_added"], 600_002);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.99);
}

#[test]
fn tree_id_ignores_mtimes_and_creation_order_but_not_modes_or_names() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = t.path().join("a");
    sample_tree(&a);
    let id_a = add_id(&store, &a);

    // Same content created in the opposite order, with other mtimes.
    let b = t.path().join("b");
    fs::create_dir_all(b.join("output")).unwrap();
    fs::create_dir_all(b.join("venv/bin")).unwrap();
    symlink("../main.py", {
        fs::create_dir_all(b.join("comfy")).unwrap();
        b.join("comfy/main-link")
    })
    .unwrap();
    symlink("/usr/bin/python3", b.join("venv/bin/python")).unwrap();
    write(&b.join("venv/bin/tool"), b"#!/bin/sh\necho tool\n");
    fs::set_permissions(b.join("venv/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&b.join("comfy/__init__.py"), b"");
    write(&b.join("comfy/model.py"), &vec![7u8; 100_000]);
    write(&b.join("main.py"), b"print('comfy')\n");
    let old = SystemTime::now() - Duration::from_secs(86_400 * 400);
    fs::File::options()
        .write(true)
        .open(b.join("main.py"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(add_id(&store, &b), id_a, "same content, names and modes");

    // Touching every file changes nothing either.
    for e in walkdir::WalkDir::new(&a).into_iter().filter_map(Result::ok) {
        if e.file_type().is_file() {
            fs::File::options()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    assert_eq!(add_id(&store, &a), id_a);

    // A mode change, a rename and a new empty dir each change the id.
    fs::set_permissions(a.join("main.py"), fs::Permissions::from_mode(0o755)).unwrap();
    let id_mode = add_id(&store, &a);
    assert_ne!(id_mode, id_a);
    fs::set_permissions(a.join("main.py"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(a.join("main.py"), a.join("main2.py")).unwrap();
    assert_ne!(add_id(&store, &a), id_a);
    fs::rename(a.join("main2.py"), a.join("main.py")).unwrap();
    assert_eq!(add_id(&store, &a), id_a);
    fs::create_dir(a.join("input")).unwrap();
    assert_ne!(add_id(&store, &a), id_a);
}

#[test]
fn executables_symlinks_and_empty_dirs_round_trip_through_ls() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = t.path().join("a");
    sample_tree(&a);
    let id = add_id(&store, &a);
    let rows = json(&store, &["ls", &id]);
    let rows = rows.as_array().unwrap();
    let find = |p: &str| {
        rows.iter()
            .find(|r| r["path"] == p)
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    assert_eq!(find("venv/bin/tool")["kind"], "exec");
    assert_eq!(find("main.py")["kind"], "file");
    assert_eq!(find("main.py")["size"], 15);
    assert_eq!(find("venv/bin/python")["kind"], "symlink");
    assert_eq!(find("venv/bin/python")["target"], "/usr/bin/python3");
    assert_eq!(find("comfy/main-link")["target"], "../main.py");
    assert_eq!(find("output")["kind"], "dir");
    assert_eq!(find("comfy/__init__.py")["size"], 0);
    let paths: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "canonical order");
    assert_eq!(rows.len(), 7);

    // The executable is kept as a 0555 `-exec` object, the rest as 0444.
    let tool_id = find("venv/bin/tool")["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("b3:")
        .to_string();
    let exec_obj = store
        .join("objects/b3")
        .join(&tool_id[..2])
        .join(format!("{}-exec", &tool_id[2..]));
    assert_eq!(
        fs::metadata(&exec_obj).unwrap().permissions().mode() & 0o777,
        0o555
    );
    for f in object_files(&store) {
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert!(
            mode == 0o444 || mode == 0o555,
            "{} has mode {mode:o}",
            f.display()
        );
    }
    // cat gives the bytes back; a text ls shows kinds too.
    assert_eq!(
        ok(&store, &["cat", find("main.py")["id"].as_str().unwrap()]),
        "print('comfy')\n"
    );
    let text = ok(&store, &["ls", &id]);
    assert!(
        text.contains("symlink\t-\t-\tvenv/bin/python -> /usr/bin/python3"),
        "{text}"
    );
    assert!(text.contains("dir\t-\t-\toutput"), "{text}");
}

#[test]
fn single_files_get_sha256_and_can_be_read_by_it() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let f = t.path().join("model.safetensors");
    write(&f, &data);
    let report = json(&store, &["add", f.to_str().unwrap()]);
    let report = &report[0]["report"];
    let sha = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
    assert_eq!(report["sha256"], sha.as_str());
    assert_eq!(
        report["id"],
        format!("b3:{}", blake3::hash(&data).to_hex()).as_str()
    );
    let out = run(&store, &["cat", &sha]);
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
}

#[test]
fn unchanged_files_are_not_rehashed() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = t.path().join("a");
    sample_tree(&a);
    write(&a.join("big.bin"), &vec![1u8; 6_000_000]);
    // Files changed within the last 2 s are never cached (racily-clean rule).
    std::thread::sleep(Duration::from_millis(2100));
    let first = json(&store, &["add", a.to_str().unwrap()]);
    assert_eq!(first[0]["report"]["hashed_files"], 5);
    let again = json(&store, &["add", a.to_str().unwrap()]);
    assert_eq!(again[0]["report"]["hashed_files"], 0, "{again}");
    assert_eq!(again[0]["report"]["cached_files"], 5);
    assert_eq!(again[0]["report"]["id"], first[0]["report"]["id"]);

    // A changed file is rehashed, even with its mtime put back.
    let main = a.join("main.py");
    let mtime = fs::metadata(&main).unwrap().modified().unwrap();
    fs::write(&main, b"print('COMFY')\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&main)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let changed = json(&store, &["add", a.to_str().unwrap()]);
    assert_eq!(changed[0]["report"]["hashed_files"], 1);
    assert_ne!(changed[0]["report"]["id"], first[0]["report"]["id"]);

    // A deleted object is noticed: the file is hashed and stored again.
    let store_obj = object_files(&store)
        .into_iter()
        .find(|p| fs::metadata(p).unwrap().len() == 6_000_000)
        .unwrap();
    fs::remove_file(&store_obj).unwrap();
    let restored = json(&store, &["add", a.to_str().unwrap()]);
    assert_eq!(restored[0]["report"]["new_objects"], 1);
    assert!(store_obj.exists());
}

#[test]
fn gc_keeps_rooted_content_and_frees_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    write(&t.path().join("keep/k.txt"), b"keep me");
    write(&t.path().join("keep/shared.txt"), b"shared");
    write(&t.path().join("drop/d.txt"), b"drop me");
    write(&t.path().join("drop/shared.txt"), b"shared");
    let keep = add_id(&store, &t.path().join("keep"));
    let drop = add_id(&store, &t.path().join("drop"));
    ok(&store, &["root", "add", "versions/keep", &keep]);

    // The default grace period keeps everything young.
    let dry = json(&store, &["gc"]);
    assert_eq!(dry["deleted_objects"], 0);
    assert!(dry["kept_young"].as_u64().unwrap() >= 2);

    let preview = json(&store, &["gc", "--grace", "0", "--dry-run"]);
    assert_eq!(preview["deleted_objects"], 1);
    assert_eq!(preview["deleted_trees"], 1);
    assert_eq!(object_files(&store).len(), 3, "dry run deletes nothing");

    let report = json(&store, &["gc", "--grace", "0"]);
    assert_eq!(report["deleted_objects"], 1, "only d.txt is unreachable");
    assert_eq!(report["deleted_trees"], 1);
    assert_eq!(report["live_trees"], 1);
    assert!(!run(&store, &["ls", &drop]).status.success());
    let rows = json(&store, &["ls", &keep]);
    for r in rows.as_array().unwrap() {
        ok(&store, &["cat", r["id"].as_str().unwrap()]);
    }
    ok(&store, &["fsck"]);

    // A root whose content is gone is a problem fsck reports.
    let rows = json(&store, &["ls", &keep]);
    let k = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "k.txt")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&store, &["root", "add", "pins/k", &k]);
    let hex = k.trim_start_matches("b3:");
    fs::remove_file(store.join("objects/b3").join(&hex[..2]).join(&hex[2..])).unwrap();
    let out = run(&store, &["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dangling-root")
            && text.contains("pins/k")
            && text.contains("missing-object"),
        "{text}"
    );
    ok(&store, &["add", t.path().join("keep").to_str().unwrap()]);
    ok(&store, &["fsck"]);
    ok(&store, &["root", "rm", "pins/k"]);

    // Without the root, everything goes.
    ok(&store, &["root", "rm", "versions/keep"]);
    let report = json(&store, &["gc", "--grace", "0"]);
    assert_eq!(report["deleted_objects"], 2);
    assert!(object_files(&store).is_empty());
    assert_eq!(json(&store, &["stats"])["objects"], 0);
}

#[test]
fn a_deleted_or_corrupt_index_is_rebuilt_with_nothing_lost() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let a = t.path().join("a");
    sample_tree(&a);
    let tree = add_id(&store, &a);
    write(&t.path().join("m.bin"), b"model bytes");
    let model = json(&store, &["add", t.path().join("m.bin").to_str().unwrap()]);
    let sha = model[0]["report"]["sha256"].as_str().unwrap().to_string();
    let before = json(&store, &["stats"]);

    fs::remove_file(store.join("index.redb")).unwrap();
    let after = json(&store, &["stats"]);
    for key in [
        "objects",
        "trees",
        "stored_bytes",
        "sha256_aliases",
        "tree_logical_bytes",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(ok(&store, &["cat", &sha]), "model bytes");
    assert_eq!(json(&store, &["ls", &tree]).as_array().unwrap().len(), 7);

    fs::write(store.join("index.redb"), vec![0xAB; 8192]).unwrap();
    let again = json(&store, &["stats"]);
    assert_eq!(again["objects"], before["objects"]);
    assert_eq!(ok(&store, &["cat", &sha]), "model bytes");

    let rebuilt = json(&store, &["index", "rebuild"]);
    assert_eq!(rebuilt["objects"], before["objects"]);
    ok(&store, &["fsck"]);
}

#[test]
fn bundles_round_trip_and_tampered_bundles_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src-store");
    let a = t.path().join("a");
    sample_tree(&a);
    write(
        &a.join("weights.bin"),
        &(0..3_000_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<_>>(),
    );
    let tree = add_id(&src, &a);
    let bundle = t.path().join("v1.bundle");
    ok(&src, &["export", &tree, "-o", bundle.to_str().unwrap()]);

    let dst = t.path().join("dst-store");
    let report = json(&dst, &["import", bundle.to_str().unwrap(), "--root", "v1"]);
    assert_eq!(report["roots"][0], tree.as_str());
    assert_eq!(ok(&dst, &["ls", &tree]), ok(&src, &["ls", &tree]));
    ok(&dst, &["fsck"]);
    assert_eq!(json(&dst, &["root", "ls"])[0]["name"], "v1");
    // Exec variant survives the trip.
    let rows = json(&dst, &["ls", &tree]);
    let tool = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "venv/bin/tool")
        .unwrap();
    assert_eq!(tool["kind"], "exec");

    // Tamper: change one byte of one object inside the (decompressed) tar, recompress.
    let tar = zstd::stream::decode_all(fs::File::open(&bundle).unwrap()).unwrap();
    let needle = b"print('comfy')";
    let pos = tar.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut evil = tar.clone();
    evil[pos] = b'P';
    let evil_path = t.path().join("evil.bundle");
    fs::write(&evil_path, zstd::stream::encode_all(&evil[..], 3).unwrap()).unwrap();
    let fresh = t.path().join("fresh-store");
    let out = run(&fresh, &["import", evil_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tampered") && err.contains("evil.bundle"),
        "{err}"
    );
    assert!(
        object_files(&fresh).is_empty(),
        "nothing published from a bad bundle"
    );
    assert_eq!(
        fs::read_dir(fresh.join("tmp")).unwrap().count(),
        0,
        "staged files removed"
    );

    // Truncated: cut the tar short, recompress.
    let cut_path = t.path().join("cut.bundle");
    fs::write(
        &cut_path,
        zstd::stream::encode_all(&tar[..tar.len() / 2], 3).unwrap(),
    )
    .unwrap();
    let out = run(&fresh, &["import", cut_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(object_files(&fresh).is_empty());

    // --dry-run verifies without storing.
    ok(&fresh, &["import", "--dry-run", bundle.to_str().unwrap()]);
    assert!(object_files(&fresh).is_empty());
}

#[test]
fn errors_name_what_is_wrong_and_use_the_documented_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let missing = t.path().join("no-such-dir");
    let out = run(&store, &["add", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-dir"));

    let out = run(&store, &["cat", "b3:1234"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid id"));

    let out = run(&store, &["cat", &format!("b3:{}", "0".repeat(64))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the store"));

    let out = run(&store, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(
        &store,
        &[
            "root",
            "add",
            "../escape",
            &format!("b3:{}", "0".repeat(64)),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid root name"));

    // A non-empty directory that is not a store is refused, untouched.
    let home = t.path().join("home");
    write(&home.join("precious.txt"), b"data");
    let out = run(&home, &["stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(fs::read_dir(&home).unwrap().count(), 1);

    // --json errors are JSON on stdout too.
    let out = run(&store, &["--json", "cat", "b3:zz"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("invalid id"));

    // A socket in a tree is refused with its path.
    let d = t.path().join("with-socket");
    fs::create_dir_all(&d).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let out = run(&store, &["add", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sock"));
}

#[test]
fn library_api_adds_with_exclusions_and_roots() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("store"), &StoreOptions::default()).unwrap();
    let a = t.path().join("ComfyUI");
    sample_tree(&a);
    write(&a.join(".git/HEAD"), b"ref: refs/heads/master\n");
    write(&a.join("models/checkpoints/x.safetensors"), b"weights");
    write(&a.join("comfy/__pycache__/model.cpython-311.pyc"), b"pyc");
    let opts = AddOptions {
        exclude: vec!["models".into()],
        exclude_names: vec![".git".into(), "__pycache__".into()],
        tree_sha256: false,
        ..Default::default()
    };
    let report = store.add_path(&a, &opts).unwrap();
    let m = store.read_tree(&report.id).unwrap();
    assert!(m.entries.iter().all(|e| !e.path.starts_with("models")
        && !e.path.contains(".git")
        && !e.path.contains("__pycache__")));
    // Equal to the tree of the same directory without the excluded parts.
    fs::remove_dir_all(a.join("models")).unwrap();
    fs::remove_dir_all(a.join(".git")).unwrap();
    fs::remove_dir_all(a.join("comfy/__pycache__")).unwrap();
    assert_eq!(
        store.add_path(&a, &AddOptions::default()).unwrap().id,
        report.id
    );

    store
        .add_root(
            "pins/a",
            &Root {
                ids: vec![report.id],
                path: None,
                ..Default::default()
            },
        )
        .unwrap();
    let gc = store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            dry_run: false,
        })
        .unwrap();
    assert_eq!(gc.deleted_trees, 0);
    assert!(store.has_tree(&report.id));
}

/// A store open to other users (group or world can enter it) never takes in a file they could
/// not read where it is: every object is 0444. A new store is private (0700) and takes it.
#[test]
fn a_shared_store_refuses_files_other_users_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // A world-searchable path down to the files, so only their own modes decide.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let src = root.join("src");
    write(&src.join("public.txt"), b"everyone may read this\n");
    write(&src.join("secret.key"), b"only me\n");
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("public.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(src.join("secret.key"), fs::Permissions::from_mode(0o600)).unwrap();

    let private = root.join("private-store");
    ok(&private, &["add", src.to_str().unwrap()]);
    let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "a new store is private");

    let shared = root.join("shared-store");
    ok(&shared, &["root", "ls"]);
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    for target in [src.clone(), src.join("secret.key")] {
        let out = run(&shared, &["add", target.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", common::describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not readable by other users") && err.contains("secret.key"),
            "{err}"
        );
    }
    ok(&shared, &["add", src.join("public.txt").to_str().unwrap()]);
}

/// One count a store started: label, total, units counted, calls.
type Started = (String, Option<u64>, u64, usize);

/// A count of what a store reports, for the progress test.
#[derive(Default)]
struct Counts(std::sync::Mutex<Vec<Started>>);

struct Count<'a>(&'a Counts, usize);

impl comfystore::report::Progress for Count<'static> {
    fn inc(&self, n: u64) {
        let mut v = self.0 .0.lock().unwrap();
        v[self.1].2 += n;
        v[self.1].3 += 1;
    }
    fn set_position(&self, _: u64) {}
    fn finish(&self) {}
}

impl comfystore::report::Reporter for &'static Counts {
    fn start(
        &self,
        label: &str,
        total: Option<u64>,
        _: comfystore::report::Unit,
    ) -> Box<dyn comfystore::report::Progress> {
        let mut v = self.0.lock().unwrap();
        v.push((label.to_string(), total, 0, 0));
        Box::new(Count(self, v.len() - 1))
    }
}

/// Storing a big file (a checkpoint) counts its bytes as they are read, many times, not once
/// at the end: a bar that moves.
#[test]
fn a_big_file_is_counted_in_bytes_as_it_is_read() {
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("model.safetensors");
    let f = fs::File::create(&big).unwrap();
    f.set_len(80 << 20).unwrap();
    drop(f);
    let counts: &'static Counts = Box::leak(Box::default());
    let store = Store::open(t.path().join("store"), &StoreOptions::default())
        .unwrap()
        .with_reporter(std::sync::Arc::new(counts));
    store.put_file(&big, false, true).unwrap();
    let seen = counts.0.lock().unwrap().clone();
    let bar = seen
        .iter()
        .find(|(label, ..)| label == "model.safetensors")
        .unwrap_or_else(|| panic!("no count for the file: {seen:?}"));
    assert_eq!((bar.1, bar.2), (Some(80 << 20), 80 << 20), "{seen:?}");
    assert!(bar.3 > 10, "counted only {} times: {seen:?}", bar.3);

    // A tree's hashing is counted in bytes too.
    let dir = t.path().join("tree");
    write(&dir.join("a.py"), &[b'a'; 3000]);
    write(&dir.join("b/c.bin"), &[b'c'; 70_000]);
    store.add_tree(&dir, &AddOptions::default()).unwrap();
    let seen = counts.0.lock().unwrap().clone();
    let hashing = seen
        .iter()
        .rfind(|(label, ..)| label == "hashing")
        .unwrap_or_else(|| panic!("no hashing count: {seen:?}"));
    assert_eq!((hashing.1, hashing.2), (Some(73_000), 73_000), "{seen:?}");
}

/// Issue 19's "honest progress": add, fsck, export, import and a download each count an 80 MiB
/// file's bytes as they move, through the command line's real reporter.
#[test]
fn long_operations_count_a_big_files_bytes_as_they_move() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let big = t.path().join("model.safetensors");
    let block = common::comfy::pseudo_random(19, 1 << 20);
    let data: Vec<u8> = block.iter().copied().cycle().take(80 << 20).collect();
    write(&big, &data);
    common::moves_with_the_bytes(
        &store,
        &["--json", "add", big.to_str().unwrap()],
        &[],
        "model.safetensors",
    );
    let id = json(&store, &["add", big.to_str().unwrap()])[0]["report"]["id"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| panic!("no id"));
    common::moves_with_the_bytes(&store, &["fsck"], &[], "fsck");
    let bundle = t.path().join("b.tar.zst");
    common::moves_with_the_bytes(
        &store,
        &["export", &id, "-o", bundle.to_str().unwrap()],
        &[],
        "export",
    );
    common::moves_with_the_bytes(
        &t.path().join("store2"),
        &["import", bundle.to_str().unwrap()],
        &[],
        "import",
    );
    let server = common::http::TestServer::start();
    server.add("/m.bin", data, common::http::Behavior::Normal);
    common::moves_with_the_bytes(
        &t.path().join("store3"),
        &["add-url", &server.url("/m.bin")],
        &[],
        "m.bin",
    );
}
