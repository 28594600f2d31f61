//! Hostile and damaged inputs to the store, driven through the `comfystore` binary: crafted
//! bundles (huge declared members, trees that lie about sizes, roots the bundle lacks), trees
//! planted in a store, and objects changed behind the store's back.

mod common;

use common::{code, describe, json, ok, run, s, stderr};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Canonical manifest bytes (store-layout.md, "Tree manifests") of `entries`, each already
/// compact JSON; and the tree's id.
fn manifest(entries: &[String]) -> (Vec<u8>, String) {
    let mut b = String::from("{\"schema\":\"comfystore.tree/1\",\"entries\":[\n");
    b.push_str(&entries.join(",\n"));
    b.push_str(if entries.is_empty() { "]}\n" } else { "\n]}\n" });
    let id = format!("b3:{}", blake3::hash(b.as_bytes()).to_hex());
    (b.into_bytes(), id)
}

fn b3(data: &[u8]) -> String {
    format!("b3:{}", blake3::hash(data).to_hex())
}

fn file_entry(path: &str, size: u64, id: &str) -> String {
    format!("{{\"path\":\"{path}\",\"kind\":\"file\",\"size\":{size},\"id\":\"{id}\"}}")
}

/// One member of a crafted bundle: its name, mode, size in the tar header and its bytes.
struct Member {
    name: String,
    mode: u32,
    size: u64,
    data: Box<dyn Read>,
}

fn member(name: &str, data: Vec<u8>) -> Member {
    Member {
        name: name.into(),
        mode: 0o444,
        size: data.len() as u64,
        data: Box::new(std::io::Cursor::new(data)),
    }
}

/// Write a bundle (zstd of a tar stream) holding `index.json` and the members, as a hostile
/// exporter would.
fn write_bundle(path: &Path, index: &serde_json::Value, members: Vec<Member>) {
    let f = fs::File::create(path).unwrap();
    let enc = zstd::stream::Encoder::new(f, 1).unwrap();
    let mut tar = tar::Builder::new(enc);
    let index = serde_json::to_vec(index).unwrap();
    let mut all = vec![member("index.json", index)];
    all.extend(members);
    for mut m in all {
        let mut h = tar::Header::new_gnu();
        h.set_size(m.size);
        h.set_mode(m.mode);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, &m.name, &mut m.data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

fn hex(id: &str) -> &str {
    id.strip_prefix("b3:").unwrap()
}

fn tree_file(store: &Path, id: &str) -> PathBuf {
    let h = hex(id);
    store.join("trees/b3").join(&h[..2]).join(&h[2..])
}

/// Count of files in the store's `objects/` and `trees/`.
fn published(store: &Path) -> usize {
    ["objects", "trees"]
        .iter()
        .map(|d| {
            walkdir::WalkDir::new(store.join(d))
                .into_iter()
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_type().is_file()))
                .count()
        })
        .sum()
}

/// Run the binary and return (exit code, stderr, peak RSS in KiB) from wait4's rusage.
#[cfg(target_os = "linux")]
fn run_measured(store: &Path, args: &[&str]) -> (i32, String, u64) {
    use std::os::unix::process::ExitStatusExt;
    let err = tempfile::NamedTempFile::new().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_comfystore"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("COMFYSTORE_DIR")
        .env_remove("COMFYSTORE_INDEX")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    std::mem::forget(child);
    let status = std::process::ExitStatus::from_raw(status);
    let text = fs::read_to_string(err.path()).unwrap_or_default();
    (status.code().unwrap_or(-1), text, usage.ru_maxrss as u64)
}

#[test]
fn import_of_a_bundle_declaring_a_huge_tree_fails_with_bounded_memory() {
    if !cfg!(target_os = "linux") {
        common::cannot_run(
            "import_of_a_bundle_declaring_a_huge_tree_fails_with_bounded_memory",
            "peak RSS is read from wait4's rusage in KiB, as Linux reports it",
        );
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let t = tempfile::tempdir().unwrap();
        let store = t.path().join("store");
        let bundle = t.path().join("huge.bundle");
        // 2 GiB of zeros: a few KB once compressed, 2 GiB if an importer reads it into memory.
        let size: u64 = 2 << 30;
        let fake = format!("b3:{}", "ab".repeat(32));
        let index = serde_json::json!({
            "schema": "comfystore.bundle/1",
            "roots": [fake],
            "trees": [{"id": fake, "size": size}],
            "objects": [],
        });
        let tree = Member {
            name: format!("trees/{}", hex(&fake)),
            mode: 0o444,
            size,
            data: Box::new(std::io::repeat(0).take(size)),
        };
        write_bundle(&bundle, &index, vec![tree]);
        assert!(fs::metadata(&bundle).unwrap().len() < 4 << 20);
        ok(&store, &["stats"]);
        let (code, err, peak_kib) = run_measured(&store, &["import", s(&bundle)]);
        assert_eq!(code, 1, "import of a huge tree must fail: {err}");
        assert!(err.contains("huge.bundle"), "{err}");
        assert!(
            peak_kib < 200 * 1024,
            "import peaked at {} MiB of memory on a bundle declaring a 2 GiB tree",
            peak_kib / 1024
        );
        assert_eq!(published(&store), 0, "nothing is published");
        assert_eq!(
            fs::read_dir(store.join("tmp")).unwrap().count(),
            0,
            "no temp files left"
        );
    }
}

#[test]
fn import_refuses_a_tree_that_lies_about_a_file_size() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let bundle = t.path().join("liar.bundle");
    let data = b"twelve bytes".to_vec();
    let oid = b3(&data);
    let (tree, tid) = manifest(&[file_entry("a.txt", 999, &oid)]);
    let index = serde_json::json!({
        "schema": "comfystore.bundle/1",
        "roots": [tid],
        "trees": [{"id": tid, "size": tree.len()}],
        "objects": [{"id": oid, "size": data.len()}],
    });
    write_bundle(
        &bundle,
        &index,
        vec![
            member(&format!("objects/{}", hex(&oid)), data.clone()),
            member(&format!("trees/{}", hex(&tid)), tree.clone()),
        ],
    );
    let out = run(&store, &["import", s(&bundle)]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(
        stderr(&out).contains("999") && stderr(&out).contains(&oid),
        "{}",
        describe(&out)
    );
    assert_eq!(published(&store), 0, "nothing is published");

    // The object already in the store does not make the lie pass either.
    ok(
        &store,
        &[
            "add",
            s(&{
                let p = t.path().join("a.txt");
                fs::write(&p, &data).unwrap();
                p
            }),
        ],
    );
    let index = serde_json::json!({
        "schema": "comfystore.bundle/1",
        "roots": [tid],
        "trees": [{"id": tid, "size": tree.len()}],
        "objects": [],
    });
    write_bundle(
        &bundle,
        &index,
        vec![member(&format!("trees/{}", hex(&tid)), tree)],
    );
    let out = run(&store, &["import", s(&bundle)]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(!tree_file(&store, &tid).exists());
}

#[test]
fn fsck_reports_a_tree_that_lies_about_a_file_size() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("a.txt");
    let data = b"twelve bytes";
    fs::write(&src, data).unwrap();
    ok(&store, &["add", s(&src)]);
    // A tree planted beside the store's own writers: its id is right, one size is not.
    let (tree, tid) = manifest(&[file_entry("a.txt", 13, &b3(data))]);
    fs::write(tree_file(&store, &tid), &tree).unwrap();
    let out = run(&store, &["--json", "fsck", "--sha256"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["kind"] == "bad-size"
            && p["path"] == s(&tree_file(&store, &tid))
            && p["detail"].as_str().unwrap().contains("13 bytes")),
        "{report:#}"
    );
    // --repair moves the lying tree aside; the store is then clean.
    let out = run(&store, &["fsck", "--repair"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(!tree_file(&store, &tid).exists());
    let report = json(&store, &["fsck"]);
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(0));
}

#[test]
fn import_root_naming_an_id_missing_from_the_bundle_publishes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let bundle = t.path().join("rootless.bundle");
    let data = b"content".to_vec();
    let oid = b3(&data);
    let (tree, tid) = manifest(&[file_entry("c.txt", data.len() as u64, &oid)]);
    let missing = format!("b3:{}", "cd".repeat(32));
    let index = serde_json::json!({
        "schema": "comfystore.bundle/1",
        "roots": [tid, missing],
        "trees": [{"id": tid, "size": tree.len()}],
        "objects": [{"id": oid, "size": data.len()}],
    });
    write_bundle(
        &bundle,
        &index,
        vec![
            member(&format!("objects/{}", hex(&oid)), data),
            member(&format!("trees/{}", hex(&tid)), tree),
        ],
    );
    let out = run(&store, &["import", s(&bundle), "--root", "v1"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(stderr(&out).contains(&missing), "{}", describe(&out));
    assert_eq!(published(&store), 0, "content published without its root");
    assert!(!store.join("roots/v1").exists());

    // A bad root name is refused before anything is read or published, too.
    let out = run(&store, &["import", s(&bundle), "--root", "../escape"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert_eq!(published(&store), 0);
}

#[test]
fn fsck_repair_restores_an_alias_the_index_knows() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("model.bin");
    let data = b"a model the hub names by sha256".to_vec();
    fs::write(&src, &data).unwrap();
    ok(&store, &["add", s(&src)]);
    let sha = common::sha256_hex(&data);
    let alias = store.join("aliases/sha256").join(&sha[..2]).join(&sha[2..]);
    // A writer killed after the object's index row and before its alias file.
    fs::remove_file(&alias).unwrap();
    let out = run(&store, &["--json", "fsck", "--repair"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "missing-alias" && p["path"] == s(&alias)),
        "{report:#}"
    );
    assert_eq!(
        fs::read_to_string(&alias).unwrap().trim(),
        b3(&data),
        "alias restored"
    );
    ok(&store, &["index", "rebuild"]);
    assert!(run(&store, &["cat", &format!("sha256:{sha}")]).stdout == data);
    let report = json(&store, &["fsck", "--sha256"]);
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(0));
}

/// Append to a file through its hardlink (what root does when it ignores 0444; the owner can
/// chmod the shared inode first).
fn write_through(f: &Path, extra: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
    let mut h = fs::OpenOptions::new().append(true).open(f).unwrap();
    std::io::Write::write_all(&mut h, extra).unwrap();
    drop(h);
    fs::set_permissions(f, fs::Permissions::from_mode(0o444)).unwrap();
}

fn quarantined(store: &Path) -> usize {
    fs::read_dir(store.join("quarantine")).unwrap().count()
}

#[test]
fn a_changed_object_is_never_copied_or_printed() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let (a_bytes, b_bytes) = (vec![b'a'; 10_000], vec![b'b'; 20_000]);
    common::write(&a.join("a.txt"), &a_bytes);
    common::write(&b.join("b.txt"), &b_bytes);
    let tree_a = ok(&store, &["add", s(&a)]);
    let tree_a = tree_a.split('\t').next().unwrap().to_string();
    let tree_b = ok(&store, &["add", s(&b)]);
    let tree_b = tree_b.split('\t').next().unwrap().to_string();
    let (ida, idb) = (b3(&a_bytes), b3(&b_bytes));
    // Both objects have been read once (vouched for) before they change.
    assert!(run(&store, &["cat", &ida]).stdout == a_bytes);
    let (da, db) = (t.path().join("da"), t.path().join("db"));
    for (tree, d) in [(&tree_a, &da), (&tree_b, &db)] {
        ok(&store, &["materialize", tree, s(d), "--link", "hardlink"]);
    }
    write_through(&da.join("a.txt"), b"x\n");
    write_through(&db.join("b.txt"), b"x\n");

    // cat refuses the changed bytes, and moves the object aside.
    let out = run(&store, &["cat", &ida]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(out.stdout.is_empty(), "cat printed changed bytes");
    assert!(
        stderr(&out).contains("changed on disk"),
        "{}",
        describe(&out)
    );
    assert_eq!(quarantined(&store), 1);

    // A copy into a new DEST refuses them too.
    let d2 = t.path().join("d2");
    let out = run(&store, &["materialize", &tree_b, s(&d2), "--link", "copy"]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(stderr(&out).contains(&idb), "{}", describe(&out));
    assert!(
        fs::read(d2.join("b.txt")).map_or(true, |got| got == b_bytes),
        "materialize copied the changed bytes"
    );
    assert_eq!(quarantined(&store), 2);

    // Added again, the objects are sound and everything works.
    ok(&store, &["add", s(&a)]);
    ok(&store, &["add", s(&b)]);
    assert!(run(&store, &["cat", &ida]).stdout == a_bytes);
    ok(&store, &["materialize", &tree_b, s(&d2), "--link", "copy"]);
    assert_eq!(fs::read(d2.join("b.txt")).unwrap(), b_bytes);
}
