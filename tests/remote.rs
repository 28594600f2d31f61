//! The remote tier: `push` a store's closure to a GCS bucket and `pull` it into another store,
//! against fake-gcs-server (tests/common/gcs.rs).

mod common;

use common::gcs;
use common::{parse, s, stderr, write};
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

const PREFIX: &str = "cs";

/// The emulator, or `None` after `cannot_run`.
fn emulator(test: &str) -> Option<gcs::Emulator> {
    match gcs::binary() {
        Ok(bin) => Some(gcs::Emulator::start(&bin)),
        Err(why) => {
            common::cannot_run(test, &why);
            None
        }
    }
}

fn remote() -> String {
    format!("gs://{}/{PREFIX}", gcs::BUCKET)
}

/// comfystore with the emulator's address and no credentials.
fn run(emu: &gcs::Emulator, store: &Path, args: &[&str]) -> Output {
    run_at(&format!("127.0.0.1:{}", emu.port), store, args)
}

/// comfystore with `host` as the emulator's address (the emulator or a front of it) and no
/// credentials.
fn run_at(host: &str, store: &Path, args: &[&str]) -> Output {
    common::run_env(
        store,
        args,
        &[
            ("STORAGE_EMULATOR_HOST", Some(OsStr::new(host))),
            ("GOOGLE_APPLICATION_CREDENTIALS", None),
            ("COMFYSTORE_REMOTE", None),
            ("COMFYSTORE_REMOTE_JOBS", None),
            ("GCS_RETRY_BASE_SLEEP", Some(OsStr::new("0.05"))),
            // The 3 MB model goes up in a resumable session, 1 MiB a request.
            ("GCS_CHUNK_MB", Some(OsStr::new("1"))),
        ],
    )
}

fn ok_json(emu: &gcs::Emulator, store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(emu, store, &all);
    assert!(
        out.status.success(),
        "comfystore {args:?}: {}\n{}",
        out.status,
        stderr(&out)
    );
    parse(&out)
}

/// A source folder: small files, an executable, a symlink, an empty folder, a 3 MB model.
fn source_tree(dir: &Path) {
    write(&dir.join("main.py"), b"import comfy\n");
    write(&dir.join("comfy/sd.py"), &vec![3u8; 200_000]);
    write(&dir.join("venv/bin/tool"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(dir.join("venv/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("python3.11", dir.join("venv/bin/python")).unwrap();
    write(
        &dir.join("models/model.safetensors"),
        &(0..3_000_000u32)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<_>>(),
    );
    fs::create_dir_all(dir.join("input")).unwrap();
}

/// A store holding `source_tree` (its tree id) and a single file added with its SHA-256.
fn filled_store(dir: &Path) -> (std::path::PathBuf, String, String) {
    let store = dir.join("store-a");
    let src = dir.join("src");
    source_tree(&src);
    let tree = common::json(&store, &["add", s(&src)]);
    let tree = tree[0]["report"]["id"].as_str().unwrap().to_string();
    let file = dir.join("lora.bin");
    write(&file, &vec![7u8; 100_000]);
    let obj = common::json(&store, &["add", s(&file)]);
    let obj = obj[0]["report"]["id"].as_str().unwrap().to_string();
    (store, tree, obj)
}

/// The emulator, a temp folder whose `filled_store` has pushed its tree, and the tree id; or
/// `None` after `cannot_run`.
fn pushed_tree(test: &str) -> Option<(gcs::Emulator, tempfile::TempDir, String)> {
    let emu = emulator(test)?;
    let tmp = tempfile::tempdir().unwrap();
    let (a, tree, _) = filled_store(tmp.path());
    ok_json(&emu, &a, &["push", &remote(), &tree]);
    Some((emu, tmp, tree))
}

#[test]
fn push_then_pull_into_an_empty_store_materializes_and_fscks_clean() {
    let Some(emu) = emulator("push_then_pull_into_an_empty_store_materializes_and_fscks_clean")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, tree, obj) = filled_store(tmp.path());
    let sha = common::sha256_hex(&vec![7u8; 100_000]);

    let pushed = ok_json(
        &emu,
        &a,
        &["push", &remote(), &tree, &format!("sha256:{sha}")],
    );
    assert!(pushed["uploaded"].as_u64().unwrap() >= 6, "{pushed}");
    assert_eq!(pushed["skipped"], 0, "{pushed}");
    assert!(
        pushed["uploaded_bytes"].as_u64().unwrap() > 3_200_000,
        "{pushed}"
    );
    let tree_hex = tree.strip_prefix("b3:").unwrap();
    let tree_name = format!("{PREFIX}/trees/b3/{}/{}", &tree_hex[..2], &tree_hex[2..]);
    assert_eq!(
        blake3::hash(&emu.content(&tree_name)).to_hex().as_str(),
        tree_hex
    );
    let alias = emu.content(&format!(
        "{PREFIX}/aliases/sha256/{}/{}",
        &sha[..2],
        &sha[2..]
    ));
    assert_eq!(String::from_utf8(alias).unwrap(), format!("{obj}\n"));
    let obj_hex = obj.strip_prefix("b3:").unwrap();
    let meta = emu
        .metadata(&format!(
            "{PREFIX}/objects/b3/{}/{}",
            &obj_hex[..2],
            &obj_hex[2..]
        ))
        .unwrap();
    assert_eq!(meta["metadata"]["b3"], obj_hex);
    assert_eq!(meta["metadata"]["sha256"], sha.as_str());

    // A second push sends nothing.
    let again = ok_json(&emu, &a, &["push", &remote(), &tree, &obj]);
    assert_eq!(again["uploaded"], 0, "{again}");
    assert_eq!(again["uploaded_bytes"], 0, "{again}");
    assert_eq!(again["skipped"], pushed["uploaded"], "{again}");

    // Pull into an empty store; materialize and fsck are clean.
    let b = tmp.path().join("store-b");
    let pulled = ok_json(
        &emu,
        &b,
        &["pull", &remote(), &tree, &obj, "--root", "pulled/v1"],
    );
    assert_eq!(pulled["trees"], 1, "{pulled}");
    assert!(pulled["objects"].as_u64().unwrap() >= 5, "{pulled}");
    assert_eq!(pulled["failed"], serde_json::json!([]), "{pulled}");
    // The alias came with the object: it resolves by SHA-256.
    let cat = common::run(&b, &["cat", &format!("sha256:{sha}")]);
    assert!(cat.status.success(), "{}", stderr(&cat));
    assert_eq!(cat.stdout, vec![7u8; 100_000]);
    let dest = tmp.path().join("dest");
    common::ok(&b, &["materialize", &tree, s(&dest)]);
    assert_eq!(
        fs::read(dest.join("models/model.safetensors")).unwrap(),
        fs::read(tmp.path().join("src/models/model.safetensors")).unwrap()
    );
    assert!(
        fs::metadata(dest.join("venv/bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111
            != 0
    );
    let fsck = common::run(&b, &["fsck"]);
    assert!(fsck.status.success(), "{}", stderr(&fsck));

    // The root keeps both through gc.
    let roots = common::ok(&b, &["root", "ls"]);
    assert!(roots.contains("pulled/v1"), "{roots}");
    let gc = common::run(&b, &["gc", "--grace", "0"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    common::ok(&b, &["materialize", &tree, s(&tmp.path().join("dest2"))]);

    // A pull of what the store has fetches nothing.
    let again = ok_json(&emu, &b, &["pull", &remote(), &tree]);
    assert_eq!(again["objects"], 0, "{again}");
    assert_eq!(again["trees"], 0, "{again}");
}

/// An object that a pulled tree names executable is stored executable, as `import` stores it:
/// stored plain, placing it copied its bytes into an executable variant and kept both (the
/// baked image of real ComfyUI held its 2 GB of torch libraries twice).
#[test]
fn pull_stores_an_executable_object_once_in_its_executable_variant() {
    let Some((emu, tmp, tree)) =
        pushed_tree("pull_stores_an_executable_object_once_in_its_executable_variant")
    else {
        return;
    };
    let b = tmp.path().join("store-b");
    ok_json(&emu, &b, &["pull", &remote(), &tree]);
    let tool = blake3::hash(b"#!/bin/sh\necho hi\n").to_hex().to_string();
    let object = b.join("objects/b3").join(&tool[..2]).join(&tool[2..]);
    let exec = b
        .join("objects/b3")
        .join(&tool[..2])
        .join(format!("{}-exec", &tool[2..]));
    assert!(exec.exists(), "no executable variant at {}", exec.display());
    common::ok(&b, &["materialize", &tree, s(&tmp.path().join("dest"))]);
    assert!(
        !object.exists(),
        "the executable object is also stored plain: {}",
        object.display()
    );
}

#[test]
fn concurrent_pushes_of_overlapping_content_both_succeed() {
    let Some(emu) = emulator("concurrent_pushes_of_overlapping_content_both_succeed") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, tree, _) = filled_store(tmp.path());
    // A second store with the same tree and one more file.
    let b = tmp.path().join("store-b");
    let tree_b = common::json(&b, &["add", s(&tmp.path().join("src"))]);
    assert_eq!(tree_b[0]["report"]["id"].as_str().unwrap(), tree);
    let extra = tmp.path().join("extra.bin");
    write(&extra, &vec![5u8; 300_000]);
    let extra_id = common::json(&b, &["add", s(&extra)])[0]["report"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let emu = &emu;
    let (ra, rb) = std::thread::scope(|sc| {
        let ja = sc.spawn(|| run(emu, &a, &["--json", "push", &remote(), &tree]));
        let jb = sc.spawn(|| run(emu, &b, &["--json", "push", &remote(), &tree, &extra_id]));
        (ja.join().unwrap(), jb.join().unwrap())
    });
    assert!(ra.status.success(), "{}", stderr(&ra));
    assert!(rb.status.success(), "{}", stderr(&rb));

    // The bucket is consistent: every object holds the bytes its name says.
    let ids: Vec<String> = walkdir::WalkDir::new(b.join("objects/b3"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let shard = e.path().parent().unwrap().file_name().unwrap();
            let name = e.file_name().to_string_lossy();
            format!(
                "{}{}",
                shard.to_string_lossy(),
                name.trim_end_matches("-exec")
            )
        })
        .collect();
    assert!(ids.len() >= 5, "{ids:?}");
    for hex in &ids {
        let n = format!("{PREFIX}/objects/b3/{}/{}", &hex[..2], &hex[2..]);
        let bytes = emu.content(&n);
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hex, "{n}");
    }
    // And a pull of everything works.
    let c = tmp.path().join("store-c");
    let pulled = ok_json(emu, &c, &["pull", &remote(), &tree, &extra_id]);
    assert_eq!(pulled["failed"], serde_json::json!([]), "{pulled}");
    let fsck = common::run(&c, &["fsck"]);
    assert!(fsck.status.success(), "{}", stderr(&fsck));
}

#[test]
fn a_corrupted_object_in_the_bucket_is_refused_and_not_published() {
    let Some((emu, tmp, tree)) =
        pushed_tree("a_corrupted_object_in_the_bucket_is_refused_and_not_published")
    else {
        return;
    };
    // Overwrite the model's bytes in the bucket (same size, one byte changed).
    let model = fs::read(tmp.path().join("src/models/model.safetensors")).unwrap();
    let id = blake3::hash(&model).to_hex().to_string();
    let name = format!("{PREFIX}/objects/b3/{}/{}", &id[..2], &id[2..]);
    let mut bad = model.clone();
    bad[1234] ^= 0xff;
    emu.put(&name, &bad);
    assert_eq!(emu.content(&name), bad);

    let b = tmp.path().join("store-b");
    let out = run(&emu, &b, &["--json", "pull", &remote(), &tree]);
    assert_eq!(common::code(&out), 1, "{}", stderr(&out));
    let report = parse(&out);
    let failed = report["failed"].to_string();
    assert!(failed.contains(&id), "{report}");
    assert!(failed.contains("tree"), "{report}");
    // Neither the model nor the tree naming it is in the store.
    let cat = common::run(&b, &["cat", &format!("b3:{id}")]);
    assert!(!cat.status.success());
    let ls = common::run(&b, &["ls", &tree]);
    assert!(!ls.status.success());
    let objects = walkdir::WalkDir::new(b.join("objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count();
    assert_eq!(objects, 3, "the three sound objects were pulled");
    let fsck = common::run(&b, &["fsck"]);
    assert!(fsck.status.success(), "{}", stderr(&fsck));
}

#[test]
fn pull_offline_opens_no_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("store-b");
    // Nothing listens at this address: only an attempt to connect could fail here.
    let out = common::run_env(
        &b,
        &[
            "--json",
            "pull",
            "gs://some-bucket/p",
            "--offline",
            "b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        ],
        &[
            ("STORAGE_EMULATOR_HOST", Some(OsStr::new("127.0.0.1:9"))),
            ("GOOGLE_APPLICATION_CREDENTIALS", None),
            ("GCS_RETRIES", Some(OsStr::new("0"))),
        ],
    );
    assert_eq!(common::code(&out), 1, "{}", stderr(&out));
    let report = parse(&out);
    assert!(report["failed"].to_string().contains("offline"), "{report}");
}

#[test]
fn fetch_and_materialize_take_a_lock_from_the_remote_first() {
    let test = "fetch_and_materialize_take_a_lock_from_the_remote_first";
    let Some(emu) = emulator(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("store-a");
    let src = tmp.path().join("ComfyUI");
    write(&src.join("main.py"), b"print('fixture')\n");
    write(&src.join("comfy/sd.py"), &vec![4u8; 70_000]);
    let tree = common::json(&a, &["add", s(&src)])[0]["report"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let model: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
    let model_file = tmp.path().join("m.safetensors");
    write(&model_file, &model);
    common::json(&a, &["add", s(&model_file)]);
    // A lock whose model has no source: only the bucket can give it.
    let lock = serde_json::json!({
        "schema": "comfystore.lock/1",
        "tag": "remote-test",
        "comfyui": { "dirty": true, "tree": tree },
        "models": [{
            "path": "models/checkpoints/m.safetensors",
            "size": model.len(),
            "sha256": common::sha256_hex(&model),
            "blake3": blake3::hash(&model).to_hex().to_string(),
        }],
    });
    let lock_path = tmp.path().join("remote-test.lock.json");
    write(
        &lock_path,
        serde_json::to_string_pretty(&lock).unwrap().as_bytes(),
    );
    let pushed = ok_json(&emu, &a, &["push", &remote(), s(&lock_path)]);
    assert_eq!(pushed["trees"], 1, "{pushed}");
    assert_eq!(pushed["locks"].as_array().unwrap().len(), 1, "{pushed}");

    // Without the remote, an empty store cannot get the lock's content.
    let b = tmp.path().join("store-b");
    let out = run(&emu, &b, &["fetch", s(&lock_path)]);
    assert_eq!(common::code(&out), 1, "{}", stderr(&out));
    // With it (COMFYSTORE_REMOTE), fetch completes from the bucket.
    let host = format!("127.0.0.1:{}", emu.port);
    let r = remote();
    let env = [
        ("STORAGE_EMULATOR_HOST", Some(OsStr::new(&host))),
        ("GOOGLE_APPLICATION_CREDENTIALS", None),
        ("COMFYSTORE_REMOTE", Some(OsStr::new(&r))),
    ];
    let out = common::run_env(&b, &["--json", "fetch", s(&lock_path)], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = parse(&out);
    assert_eq!(report["remote"]["trees"], 1, "{report}");
    assert_eq!(report["remote"]["objects"], 3, "{report}");

    // materialize --remote into a third, empty store.
    let c = tmp.path().join("store-c");
    let dest = tmp.path().join("dest");
    let out = common::run_env(
        &c,
        &["materialize", s(&lock_path), s(&dest), "--remote", &r],
        &env[..2],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(dest.join("main.py")).unwrap(),
        b"print('fixture')\n"
    );
    let placed = dest.join("models/checkpoints/m.safetensors");
    assert_eq!(fs::read(&placed).unwrap(), model);
    // pull LOCK fills a fourth store and pins the lock's content.
    let d = tmp.path().join("store-d");
    let pulled = ok_json(&emu, &d, &["pull", &remote(), s(&lock_path)]);
    assert_eq!(pulled["trees"], 1, "{pulled}");
    assert_eq!(pulled["objects"], 3, "{pulled}");
    assert_eq!(pulled["aliases"], 1, "{pulled}");
    let roots = common::ok(&d, &["root", "ls"]);
    assert!(roots.contains("lock/remote-test"), "{roots}");
    for store in [&b, &c, &d] {
        let fsck = common::run(store, &["fsck"]);
        assert!(fsck.status.success(), "{}", stderr(&fsck));
    }
}

#[test]
fn push_retries_uploads_that_get_503() {
    let Some(emu) = emulator("push_retries_uploads_that_get_503") else {
        return;
    };
    let front = gcs::Front::start(emu.port, None, 3, 503);
    let tmp = tempfile::tempdir().unwrap();
    let (a, tree, _) = filled_store(tmp.path());
    let host = front.url();
    let out = common::run_env(
        &a,
        &["--json", "push", &remote(), &tree, "--remote-jobs", "1"],
        &[
            ("STORAGE_EMULATOR_HOST", Some(OsStr::new(&host))),
            ("GOOGLE_APPLICATION_CREDENTIALS", None),
            ("GCS_RETRY_BASE_SLEEP", Some(OsStr::new("0.01"))),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = parse(&out);
    assert_eq!(report["skipped"], 0, "{report}");
    let failed = front
        .seen_at("/upload/")
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert_eq!(failed, 3);
    // Every upload arrived: a pull of the tree is complete.
    let b = tmp.path().join("store-b");
    let pulled = ok_json(&emu, &b, &["pull", &remote(), &tree]);
    assert_eq!(pulled["failed"], serde_json::json!([]), "{pulled}");
}

/// Push and pull move several files at once (`--remote-jobs`, default 8): the front sees
/// uploads, then downloads, in flight together; with one job at a time it never does.
#[test]
fn push_and_pull_transfer_several_files_at_once() {
    let Some(emu) = emulator("push_and_pull_transfer_several_files_at_once") else {
        return;
    };
    let front = gcs::Front::start(emu.port, None, 0, 0);
    let tmp = tempfile::tempdir().unwrap();
    let (a, tree, _) = filled_store(tmp.path());
    let host = front.url();
    let run = |store: &Path, args: &[&str]| {
        let out = run_at(&host, store, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        parse(&out)
    };
    front.meet(2);
    let pushed = run(&a, &["--json", "push", &remote(), &tree]);
    assert!(pushed["uploaded"].as_u64().unwrap() > 2, "{pushed}");
    assert!(front.most_together() >= 2, "uploads went one at a time");
    front.meet(2);
    let b = tmp.path().join("store-b");
    let pulled = run(&b, &["--json", "pull", &remote(), &tree]);
    assert_eq!(pulled["failed"], serde_json::json!([]), "{pulled}");
    assert!(pulled["objects"].as_u64().unwrap() > 2, "{pulled}");
    assert!(front.most_together() >= 2, "downloads went one at a time");
    // One at a time: never two together.
    front.meet(2);
    let c = tmp.path().join("store-c");
    run(
        &c,
        &["--json", "pull", &remote(), &tree, "--remote-jobs", "1"],
    );
    assert_eq!(front.most_together(), 1);
}

/// The engine under push: a second create of the same bytes is success (a concurrent pusher
/// or a lost answer), other bytes under the name are refused and never overwrite; listings
/// and downloads see what is there.
#[test]
fn conditional_creates_list_and_download_against_the_emulator() {
    let Some(emu) = emulator("conditional_creates_list_and_download_against_the_emulator") else {
        return;
    };
    use comfystore::gcs::{Client, Error, Options, Put};
    let mut opts = Options::new(gcs::BUCKET);
    opts.emulator = Some(format!("127.0.0.1:{}", emu.port));
    opts.retry_base = std::time::Duration::from_millis(10);
    let client = Client::new(opts).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = b"same bytes".to_vec();
    let meta = serde_json::json!({ "b3": blake3::hash(&bytes).to_hex().to_string() });
    rt.block_on(async {
        let ct = "application/octet-stream";
        let first = client.create("p/x", &bytes, ct, &meta, "b3").await.unwrap();
        assert_eq!(first, Put::Created);
        let again = client.create("p/x", &bytes, ct, &meta, "b3").await.unwrap();
        assert_eq!(again, Put::AlreadyThere);
        let other = b"other bytes".to_vec();
        let other_meta = serde_json::json!({ "b3": blake3::hash(&other).to_hex().to_string() });
        let refused = client.create("p/x", &other, ct, &other_meta, "b3").await;
        assert!(matches!(refused, Err(Error::Exists { .. })), "{refused:?}");
        assert_eq!(client.get("p/x", 1000).await.unwrap().unwrap(), bytes);
        assert!(client.get("p/missing", 1000).await.unwrap().is_none());
        // Longer than expected: refused, nothing past the limit kept.
        assert!(client.get("p/x", 4).await.is_err());
        client.create("p/y", b"", ct, &meta, "b3").await.unwrap();
        let listed = client.list("p/").await.unwrap();
        let names: Vec<_> = listed.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["p/x", "p/y"]);
        assert_eq!(listed[0].size, bytes.len() as u64);
        assert_eq!(listed[0].metadata["b3"], meta["b3"]);
    });
    assert_eq!(emu.content("p/x"), bytes);
}

/// A file whose bytes are not those of the BLAKE3 it goes up under (a store object changed
/// while it was pushed) is never finished in the bucket: not in one request, not in a
/// resumable session; the same file with its right BLAKE3 goes up whole either way.
#[test]
fn a_file_that_no_longer_has_its_blake3_is_not_uploaded() {
    let Some(emu) = emulator("a_file_that_no_longer_has_its_blake3_is_not_uploaded") else {
        return;
    };
    use comfystore::gcs::{Client, Data, Error, Options, Put};
    let mut opts = Options::new(gcs::BUCKET);
    opts.emulator = Some(format!("127.0.0.1:{}", emu.port));
    opts.retry_base = std::time::Duration::from_millis(10);
    opts.chunk = comfystore::gcs::CHUNK_UNIT;
    let client = Client::new(opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One request (smaller than a chunk), and a session of three chunks.
    for (name, len) in [
        ("small", 1000usize),
        ("big", 2 * comfystore::gcs::CHUNK_UNIT + 7),
    ] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join(name);
        fs::write(&path, &bytes).unwrap();
        let file = |b3: [u8; 32]| Data::File {
            file: std::sync::Arc::new(fs::File::open(&path).unwrap()),
            path: path.clone(),
            len: len as u64,
            b3,
        };
        let right = *blake3::hash(&bytes).as_bytes();
        let mut wrong = right;
        wrong[0] ^= 1;
        let meta = serde_json::json!({ "b3": hex::encode(right) });
        let object = format!("f/{name}");
        rt.block_on(async {
            let ct = "application/octet-stream";
            let refused = client.create(&object, file(wrong), ct, &meta, "b3").await;
            match refused {
                Err(Error::Changed { .. }) => {}
                other => panic!("{name}: {other:?}"),
            }
            assert!(emu.metadata(&object).is_none(), "{name} was published");
            let put = client.create(&object, file(right), ct, &meta, "b3").await;
            assert_eq!(put.unwrap(), Put::Created, "{name}");
        });
        assert!(emu.content(&object) == bytes, "{name} differs");
    }
}

/// A lock naming a node by repo and commit alone: push sends the tree the store recorded for
/// them, and a fetch from the remote finds it without git.
#[test]
fn a_source_named_by_repo_and_commit_comes_from_the_remote() {
    let Some(emu) = emulator("a_source_named_by_repo_and_commit_comes_from_the_remote") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("store-a");
    let comfy = tmp.path().join("ComfyUI");
    write(&comfy.join("main.py"), b"print('fixture')\n");
    let node = tmp.path().join("node-a");
    write(&node.join("__init__.py"), b"NODE_CLASS_MAPPINGS = {}\n");
    let add = |dir: &Path| {
        common::json(&a, &["add", s(dir)])[0]["report"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (comfy_tree, node_tree) = (add(&comfy), add(&node));
    let repo = "https://example.invalid/node-a.git";
    let commit = "0123456789abcdef0123456789abcdef01234567";
    // What `fetch` records after rebuilding the node from git (store-layout.md, git-tree/).
    let key = blake3::hash(format!("comfystore.git-tree/1\n{repo}\n{commit}\n").as_bytes());
    let root = format!("git-tree/{}", &key.to_hex()[..32]);
    common::ok(&a, &["root", "add", &root, &node_tree]);
    let lock = serde_json::json!({
        "schema": "comfystore.lock/1",
        "tag": "git-test",
        "comfyui": { "dirty": true, "tree": comfy_tree },
        "custom_nodes": [{ "name": "node-a", "repo": repo, "commit": commit }],
    });
    let lock_path = tmp.path().join("git-test.lock.json");
    write(
        &lock_path,
        serde_json::to_string_pretty(&lock).unwrap().as_bytes(),
    );
    let pushed = ok_json(&emu, &a, &["push", &remote(), s(&lock_path)]);
    assert_eq!(pushed["trees"], 2, "{pushed}");

    let b = tmp.path().join("store-b");
    let host = format!("127.0.0.1:{}", emu.port);
    let r = remote();
    let out = common::run_env(
        &b,
        &["--json", "fetch", s(&lock_path), "--remote", &r],
        &[
            ("STORAGE_EMULATOR_HOST", Some(OsStr::new(&host))),
            ("GOOGLE_APPLICATION_CREDENTIALS", None),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = parse(&out);
    assert_eq!(report["remote"]["trees"], 2, "{report}");
    assert_eq!(report["trees"], serde_json::json!([]), "no git: {report}");
    let roots = common::ok(&b, &["root", "ls"]);
    assert!(roots.contains(&root), "{roots}");
    // pull LOCK does the same in another store.
    let c = tmp.path().join("store-c");
    let pulled = ok_json(&emu, &c, &["pull", &remote(), s(&lock_path)]);
    assert_eq!(pulled["trees"], 2, "{pulled}");
    assert_eq!(pulled["failed"], serde_json::json!([]), "{pulled}");
}

#[test]
fn push_without_the_create_permission_is_refused_before_any_upload() {
    let Some(emu) = emulator("push_without_the_create_permission_is_refused_before_any_upload")
    else {
        return;
    };
    let front = gcs::Front::start(
        emu.port,
        Some(&["storage.objects.list", "storage.objects.get"]),
        0,
        0,
    );
    let tmp = tempfile::tempdir().unwrap();
    let (a, tree, _) = filled_store(tmp.path());
    let host = front.url();
    let out = common::run_env(
        &a,
        &["push", &remote(), &tree],
        &[
            ("STORAGE_EMULATOR_HOST", Some(OsStr::new(&host))),
            ("GOOGLE_APPLICATION_CREDENTIALS", None),
        ],
    );
    assert_eq!(common::code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("storage.objects.create"),
        "{}",
        stderr(&out)
    );
    assert!(front.seen_at("/upload/").is_empty());
}

#[test]
fn a_tampered_manifest_in_the_bucket_is_refused() {
    let Some(emu) = emulator("a_tampered_manifest_in_the_bucket_is_refused") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, tree, _) = filled_store(tmp.path());
    ok_json(&emu, &a, &["push", &remote(), &tree]);
    let hex = tree.strip_prefix("b3:").unwrap();
    let name = format!("{PREFIX}/trees/b3/{}/{}", &hex[..2], &hex[2..]);
    let mut manifest = emu.content(&name);
    // Point an entry at another path: still a valid manifest, but not the tree asked for.
    let text = String::from_utf8(manifest.clone()).unwrap();
    manifest = text.replace("main.py", "evil.py").into_bytes();
    emu.put(&name, &manifest);

    let b = tmp.path().join("store-b");
    let out = run(&emu, &b, &["--json", "pull", &remote(), &tree]);
    assert_eq!(common::code(&out), 1, "{}", stderr(&out));
    let report = parse(&out);
    assert_eq!(report["trees"], 0, "{report}");
    assert_eq!(
        report["objects"], 0,
        "nothing the tree names is fetched: {report}"
    );
    assert!(report["failed"].to_string().contains(&tree), "{report}");
    assert!(!common::run(&b, &["ls", &tree]).status.success());
}

/// `push` counts an 80 MiB object's bytes as GCS takes them (chunk by chunk), and `pull` as
/// they land, not once the object is in (issue 19's honest progress).
#[test]
fn push_and_pull_count_a_big_objects_bytes_as_they_move() {
    let Some(emu) = emulator("push_and_pull_count_a_big_objects_bytes_as_they_move") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("store-a");
    let big = tmp.path().join("model.safetensors");
    let block = common::comfy::pseudo_random(17, 1 << 20);
    write(
        &big,
        &block
            .iter()
            .copied()
            .cycle()
            .take(80 << 20)
            .collect::<Vec<u8>>(),
    );
    let id = common::json(&a, &["add", s(&big)])[0]["report"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let host = format!("127.0.0.1:{}", emu.port);
    let envs: [(&str, Option<&OsStr>); 3] = [
        ("STORAGE_EMULATOR_HOST", Some(OsStr::new(&host))),
        ("GOOGLE_APPLICATION_CREDENTIALS", None),
        // Five chunks (the emulator rehashes a growing object per chunk: few, not many).
        ("GCS_CHUNK_MB", Some(OsStr::new("16"))),
    ];
    common::moves_with_the_bytes(&a, &["push", &remote(), &id], &envs, "push");
    common::moves_with_the_bytes(
        &tmp.path().join("store-b"),
        &["pull", &remote(), &id],
        &envs,
        "pull",
    );
}
