//! Materialize, status, repair and remove on real filesystems: the root ext4 (hardlink, copy,
//! symlink) and an XFS loop mount with reflink (skipped, with a message, where mounting fails).

mod common;

use common::{json, ok, run, write};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A ComfyUI-shaped source tree with every kind of entry.
fn source_tree(dir: &Path) {
    write(&dir.join("main.py"), b"import comfy\n");
    write(&dir.join("comfy/sd.py"), &vec![3u8; 200_000]);
    write(&dir.join("comfy/__init__.py"), b"");
    write(&dir.join("custom_nodes/node-a/config.json"), b"{\"a\":1}\n");
    write(&dir.join("venv/bin/activate"), b"# activate\n");
    write(&dir.join("venv/bin/tool"), b"#!/bin/sh\necho hi\n");
    fs::set_permissions(dir.join("venv/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("python3.11", dir.join("venv/bin/python")).unwrap();
    write(&dir.join("venv/lib/site/pkg/mod.py"), &vec![9u8; 50_000]);
    write(
        &dir.join("models/checkpoints/model.safetensors"),
        &(0..3_000_000u32)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<_>>(),
    );
    fs::create_dir_all(dir.join("input")).unwrap();
}

/// Assert DEST has exactly SRC's entries: bytes, exec bits, symlink targets, empty dirs.
/// A file may be a symlink into the store (symlink mode) if `store_links` is set.
fn assert_same(src: &Path, dest: &Path, store_links: bool) {
    let list = |root: &Path| -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| {
                e.path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .filter(|p| p != ".comfystore-materialized.json")
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(src), list(dest));
    for rel in list(src) {
        let (s, d) = (src.join(&rel), dest.join(&rel));
        let sm = fs::symlink_metadata(&s).unwrap();
        if sm.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&s).unwrap(),
                fs::read_link(&d).unwrap(),
                "{rel}"
            );
        } else if sm.is_dir() {
            assert!(fs::symlink_metadata(&d).unwrap().is_dir(), "{rel}");
        } else {
            let dm = fs::symlink_metadata(&d).unwrap();
            if !(store_links && dm.file_type().is_symlink()) {
                assert!(dm.is_file(), "{rel}");
            }
            assert_eq!(fs::read(&s).unwrap(), fs::read(&d).unwrap(), "{rel}");
            let dm = fs::metadata(&d).unwrap();
            assert_eq!(
                sm.permissions().mode() & 0o111 != 0,
                dm.permissions().mode() & 0o111 != 0,
                "exec bit of {rel}"
            );
        }
    }
}

struct Setup {
    _t: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    src: PathBuf,
    tree: String,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let store = root.join("store");
    let src = root.join("src");
    source_tree(&src);
    let tree = ok(&store, &["add", src.to_str().unwrap()])
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    Setup {
        _t: t,
        root,
        store,
        src,
        tree,
    }
}

#[test]
fn every_link_mode_gives_a_byte_identical_tree_on_ext4() {
    let s = setup();
    for mode in ["copy", "hardlink", "symlink", "reflink", "auto"] {
        let dest = s.root.join(format!("dest-{mode}"));
        let report = json(
            &s.store,
            &[
                "materialize",
                &s.tree,
                dest.to_str().unwrap(),
                "--link",
                mode,
            ],
        );
        assert_same(&s.src, &dest, mode == "symlink");
        let methods = &report["methods"];
        let model = dest.join("models/checkpoints/model.safetensors");
        let meta = fs::symlink_metadata(&model).unwrap();
        match mode {
            "hardlink" | "auto" if meta.nlink() >= 2 => {
                assert!(methods["hardlink"].as_u64().unwrap() > 0)
            }
            "symlink" => assert!(
                meta.file_type().is_symlink()
                    && fs::read_link(&model).unwrap().starts_with(&s.store)
            ),
            "copy" | "reflink" => assert_eq!(meta.nlink(), 1, "{mode} must not share the inode"),
            _ => {}
        }
        // Empty files and rewritten-in-place configs are never linked.
        assert_eq!(
            fs::symlink_metadata(dest.join("comfy/__init__.py"))
                .unwrap()
                .nlink(),
            1
        );
        assert!(
            fs::symlink_metadata(dest.join("custom_nodes/node-a/config.json"))
                .unwrap()
                .is_file()
        );
        assert_eq!(
            fs::symlink_metadata(dest.join("custom_nodes/node-a/config.json"))
                .unwrap()
                .nlink(),
            1
        );
        let st = json(&s.store, &["status", dest.to_str().unwrap()]);
        assert_eq!(st["ok"], st["entries"], "{mode}: {st}");
        assert_eq!(
            st["rehashed"], 0,
            "{mode}: status right after materialize uses the stat cache"
        );
        let marker: Value =
            serde_json::from_slice(&fs::read(dest.join(".comfystore-materialized.json")).unwrap())
                .unwrap();
        assert_eq!(marker["tree"], s.tree.as_str());
        assert_eq!(marker["complete"], true);
    }
    // Copies and reflinks are editable (0644/0755); hardlinks keep the object's read-only mode.
    let m = fs::metadata(s.root.join("dest-copy/main.py"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(m, 0o644);
    let m = fs::metadata(s.root.join("dest-copy/venv/bin/tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(m, 0o755);
    let roots = json(&s.store, &["root", "ls"]);
    assert_eq!(
        roots.as_array().unwrap().len(),
        5,
        "one GC root per destination"
    );
    ok(&s.store, &["fsck"]);
}

#[test]
fn prefix_policy_links_read_only_parts_and_copies_the_rest() {
    let s = setup();
    let dest = s.root.join("dest");
    let r = json(
        &s.store,
        &[
            "materialize",
            &s.tree,
            dest.to_str().unwrap(),
            "--link",
            "copy",
            "--link-prefix",
            "models=hardlink",
            "--link-prefix",
            "venv=symlink",
        ],
    );
    assert!(
        fs::symlink_metadata(dest.join("models/checkpoints/model.safetensors"))
            .unwrap()
            .nlink()
            >= 2
    );
    assert!(fs::symlink_metadata(dest.join("venv/lib/site/pkg/mod.py"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::symlink_metadata(dest.join("comfy/sd.py"))
            .unwrap()
            .nlink(),
        1
    );
    assert_eq!(r["methods"]["hardlink"], 1);
    let marker: Value =
        serde_json::from_slice(&fs::read(dest.join(".comfystore-materialized.json")).unwrap())
            .unwrap();
    assert_eq!(marker["used"]["models"]["hardlink"], 1);
    assert!(marker["used"][""]["copy"].as_u64().unwrap() >= 3);
    assert_same(&s.src, &dest, true);
}

#[test]
fn a_write_through_a_hardlink_is_caught_by_status_and_fsck() {
    let s = setup();
    let dest = s.root.join("dest");
    ok(
        &s.store,
        &[
            "materialize",
            &s.tree,
            dest.to_str().unwrap(),
            "--link",
            "hardlink",
        ],
    );
    let f = dest.join("comfy/sd.py");
    assert!(fs::metadata(&f).unwrap().nlink() >= 2);
    // Root ignores the 0444 mode: this is exactly the accident the design guards against.
    let mut perms = fs::metadata(&f).unwrap().permissions();
    perms.set_mode(0o644);
    fs::set_permissions(&f, perms).unwrap();
    let mut data = fs::read(&f).unwrap();
    data[100] ^= 0xFF;
    fs::write(&f, &data).unwrap();
    let mut perms = fs::metadata(&f).unwrap().permissions();
    perms.set_mode(0o444);
    fs::set_permissions(&f, perms).unwrap();

    let out = run(&s.store, &["--json", "status", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["store_objects_changed"][0], "comfy/sd.py", "{st}");
    let fsck = run(&s.store, &["fsck"]);
    assert_eq!(fsck.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fsck.stdout).contains("corrupt-object"));
    // Re-materializing cannot repair from a damaged object: it says what to do.
    let out = run(
        &s.store,
        &[
            "materialize",
            &s.tree,
            dest.to_str().unwrap(),
            "--link",
            "hardlink",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fsck --repair"));
    // Quarantine, re-add the pristine source, and the version repairs.
    run(&s.store, &["fsck", "--repair"]);
    ok(&s.store, &["add", s.src.to_str().unwrap()]);
    ok(
        &s.store,
        &[
            "materialize",
            &s.tree,
            dest.to_str().unwrap(),
            "--link",
            "hardlink",
        ],
    );
    ok(&s.store, &["status", "--verify", dest.to_str().unwrap()]);
    ok(&s.store, &["fsck"]);
}

#[test]
fn rematerializing_repairs_only_what_is_broken_and_keeps_user_files() {
    let s = setup();
    let dest = s.root.join("dest");
    ok(&s.store, &["materialize", &s.tree, dest.to_str().unwrap()]);
    fs::remove_file(dest.join("comfy/sd.py")).unwrap();
    fs::write(dest.join("main.py"), b"edited by a custom node\n").unwrap();
    write(&dest.join("output/ComfyUI_00001_.png"), b"user output");
    let untouched = fs::metadata(dest.join("venv/lib/site/pkg/mod.py"))
        .unwrap()
        .ino();

    let out = run(&s.store, &["--json", "status", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["missing"][0], "comfy/sd.py");
    assert_eq!(st["modified"][0], "main.py");
    assert_eq!(st["extra"][0], "output/ComfyUI_00001_.png");

    let r = json(&s.store, &["materialize", &s.tree, dest.to_str().unwrap()]);
    assert_eq!(r["written"], 2, "{r}");
    assert_eq!(
        fs::read(dest.join("output/ComfyUI_00001_.png")).unwrap(),
        b"user output"
    );
    assert_eq!(
        fs::metadata(dest.join("venv/lib/site/pkg/mod.py"))
            .unwrap()
            .ino(),
        untouched,
        "intact files are not rewritten"
    );
    ok(&s.store, &["status", "--verify", dest.to_str().unwrap()]);
}

#[test]
fn switching_versions_in_place_rewrites_only_the_differences() {
    let s = setup();
    let dest = s.root.join("dest");
    ok(&s.store, &["materialize", &s.tree, dest.to_str().unwrap()]);
    let v2 = s.root.join("v2");
    source_tree(&v2);
    fs::remove_file(v2.join("venv/bin/activate")).unwrap();
    fs::write(v2.join("main.py"), b"import comfy  # v2\n").unwrap();
    write(&v2.join("comfy/new.py"), b"new in v2\n");
    let tree2 = ok(&s.store, &["add", v2.to_str().unwrap()])
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    write(&dest.join("output/keep.png"), b"keep");

    let r = json(&s.store, &["materialize", &tree2, dest.to_str().unwrap()]);
    assert_eq!(r["written"], 2, "main.py and comfy/new.py: {r}");
    assert_eq!(r["removed"], 1, "venv/bin/activate: {r}");
    assert_eq!(
        fs::read(dest.join("output/keep.png")).unwrap(),
        b"keep",
        "user files stay"
    );
    fs::remove_dir_all(dest.join("output")).unwrap();
    assert_same(&v2, &dest, false);
    let roots = json(&s.store, &["root", "ls"]);
    assert_eq!(roots.as_array().unwrap().len(), 1);
    assert_eq!(roots[0]["ids"][0], tree2.as_str());
}

#[test]
fn remove_deletes_what_it_made_keeps_user_files_and_refuses_unsafe_targets() {
    let s = setup();
    let dest = s.root.join("dest");
    ok(
        &s.store,
        &[
            "materialize",
            &s.tree,
            dest.to_str().unwrap(),
            "--link",
            "hardlink",
        ],
    );
    write(&dest.join("output/mine.png"), b"mine");
    // A symlink planted where the tree has a directory must not lead remove outside DEST.
    let outside = s.root.join("outside");
    write(&outside.join("pkg/mod.py"), b"not yours");
    fs::rename(dest.join("venv/lib/site"), s.root.join("moved-site")).unwrap();
    symlink(&outside, dest.join("venv/lib/site")).unwrap();

    let r = json(&s.store, &["remove", dest.to_str().unwrap()]);
    assert!(
        r["kept"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "output/mine.png"),
        "{r}"
    );
    assert_eq!(fs::read(outside.join("pkg/mod.py")).unwrap(), b"not yours");
    assert_eq!(fs::read(dest.join("output/mine.png")).unwrap(), b"mine");
    assert!(!dest.join("main.py").exists());
    assert!(!dest.join(".comfystore-materialized.json").exists());
    assert_eq!(json(&s.store, &["root", "ls"]).as_array().unwrap().len(), 0);
    ok(&s.store, &["fsck"]);
    // Store objects survive every mode of removal.
    assert_eq!(
        json(&s.store, &["ls", &s.tree]).as_array().unwrap().len(),
        10
    );

    // Refusals: no marker, /, the store itself.
    for target in [s.src.to_str().unwrap(), "/", s.store.to_str().unwrap()] {
        let out = run(&s.store, &["remove", target]);
        assert_eq!(out.status.code(), Some(1), "{target}");
    }
    assert!(s.src.join("main.py").exists());

    // --all removes user files too.
    let dest2 = s.root.join("dest2");
    ok(&s.store, &["materialize", &s.tree, dest2.to_str().unwrap()]);
    write(&dest2.join("output/x.png"), b"x");
    ok(&s.store, &["remove", "--all", dest2.to_str().unwrap()]);
    assert!(!dest2.exists());
}

/// Write a tree manifest straight into the store, bypassing every check of `add`.
fn plant_tree(store: &Path, entries: &[&str]) -> String {
    let body = format!(
        "{{\"schema\":\"comfystore.tree/1\",\"entries\":[\n{}\n]}}\n",
        entries.join(",\n")
    );
    let hex = blake3::hash(body.as_bytes()).to_hex().to_string();
    let p = store.join("trees/b3").join(&hex[..2]).join(&hex[2..]);
    fs::write(&p, body).unwrap();
    format!("b3:{hex}")
}

#[test]
fn hostile_trees_are_refused_before_anything_is_written() {
    let s = setup();
    let obj = json(&s.store, &["add", s.src.join("main.py").to_str().unwrap()])[0]["report"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file =
        |p: &str| format!("{{\"path\":\"{p}\",\"kind\":\"file\",\"size\":13,\"id\":\"{obj}\"}}");
    let outside = s.root.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let cases = [
        vec![file("../escaped.py")],
        vec![file(&format!("{}/abs.py", outside.display()))],
        vec![
            format!(
                "{{\"path\":\"l\",\"kind\":\"symlink\",\"target\":\"{}\"}}",
                outside.display()
            ),
            file("l/through.py"),
        ],
        vec![file("a/./b.py")],
    ];
    for (i, entries) in cases.iter().enumerate() {
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let tree = plant_tree(&s.store, &refs);
        let dest = s.root.join(format!("hostile-{i}"));
        let out = run(&s.store, &["materialize", &tree, dest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "case {i}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid manifest"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !dest.exists() || fs::read_dir(&dest).unwrap().count() == 0,
            "case {i} wrote into DEST"
        );
    }
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(!s.root.join("escaped.py").exists());

    // A symlink the user planted inside DEST is not written through on repair.
    let dest = s.root.join("dest");
    ok(&s.store, &["materialize", &s.tree, dest.to_str().unwrap()]);
    fs::remove_dir_all(dest.join("custom_nodes/node-a")).unwrap();
    symlink(&outside, dest.join("custom_nodes/node-a")).unwrap();
    let out = run(&s.store, &["materialize", &s.tree, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to write through"));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

/// An XFS filesystem with reflink on a loop device, unmounted on drop.
struct Xfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Xfs {
    fn mount() -> Result<Xfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let f = fs::File::create(&img).map_err(|e| e.to_string())?;
        f.set_len(1 << 30).map_err(|e| e.to_string())?;
        let step = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        step(
            Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&img),
        )?;
        step(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        )?;
        Ok(Xfs { mnt, _dir: dir })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

#[test]
fn reflinks_on_xfs_and_fallback_across_filesystems() {
    let xfs = match Xfs::mount() {
        Ok(x) => x,
        Err(e) => {
            common::cannot_run(
                "reflinks_on_xfs_and_fallback_across_filesystems",
                &format!("cannot mount an XFS loop filesystem ({e}); needs root and xfsprogs"),
            );
            return;
        }
    };
    let s = setup();
    let store = xfs.mnt.join("store");
    let tree = ok(&store, &["add", s.src.to_str().unwrap()])
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(tree, s.tree, "tree ids do not depend on the filesystem");

    // Same XFS filesystem: reflinks (own inodes, shared extents).
    let dest = xfs.mnt.join("v1");
    let r = json(
        &store,
        &[
            "materialize",
            &tree,
            dest.to_str().unwrap(),
            "--link",
            "reflink",
        ],
    );
    assert!(r["methods"]["reflink"].as_u64().unwrap() >= 5, "{r}");
    assert_same(&s.src, &dest, false);
    assert_eq!(
        fs::metadata(dest.join("models/checkpoints/model.safetensors"))
            .unwrap()
            .nlink(),
        1
    );
    // Editing a reflinked file leaves the store intact.
    fs::write(dest.join("comfy/sd.py"), b"edited").unwrap();
    ok(&store, &["fsck"]);
    let st = run(&store, &["--json", "status", dest.to_str().unwrap()]);
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["modified"][0], "comfy/sd.py");
    assert_eq!(st["store_objects_changed"].as_array().unwrap().len(), 0);

    // auto prefers reflink over hardlink where both work.
    let r = json(
        &store,
        &[
            "materialize",
            &tree,
            xfs.mnt.join("auto").to_str().unwrap(),
            "--link",
            "auto",
        ],
    );
    assert!(r["methods"].get("hardlink").is_none(), "{r}");

    // Store on XFS, destination on another filesystem: reflink and hardlink fall back to copy.
    for mode in ["reflink", "hardlink", "auto"] {
        let other = s.root.join(format!("cross-{mode}"));
        let r = json(
            &store,
            &[
                "materialize",
                &tree,
                other.to_str().unwrap(),
                "--link",
                mode,
            ],
        );
        assert_eq!(
            r["methods"].as_object().unwrap().keys().collect::<Vec<_>>(),
            vec!["copy"],
            "{mode}: {r}"
        );
        assert_same(&s.src, &other, false);
    }
    // Symlinks work across filesystems.
    let other = s.root.join("cross-symlink");
    ok(
        &store,
        &[
            "materialize",
            &tree,
            other.to_str().unwrap(),
            "--link",
            "symlink",
        ],
    );
    assert_same(&s.src, &other, true);
    for d in [
        "cross-reflink",
        "cross-hardlink",
        "cross-auto",
        "cross-symlink",
    ] {
        ok(&store, &["remove", s.root.join(d).to_str().unwrap()]);
    }
    ok(&store, &["remove", "--all", dest.to_str().unwrap()]);
    ok(&store, &["fsck"]);
}
