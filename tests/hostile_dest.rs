//! A hostile or careless DEST: a hand-edited marker, a user's edits that a switch would
//! overwrite, symlinks planted (or swapped in during a run) that would lead writes outside.
//! Each test names what it guards; all run the real binary on real filesystems.

mod common;

use common::{code, describe, json, ok, run, s as arg, stderr, write};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

const MARKER: &str = ".comfystore-materialized.json";

struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let store = root.join("store");
    Setup { _t: t, root, store }
}

/// Store a folder with these files; returns the tree id.
fn tree(s: &Setup, name: &str, files: &[(&str, &[u8])]) -> String {
    let dir = s.root.join("src").join(name);
    for (p, data) in files {
        write(&dir.join(p), data);
    }
    ok(&s.store, &["add", arg(&dir)])
        .split('\t')
        .next()
        .unwrap()
        .to_string()
}

fn read_marker(dest: &Path) -> Value {
    serde_json::from_slice(&fs::read(dest.join(MARKER)).unwrap()).unwrap()
}

fn write_marker(dest: &Path, m: &Value) {
    fs::write(dest.join(MARKER), serde_json::to_vec_pretty(m).unwrap()).unwrap();
}

fn roots(store: &Path) -> Vec<(String, Value)> {
    json(store, &["root", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r.clone(),
            )
        })
        .collect()
}

/// Two versions materialized side by side: (tree A, DEST A, tree B, DEST B).
fn two_versions(s: &Setup) -> (String, PathBuf, String, PathBuf) {
    let ta = tree(s, "a", &[("main.py", b"a\n"), ("comfy/x.py", b"xa\n")]);
    let tb = tree(s, "b", &[("main.py", b"b\n"), ("comfy/y.py", b"yb\n")]);
    let (da, db) = (s.root.join("dest-a"), s.root.join("dest-b"));
    ok(&s.store, &["materialize", &ta, arg(&da)]);
    ok(&s.store, &["materialize", &tb, arg(&db)]);
    (ta, da, tb, db)
}

#[test]
fn a_hand_edited_marker_root_is_refused_by_remove_and_materialize() {
    let s = setup();
    let (ta, da, tb, db) = two_versions(&s);
    let b_root = read_marker(&db)["root"].as_str().unwrap().to_string();
    ok(&s.store, &["root", "add", "lock/v1", &tb]);

    // remove A with a marker naming B's root: refused, naming the field; B's root stays.
    let mut m = read_marker(&da);
    m["root"] = Value::from(b_root.clone());
    write_marker(&da, &m);
    let out = run(&s.store, &["remove", arg(&da)]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(stderr(&out).contains("`root`"), "{}", describe(&out));
    assert!(roots(&s.store).iter().any(|(n, _)| *n == b_root));
    assert!(da.join("main.py").exists(), "nothing removed");

    // materialize A again with a marker naming lock/v1: refused; lock/v1 still names B.
    m["root"] = Value::from("lock/v1");
    write_marker(&da, &m);
    let out = run(&s.store, &["materialize", &ta, arg(&da)]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(stderr(&out).contains("`root`"), "{}", describe(&out));
    let lock_root = roots(&s.store)
        .into_iter()
        .find(|(n, _)| n == "lock/v1")
        .unwrap()
        .1;
    assert_eq!(lock_root["ids"][0], tb.as_str(), "{lock_root}");

    // gc keeps B's content: its files are still all there after remove B's check.
    ok(&s.store, &["gc", "--grace", "0s"]);
    ok(&s.store, &["status", "--verify", arg(&db)]);
}

#[test]
fn a_hand_edited_marker_layout_venv_cannot_make_remove_delete_another_version() {
    let s = setup();
    let (_ta, da, _tb, db) = two_versions(&s);
    let mut m = read_marker(&da);
    m["layout"] = serde_json::json!({ "venv": db });
    write_marker(&da, &m);
    let out = run(&s.store, &["remove", arg(&da)]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(stderr(&out).contains("`layout.venv`"), "{}", describe(&out));
    assert!(db.join("main.py").exists(), "B untouched");
    assert!(db.join(MARKER).exists(), "B's marker untouched");
    ok(&s.store, &["status", arg(&db)]);

    // models_dir and python: the same rule.
    for field in ["models_dir", "python"] {
        let mut m = read_marker(&da);
        m["layout"] = serde_json::json!({ field: "/etc" });
        write_marker(&da, &m);
        let out = run(&s.store, &["status", arg(&da)]);
        assert_eq!(code(&out), 1, "{}", describe(&out));
        assert!(
            stderr(&out).contains(&format!("`layout.{field}`")),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn a_switch_refuses_to_overwrite_a_users_edit_and_force_keeps_it_beside() {
    let s = setup();
    let t1 = tree(
        &s,
        "v1",
        &[
            ("main.py", b"v1\n"),
            ("custom_nodes/node-a/__init__.py", b"a = 1\n"),
        ],
    );
    let t2 = tree(
        &s,
        "v2",
        &[
            ("main.py", b"v2\n"),
            ("custom_nodes/node-a/__init__.py", b"a = 2\n"),
            ("custom_nodes/node-b/x.py", b"b = 2\n"),
        ],
    );
    let dest = s.root.join("dest");
    ok(&s.store, &["materialize", &t1, arg(&dest)]);
    let edited = dest.join("custom_nodes/node-a/__init__.py");
    fs::write(&edited, b"a = 1  # my fix\n").unwrap();
    // The user's own file where v2 has one.
    write(&dest.join("custom_nodes/node-b/x.py"), b"mine\n");
    write(&dest.join("output/keep.png"), b"png");

    let out = run(&s.store, &["materialize", &t2, arg(&dest)]);
    assert_eq!(code(&out), 5, "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("custom_nodes/node-a/__init__.py")
            && err.contains("custom_nodes/node-b/x.py")
            && err.contains("--force"),
        "{err}"
    );
    assert!(!err.contains("output/keep.png"), "{err}");
    // Nothing changed.
    assert_eq!(fs::read(&edited).unwrap(), b"a = 1  # my fix\n");
    assert_eq!(fs::read(dest.join("main.py")).unwrap(), b"v1\n");
    assert_eq!(read_marker(&dest)["tree"], t1.as_str());
    assert_eq!(read_marker(&dest)["complete"], true);

    let r = json(&s.store, &["materialize", "--force", &t2, arg(&dest)]);
    let kept = r["kept_edits"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "{r:#}");
    for (path, mine) in [
        ("custom_nodes/node-a/__init__.py", &b"a = 1  # my fix\n"[..]),
        ("custom_nodes/node-b/x.py", &b"mine\n"[..]),
    ] {
        let k = kept.iter().find(|k| k["path"] == path).expect(path);
        let kept_as = k["kept_as"].as_str().unwrap();
        assert!(
            kept_as.starts_with(&format!("{path}.comfystore-kept-")),
            "{k}"
        );
        assert_eq!(fs::read(dest.join(kept_as)).unwrap(), mine, "{k}");
    }
    assert_eq!(fs::read(&edited).unwrap(), b"a = 2\n");
    assert_eq!(fs::read(dest.join("main.py")).unwrap(), b"v2\n");
    assert_eq!(fs::read(dest.join("output/keep.png")).unwrap(), b"png");

    // The text summary names the kept edit too.
    fs::write(&edited, b"a = 2  # again\n").unwrap();
    let out = run(&s.store, &["materialize", "--force", &t1, arg(&dest)]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        stderr(&out).contains("kept your edit of custom_nodes/node-a/__init__.py as"),
        "{}",
        describe(&out)
    );
}

/// Files under `dir` (recursively), not following symlinks.
fn count_files(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .count()
}

/// While `materialize` runs, another process keeps swapping `DEST/custom_nodes` with a symlink
/// to a folder outside (atomically: renameat2 RENAME_EXCHANGE). Nothing may ever be written
/// outside. Runs may fail (the swapped folder is refused); the count of runs, refusals and
/// escapes is printed.
#[test]
fn a_folder_swapped_for_a_symlink_during_materialize_never_gets_writes_outside() {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let s = setup();
    let files: Vec<(String, Vec<u8>)> = (0..150)
        .map(|i| {
            (
                format!("custom_nodes/node-{}/f{i}.py", i % 5),
                format!("x = {i}\n").into_bytes(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .chain([("main.py", &b"main\n"[..])])
        .collect();
    let t = tree(&s, "many", &refs);
    let outside = s.root.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let runs = 60;
    let (mut refused, mut escaped_runs) = (0, 0);
    for run_no in 0..runs {
        let dest = s.root.join(format!("dest-{run_no}"));
        fs::create_dir_all(&dest).unwrap();
        // A marker-less DEST must be empty: the swapper makes its link only once materialize
        // has started (when custom_nodes appears).
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, dest, outside) = (stop.clone(), dest.clone(), outside.clone());
            std::thread::spawn(move || {
                let (real, link) = (dest.join("custom_nodes"), dest.join("swap-link"));
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if !real.is_dir() || fs::symlink_metadata(&real).is_ok_and(|m| m.is_symlink()) {
                        std::thread::yield_now();
                        continue;
                    }
                    if fs::symlink_metadata(&link).is_err() {
                        let _ = std::os::unix::fs::symlink(&outside, &link);
                    }
                    if renameat_with(CWD, &real, CWD, &link, RenameFlags::EXCHANGE).is_ok() {
                        swaps += 1;
                        std::thread::yield_now();
                        // And back: custom_nodes is the real folder again.
                        let _ = renameat_with(CWD, &real, CWD, &link, RenameFlags::EXCHANGE);
                    }
                }
                swaps
            })
        };
        let out = run(&s.store, &["materialize", &t, arg(&dest)]);
        stop.store(true, Ordering::Relaxed);
        let _swaps = swapper.join().unwrap();
        if code(&out) != 0 {
            refused += 1;
            if refused <= 2 {
                eprintln!("a failed run: {}", stderr(&out).trim());
            }
        }
        let n = count_files(&outside);
        if n > 0 {
            escaped_runs += 1;
            for e in fs::read_dir(&outside).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    fs::remove_dir_all(&p).unwrap();
                } else {
                    fs::remove_file(&p).unwrap();
                }
            }
        }
        // Put custom_nodes back if the run ended mid-swap, then clean up.
        if fs::symlink_metadata(dest.join("custom_nodes")).is_ok_and(|m| m.is_symlink()) {
            let _ = renameat_with(
                CWD,
                dest.join("custom_nodes"),
                CWD,
                dest.join("swap-link"),
                RenameFlags::EXCHANGE,
            );
        }
        let _ = run(&s.store, &["remove", "--all", arg(&dest)]);
        let _ = fs::remove_dir_all(&dest);
    }
    eprintln!(
        "swap race: {runs} runs, {refused} refused (a folder swapped for a symlink), {escaped_runs} wrote outside"
    );
    assert_eq!(escaped_runs, 0, "runs that wrote outside DEST");
}

/// `add-url --path` places the file beneath the ComfyUI folder; a planted `models -> outside`
/// is refused, never written through.
#[test]
fn add_url_path_never_writes_through_a_planted_models_symlink() {
    use common::http::{Behavior, TestServer};
    let s = setup();
    let srv = TestServer::start();
    let body = b"model bytes".repeat(1000);
    srv.add("/m.safetensors", body.clone(), Behavior::Normal);
    let url = srv.url("/m.safetensors");
    let envs: Vec<(&str, Option<&std::ffi::OsStr>)> =
        common::NETWORK_ENV.iter().map(|k| (*k, None)).collect();

    // The plain case still places the file.
    let comfy = s.root.join("ComfyUI");
    fs::create_dir_all(&comfy).unwrap();
    let out = common::run_env(
        &s.store,
        &[
            "add-url",
            &url,
            "--path",
            "models/loras/a.safetensors",
            "--comfy",
            arg(&comfy),
        ],
        &envs,
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(
        fs::read(comfy.join("models/loras/a.safetensors")).unwrap(),
        body
    );

    // A planted symlink where a folder of the path is.
    let evil = s.root.join("ComfyUI-evil");
    let outside = s.root.join("outside");
    fs::create_dir_all(&evil).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, evil.join("models")).unwrap();
    let out = common::run_env(
        &s.store,
        &[
            "add-url",
            &url,
            "--path",
            "models/loras/b.safetensors",
            "--comfy",
            arg(&evil),
        ],
        &envs,
    );
    assert_eq!(code(&out), 1, "{}", describe(&out));
    assert!(stderr(&out).contains("refusing"), "{}", describe(&out));
    assert_eq!(count_files(&outside), 0, "nothing written outside");
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
}

/// While `remove` runs, another thread keeps swapping `DEST/custom_nodes` with a symlink to a
/// folder outside that holds files of the same names. None of them may be removed.
#[test]
fn a_folder_swapped_for_a_symlink_during_remove_never_loses_files_outside() {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let s = setup();
    let files: Vec<(String, Vec<u8>)> = (0..150)
        .map(|i| {
            (
                format!("custom_nodes/node-{}/f{i}.py", i % 5),
                format!("x = {i}\n").into_bytes(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let t = tree(&s, "many", &refs);
    let outside = s.root.join("outside");
    let decoys = || {
        for (p, d) in &files {
            let rel = p.strip_prefix("custom_nodes/").unwrap();
            write(&outside.join(rel), d);
        }
    };
    decoys();
    let runs = 30;
    let (mut failed, mut lost_runs) = (0, 0);
    for run_no in 0..runs {
        let dest = s.root.join(format!("dest-{run_no}"));
        ok(&s.store, &["materialize", &t, arg(&dest)]);
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, dest, outside) = (stop.clone(), dest.clone(), outside.clone());
            std::thread::spawn(move || {
                let (real, link) = (dest.join("custom_nodes"), dest.join("swap-link"));
                let _ = std::os::unix::fs::symlink(&outside, &link);
                while !stop.load(Ordering::Relaxed) {
                    if renameat_with(CWD, &real, CWD, &link, RenameFlags::EXCHANGE).is_ok() {
                        std::thread::yield_now();
                        let _ = renameat_with(CWD, &real, CWD, &link, RenameFlags::EXCHANGE);
                    } else {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let out = run(&s.store, &["remove", arg(&dest)]);
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        if code(&out) != 0 {
            failed += 1;
        }
        if count_files(&outside) != files.len() {
            lost_runs += 1;
            decoys();
        }
        if fs::symlink_metadata(dest.join("custom_nodes")).is_ok_and(|m| m.is_symlink()) {
            let _ = renameat_with(
                CWD,
                dest.join("custom_nodes"),
                CWD,
                dest.join("swap-link"),
                RenameFlags::EXCHANGE,
            );
        }
        let _ = fs::remove_file(dest.join("swap-link"));
        let _ = run(&s.store, &["remove", "--all", arg(&dest)]);
    }
    eprintln!("remove swap race: {runs} runs, {failed} refused, {lost_runs} removed files outside");
    assert_eq!(lost_runs, 0, "runs that removed files outside DEST");
}

/// A DEST moved elsewhere keeps working: its marker names the root of a folder that is gone,
/// which `materialize` replaces with the root named by DEST's new path.
#[test]
fn a_moved_dest_is_not_taken_for_a_hostile_marker() {
    let s = setup();
    let t = tree(&s, "a", &[("main.py", b"a\n")]);
    let (old, new) = (s.root.join("old"), s.root.join("new"));
    ok(&s.store, &["materialize", &t, arg(&old)]);
    fs::rename(&old, &new).unwrap();
    ok(&s.store, &["materialize", &t, arg(&new)]);
    let root = read_marker(&new)["root"].as_str().unwrap().to_string();
    assert!(
        roots(&s.store).iter().any(|(_, r)| r["path"] == arg(&new)),
        "DEST's own root, by its new path"
    );
    let names: Vec<String> = roots(&s.store).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&root), "{names:?}");
    ok(&s.store, &["remove", arg(&new)]);
    assert!(!new.exists());
    assert!(roots(&s.store).is_empty(), "both roots went");
}

/// What a materialize killed mid-copy leaves: an incomplete marker and a half-written file.
/// `remove` deletes nothing (the file cannot be told from a user's edit), and says to finish
/// the materialize; after that, `remove` works.
#[test]
fn remove_after_a_killed_materialize_keeps_everything_until_it_is_finished() {
    let s = setup();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let id = tree(&s, "v1", &[("a.py", b"print(1)\n"), ("big.bin", &big)]);
    let dest = s.root.join("dest");
    ok(
        &s.store,
        &["materialize", &id, arg(&dest), "--link", "copy"],
    );
    let mut m = read_marker(&dest);
    m["complete"] = false.into();
    write_marker(&dest, &m);
    let half = dest.join("big.bin");
    fs::remove_file(&half).unwrap();
    fs::write(&half, &big[..4096]).unwrap();

    let out = run(&s.store, &["remove", arg(&dest)]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(
        stderr(&out).contains("did not finish"),
        "{}",
        describe(&out)
    );
    assert!(dest.join(MARKER).is_file() && dest.join("a.py").is_file());
    assert_eq!(fs::read(&half).unwrap().len(), 4096, "nothing was touched");

    ok(
        &s.store,
        &["materialize", &id, arg(&dest), "--link", "copy"],
    );
    assert!(fs::read(&half).unwrap() == big);
    ok(&s.store, &["remove", arg(&dest)]);
    assert!(!dest.exists(), "DEST is gone");
}
