//! `comfystore lock`, `diff`, `show`, `import-snapshot` and `export-snapshot` on the
//! ComfyUI-shaped fixture of `tests/common/comfy.rs`, through the real binary.
//!
//! Every test builds its own fixture and store in its own temp dir (tests run in parallel).
//! Every `lock` runs with HF_HOME, HF_HUB_CACHE and HOME inside that temp dir and without
//! VIRTUAL_ENV, so nothing from the machine running the tests leaks into a lock.

mod common;

use common::comfy::{
    pseudo_random, ComfyFixture, COMFY_ORIGIN, NODE_A_ORIGIN, NODE_B_ORIGIN, OLD_NODE_ORIGIN,
};
use common::{json, model, node, ok, run, s, write};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Every model the fixture has, in lock order.
const MODEL_PATHS: [&str; 6] = [
    "models/checkpoints/a.safetensors",
    "models/loras/b.safetensors",
    "models/loras/b_copy.safetensors",
    "models/loras/extra.safetensors",
    "models/upscale_models/x4.pth",
    "models/vae/sub/c.pt",
];

/// A fixture, a store and private Hugging Face / home folders, all in one temp dir.
struct Env {
    _tmp: tempfile::TempDir,
    /// The temp dir, canonical.
    dir: PathBuf,
    f: ComfyFixture,
    store: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let f = ComfyFixture::build(&dir.join("fx"));
        for d in ["hf/hub", "home"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        Env {
            store: dir.join("store"),
            _tmp: tmp,
            dir,
            f,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `comfystore --store S [pre...] lock COMFY --tag TAG -o OUT [extra...]` with a clean
    /// environment.
    fn lock_output(&self, pre: &[&str], tag: &str, out: &Path, extra: &[&str]) -> Output {
        let comfy = self.f.comfy.to_str().unwrap();
        let mut args: Vec<&str> = pre.to_vec();
        args.extend(["lock", comfy, "--tag", tag, "-o", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        self.comfystore(&self.dir, &self.store, &args)
    }

    /// `comfystore --store STORE ARGS...` run in `cwd`, with a clean environment (and git
    /// without user or system config).
    fn comfystore(&self, cwd: &Path, store: &Path, args: &[&str]) -> Output {
        let hf_home = self.p("hf");
        let hf_hub = self.p("hf/hub");
        let home = self.p("home");
        Command::new(env!("CARGO_BIN_EXE_comfystore"))
            .current_dir(cwd)
            .arg("--store")
            .arg(store)
            .args(args)
            .env("HF_HOME", hf_home)
            .env("HF_HUB_CACHE", hf_hub)
            .env("HOME", home)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("COMFYSTORE_DIR")
            .env_remove("COMFYSTORE_INDEX")
            // The fixture's packages are on no index (see common::run).
            .env("COMFYSTORE_NO_PIN_WHEELS", "1")
            .env_remove("VIRTUAL_ENV")
            .env_remove("COMFY_HOME")
            .env_remove("RUST_LOG")
            .output()
            .expect("run comfystore")
    }

    /// `lock --json`, required to succeed; returns its JSON output.
    fn lock(&self, tag: &str, out: &Path, extra: &[&str]) -> Value {
        let o = self.lock_output(&["--json"], tag, out, extra);
        assert_success(&o, "lock --json");
        serde_json::from_slice(&o.stdout).expect("lock --json prints JSON")
    }

    /// `lock` (text), required to succeed; returns (stdout, stderr).
    fn lock_text(&self, tag: &str, out: &Path, extra: &[&str]) -> (String, String) {
        let o = self.lock_output(&[], tag, out, extra);
        assert_success(&o, "lock");
        (
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8(o.stderr).unwrap(),
        )
    }

    /// Where the fixture keeps the file a model path of the lock names.
    fn model_file(&self, path: &str) -> PathBuf {
        match path.strip_prefix("models/") {
            Some(rest @ ("loras/extra.safetensors" | "upscale_models/x4.pth")) => {
                self.f.shared_models.join(rest)
            }
            _ => self.f.comfy.join(path),
        }
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        self.f.comfy.join("custom_nodes").join(name)
    }
}

fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn git(dir: &Path, args: &[&str]) -> String {
    ComfyFixture::git(dir, args)
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_b3_id(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| s.strip_prefix("b3:"))
        .is_some_and(is_hex64)
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// `comfystore --json ls TREE`: path → entry.
fn ls(store: &Path, tree: &Value) -> BTreeMap<String, Value> {
    let id = tree
        .as_str()
        .unwrap_or_else(|| panic!("not a tree id: {tree}"));
    json(store, &["ls", id])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// `touch -h` every file, folder and symlink under `dir` (symlinks themselves, never what
/// they point to, so nothing outside the temp dir is touched).
fn touch_all(dir: &Path) {
    let st = Command::new("find")
        .arg(dir)
        .args(["-exec", "touch", "-h", "{}", "+"])
        .status()
        .unwrap();
    assert!(st.success(), "find -exec touch failed");
}

/// Remove a file that may be read-only (hardlinked into the store) and write new bytes.
fn replace_file(path: &Path, data: &[u8]) {
    fs::remove_file(path).unwrap();
    write(path, data);
}

/// `diff --json A B` and `diff A B`: (exit code of both, changes, text lines).
fn diff(store: &Path, a: &Path, b: &Path) -> (i32, Vec<Value>, Vec<String>) {
    let j = run(store, &["--json", "diff", s(a), s(b)]);
    let t = run(store, &["diff", s(a), s(b)]);
    let code = j.status.code().unwrap();
    assert_eq!(
        t.status.code().unwrap(),
        code,
        "text and JSON diff disagree on the exit code"
    );
    let v: Value = serde_json::from_slice(&j.stdout).expect("diff --json prints JSON");
    let changes = v["changes"].as_array().expect("changes array").clone();
    assert_eq!(v["equal"], changes.is_empty(), "{v:#}");
    let lines = String::from_utf8(t.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    (code, changes, lines)
}

// ---------------------------------------------------------------------------------------------
// 1. Every field of the lock of the fixture.

#[test]
fn lock_records_every_part_of_the_install() {
    let e = Env::new();
    let f = &e.f;
    // pip compiled byte code into site-packages; make sure some is there to be left out.
    let site = f.site_packages();
    write(
        &site.join("tinyfoo/__pycache__/__init__.cpython-3x.pyc"),
        &pseudo_random(21, 99),
    );
    let out = e.p("v1.lock.json");
    let res = e.lock("v1", &out, &[]);
    assert_eq!(res["lockfile"], s(&out));
    assert_eq!(res["unchanged"], false);
    assert_eq!(res["root"], "lock/v1");
    assert_eq!(res["report"]["dirty"], json!([]), "{res:#}");
    assert_eq!(res["report"]["custom_nodes"], 4);
    assert_eq!(res["report"]["packages"], 3);
    assert_eq!(res["report"]["models"], 6);

    let bytes = fs::read(&out).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let lock: Value = serde_json::from_str(&text).unwrap();

    // Format: 2-space indentation, one trailing newline, top-level keys in order.
    assert!(text.ends_with("}\n") && !text.ends_with("\n\n"), "{text}");
    assert!(text.starts_with("{\n  \"schema\": \"comfystore.lock/1\",\n  \"tag\": \"v1\",\n"));
    let top: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  \"") && !l.starts_with("   "))
        .map(|l| l[3..].split('"').next().unwrap())
        .collect();
    assert_eq!(
        top,
        [
            "schema",
            "tag",
            "comfyui",
            "custom_nodes",
            "python",
            "models"
        ]
    );
    assert!(!text.contains('\t'));

    // ComfyUI.
    let c = &lock["comfyui"];
    assert_eq!(keys(c), BTreeSet::from(["repo", "commit", "tree"]), "{c:#}");
    assert_eq!(c["repo"], COMFY_ORIGIN);
    assert_eq!(c["commit"], git(&f.comfy, &["rev-parse", "HEAD"]));
    assert!(is_b3_id(&c["tree"]), "{c:#}");
    let tree = ls(&e.store, &c["tree"]);
    assert_eq!(tree["main.py"]["kind"], "file");
    assert_eq!(tree["latest.py"]["kind"], "symlink");
    assert_eq!(tree["latest.py"]["target"], "main.py");
    assert_eq!(tree["script_examples/run.sh"]["kind"], "exec");
    for p in tree.keys() {
        for bad in ["venv", ".git"] {
            assert!(
                p != bad && !p.starts_with(&format!("{bad}/")),
                "comfyui tree holds {p}"
            );
        }
        assert!(!p.contains("__pycache__") && !p.ends_with(".pyc"), "{p}");
    }
    // Exactly what git would check out: every tracked file (those under the data folders
    // too: they are ComfyUI's own), and untracked ones outside the data folders.
    let mut git_files: BTreeSet<String> = git(&f.comfy, &["ls-files", "--cached"])
        .lines()
        .map(String::from)
        .collect();
    git_files.extend(
        git(&f.comfy, &["ls-files", "--others", "--exclude-standard"])
            .lines()
            .filter(|p| {
                !["models/", "custom_nodes/", "input/", "output/"]
                    .iter()
                    .any(|d| p.starts_with(d))
            })
            .map(String::from),
    );
    let tree_files: BTreeSet<String> = tree
        .iter()
        .filter(|(_, v)| v["kind"] != "dir")
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(tree_files, git_files);

    // Custom nodes, sorted by name.
    let names: Vec<&str> = lock["custom_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ComfyUI-NodeA", "ComfyUI-NodeB", "OldNode", "PlainNode"]
    );
    let a = node(&lock, "ComfyUI-NodeA");
    assert_eq!(keys(a), BTreeSet::from(["name", "repo", "commit", "tree"]));
    assert_eq!(a["repo"], NODE_A_ORIGIN);
    assert_eq!(
        a["commit"],
        git(&e.node_dir("ComfyUI-NodeA"), &["rev-parse", "HEAD"])
    );
    assert!(is_b3_id(&a["tree"]));
    let a_tree = ls(&e.store, &a["tree"]);
    assert_eq!(
        a_tree.keys().map(String::as_str).collect::<Vec<_>>(),
        [".gitignore", "__init__.py", "nodes.py", "requirements.txt"]
    );
    assert!(!a_tree
        .keys()
        .any(|p| p.contains("config.local.json") || p.contains("__pycache__")));

    let b = node(&lock, "ComfyUI-NodeB");
    assert_eq!(b["repo"], "https://github.com/example/ComfyUI-NodeB");
    assert_eq!(
        b["commit"],
        git(&e.node_dir("ComfyUI-NodeB"), &["rev-parse", "HEAD"])
    );
    assert!(is_b3_id(&b["tree"]));
    assert!(NODE_B_ORIGIN.contains("s3cret"));
    assert!(!text.contains("s3cret"), "the lock leaks NodeB's token");
    assert!(!text.contains("user:"), "the lock leaks NodeB's user name");

    let plain = node(&lock, "PlainNode");
    assert_eq!(keys(plain), BTreeSet::from(["name", "tree"]), "{plain:#}");
    assert!(is_b3_id(&plain["tree"]));

    let old = node(&lock, "OldNode");
    assert_eq!(old["disabled"], true);
    assert_eq!(old["repo"], OLD_NODE_ORIGIN);
    assert!(is_b3_id(&old["tree"]));
    // `disabled` appears only when true.
    assert_eq!(
        text.matches("\"disabled\"").count(),
        1,
        "disabled written for enabled nodes"
    );

    // Python.
    let py = &lock["python"];
    let version = Command::new(f.venv.join("bin/python"))
        .args(["-c", "import platform;print(platform.python_version())"])
        .output()
        .unwrap();
    assert!(version.status.success());
    assert_eq!(
        py["version"],
        String::from_utf8(version.stdout).unwrap().trim()
    );
    let abi = py["abi"].as_str().unwrap();
    assert!(
        abi.starts_with("cp3") && abi.len() >= 4 && abi[2..].bytes().all(|b| b.is_ascii_digit()),
        "abi {abi}"
    );
    assert!(!py["platform"].as_str().unwrap().is_empty());
    let pkgs: Vec<(&str, &str)> = py["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pkgs,
        [
            ("directpkg", "0.3"),
            ("tiny-bar", "2.1"),
            ("tinyfoo", "1.0.0")
        ]
    );
    let direct = &py["packages"][0];
    assert!(
        direct["url"]
            .as_str()
            .unwrap()
            .ends_with("directpkg-0.3-py3-none-any.whl"),
        "{direct:#}"
    );
    assert_eq!(
        direct["sha256"],
        sha256sum(&f.wheels.join("directpkg-0.3-py3-none-any.whl"))
    );
    for p in &py["packages"].as_array().unwrap()[1..] {
        assert_eq!(keys(p), BTreeSet::from(["name", "version"]), "{p:#}");
    }
    assert!(!text.contains("\"editable\""));
    let env_tree = ls(&e.store, &py["tree"]);
    assert!(
        env_tree.keys().any(|p| {
            p.strip_prefix("lib/python3.")
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(minor, rest)| {
                    minor.bytes().all(|b| b.is_ascii_digit())
                        && rest == "site-packages/tinyfoo/__init__.py"
                })
        }),
        "no tinyfoo/__init__.py in the environment tree"
    );
    let cached: Vec<&String> = env_tree
        .keys()
        .filter(|p| p.split('/').any(|c| c == "__pycache__"))
        .collect();
    assert!(cached.is_empty(), "byte code in the env tree: {cached:?}");

    // Models.
    let models = lock["models"].as_array().unwrap();
    let paths: Vec<&str> = models.iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(paths, MODEL_PATHS);
    assert!(!text.contains("put_checkpoints_here"));
    for m in models {
        let path = m["path"].as_str().unwrap();
        let file = e.model_file(path);
        assert_eq!(
            keys(m),
            BTreeSet::from(["path", "size", "sha256", "blake3", "sources"])
        );
        assert_eq!(m["sha256"], sha256sum(&file), "{path}");
        assert_eq!(m["size"], fs::metadata(&file).unwrap().len(), "{path}");
        assert!(is_hex64(m["blake3"].as_str().unwrap()), "{path}");
        assert_eq!(m["sources"], json!([]));
    }
    let (b1, b2) = (
        model(&lock, "models/loras/b.safetensors"),
        model(&lock, "models/loras/b_copy.safetensors"),
    );
    assert_eq!(b1["sha256"], b2["sha256"]);
    assert_eq!(b1["blake3"], b2["blake3"]);
    assert_ne!(b1["sha256"], model(&lock, MODEL_PATHS[0])["sha256"]);
    assert_eq!(res["report"]["model_bytes"], 7_213_063);
}

// ---------------------------------------------------------------------------------------------
// 2. Determinism and the stat cache.

#[test]
fn relock_is_byte_identical_and_reads_nothing() {
    let e = Env::new();
    let out = e.p("v1.lock.json");
    let first = e.lock("v1", &out, &[]);
    let bytes = fs::read(&out).unwrap();
    let hashed_first = first["report"]["hashed_files"].as_u64().unwrap();
    assert!(hashed_first > 0, "{first:#}");

    let (stdout, _) = e.lock_text("v1", &out, &[]);
    assert_eq!(stdout, format!("{} (unchanged)\n", out.display()));
    assert_eq!(fs::read(&out).unwrap(), bytes);

    // New mtimes and ctimes everywhere: everything is read again, the lock stays the same.
    touch_all(&e.f.root);
    // Let the touch leave the racy window, so that this run can trust the stat data it saves.
    std::thread::sleep(Duration::from_millis(2300));
    let after_touch = e.lock("v1", &out, &[]);
    assert_eq!(after_touch["unchanged"], true, "{after_touch:#}");
    assert_eq!(fs::read(&out).unwrap(), bytes);
    assert!(
        after_touch["report"]["hashed_files"].as_u64().unwrap() > 0,
        "touched files were trusted: {after_touch:#}"
    );

    // A written lock elsewhere, same bytes; and now nothing is read.
    let out2 = e.p("again.lock.json");
    let again = e.lock("v1", &out2, &[]);
    assert_eq!(fs::read(&out2).unwrap(), bytes);
    let r = &again["report"];
    assert_eq!(r["hashed_files"], 0, "{again:#}");
    assert_eq!(r["cached_files"], hashed_first, "{again:#}");
    assert_eq!(r["new_objects"], 0, "{again:#}");
    assert_eq!(r["model_adoption"], json!({"cached": 6}), "{again:#}");
}

// ---------------------------------------------------------------------------------------------
// 3. diff.

#[test]
fn diff_reports_a_node_moved_to_another_commit() {
    let e = Env::new();
    let v1 = e.p("v1.lock.json");
    e.lock("v1", &v1, &[]);
    let (code, changes, lines) = diff(&e.store, &v1, &v1);
    assert_eq!((code, changes.len(), lines.len()), (0, 0, 0));

    let a = e.node_dir("ComfyUI-NodeA");
    let old = git(&a, &["rev-parse", "HEAD"]);
    let new = ComfyFixture::commit_file(&a, "nodes.py", "class NodeA:\n    pass\n");
    assert_ne!(old, new);
    let v2 = e.p("v2.lock.json");
    e.lock("v2", &v2, &[]);

    let (code, changes, lines) = diff(&e.store, &v1, &v2);
    assert_eq!(code, 1);
    assert_eq!(
        changes,
        [
            json!({"part": "node", "name": "ComfyUI-NodeA", "change": "moved",
                "from": &old[..12], "to": &new[..12]})
        ]
    );
    assert_eq!(
        lines,
        [format!(
            "~ node ComfyUI-NodeA moved: {} -> {}",
            &old[..12],
            &new[..12]
        )]
    );
}

#[test]
fn diff_reports_an_added_package() {
    let e = Env::new();
    let v1 = e.p("v1.lock.json");
    e.lock("v1", &v1, &[]);
    ComfyFixture::build_wheel(
        &e.f.wheels,
        "newpkg",
        "0.1",
        &[("newpkg/__init__.py", "X = 1\n")],
    );
    e.f.pip_install(&["newpkg==0.1"]);
    let v2 = e.p("v2.lock.json");
    e.lock("v2", &v2, &[]);
    let (code, changes, lines) = diff(&e.store, &v1, &v2);
    assert_eq!(code, 1);
    assert_eq!(
        changes,
        [json!({"part": "package", "name": "newpkg", "change": "added"})]
    );
    assert_eq!(lines, ["+ package newpkg added"]);
    // And the other way round.
    let (code, changes, _) = diff(&e.store, &v2, &v1);
    assert_eq!(code, 1);
    assert_eq!(
        changes,
        [json!({"part": "package", "name": "newpkg", "change": "removed"})]
    );
}

#[test]
fn diff_reports_a_changed_model() {
    let e = Env::new();
    let v1 = e.p("v1.lock.json");
    let l1 = {
        e.lock("v1", &v1, &[]);
        read_json(&v1)
    };
    let c = e.f.comfy.join("models/vae/sub/c.pt");
    replace_file(&c, &pseudo_random(33, 5 << 20));
    let v2 = e.p("v2.lock.json");
    e.lock("v2", &v2, &[]);
    let l2 = read_json(&v2);
    let (from, to) = (
        model(&l1, "models/vae/sub/c.pt")["sha256"]
            .as_str()
            .unwrap(),
        model(&l2, "models/vae/sub/c.pt")["sha256"]
            .as_str()
            .unwrap(),
    );
    assert_ne!(from, to);
    assert_eq!(to, sha256sum(&c));
    let (code, changes, lines) = diff(&e.store, &v1, &v2);
    assert_eq!(code, 1);
    assert_eq!(changes.len(), 1, "{changes:#?}");
    let ch = &changes[0];
    assert_eq!(
        (&ch["part"], &ch["name"], &ch["change"]),
        (
            &json!("model"),
            &json!("models/vae/sub/c.pt"),
            &json!("changed")
        )
    );
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("~ model models/vae/sub/c.pt changed"),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Models are not duplicated on disk.

/// inode → path of every object file in the store.
fn store_inodes(store: &Path) -> HashMap<u64, PathBuf> {
    walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.metadata().unwrap().ino(), e.path().to_path_buf()))
        .collect()
}

fn object_path(store: &Path, blake3_hex: &str) -> PathBuf {
    store
        .join("objects/b3")
        .join(&blake3_hex[..2])
        .join(&blake3_hex[2..])
}

#[test]
fn models_are_adopted_by_hardlink_not_copied() {
    let e = Env::new();
    let out = e.p("v1.lock.json");
    let res = e.lock("v1", &out, &[]);
    assert_eq!(
        res["report"]["model_adoption"],
        json!({"hardlink": 5, "present": 1}),
        "{res:#}"
    );
    let lock = read_json(&out);
    let inodes = store_inodes(&e.store);

    // Group the user's files by content.
    let mut by_content: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for m in lock["models"].as_array().unwrap() {
        by_content
            .entry(m["blake3"].as_str().unwrap().to_string())
            .or_default()
            .push(e.model_file(m["path"].as_str().unwrap()));
    }
    assert_eq!(by_content.len(), 5);
    for (b3, files) in &by_content {
        let obj = object_path(&e.store, b3);
        let obj_meta =
            fs::metadata(&obj).unwrap_or_else(|err| panic!("no object {}: {err}", obj.display()));
        assert!(inodes.contains_key(&obj_meta.ino()));
        let linked: Vec<&PathBuf> = files
            .iter()
            .filter(|p| fs::metadata(p).unwrap().ino() == obj_meta.ino())
            .collect();
        assert_eq!(
            linked.len(),
            1,
            "{b3}: exactly one of {files:?} should be the store's inode"
        );
        for p in files {
            let m = fs::metadata(p).unwrap();
            if m.ino() == obj_meta.ino() {
                assert_eq!(m.nlink(), 2, "{}", p.display());
                assert_eq!(m.mode() & 0o777, 0o444, "{}", p.display());
            } else {
                assert_eq!(m.nlink(), 1, "{}", p.display());
                assert!(!inodes.contains_key(&m.ino()));
            }
        }
    }
    // b and b_copy: one content, stored once, one of the two linked.
    let nlinks: Vec<u64> = ["b.safetensors", "b_copy.safetensors"]
        .iter()
        .map(|n| {
            fs::metadata(e.f.comfy.join("models/loras").join(n))
                .unwrap()
                .nlink()
        })
        .collect();
    assert_eq!(
        nlinks.iter().filter(|n| **n == 2).count(),
        1,
        "nlinks {nlinks:?}"
    );
    // Nothing left behind in the store's tmp/.
    let tmp_files: Vec<_> = fs::read_dir(e.store.join("tmp"))
        .map(|d| d.map(|x| x.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(tmp_files.is_empty(), "{tmp_files:?}");
}

#[test]
fn adopt_copy_leaves_user_files_alone() {
    let e = Env::new();
    let out = e.p("v1.lock.json");
    let res = e.lock("v1", &out, &["--adopt", "copy"]);
    let adoption = &res["report"]["model_adoption"];
    assert_eq!(adoption.get("hardlink"), None, "{res:#}");
    assert_eq!(adoption.get("reflink"), None, "{res:#}");
    let inodes = store_inodes(&e.store);
    for p in MODEL_PATHS {
        let m = fs::metadata(e.model_file(p)).unwrap();
        assert_eq!(m.nlink(), 1, "{p}");
        assert_eq!(m.mode() & 0o777, 0o644, "{p}");
        assert!(
            !inodes.contains_key(&m.ino()),
            "{p} shares the store's inode"
        );
    }
    // Yet the store has every model.
    let lock = read_json(&out);
    for m in lock["models"].as_array().unwrap() {
        let obj = object_path(&e.store, m["blake3"].as_str().unwrap());
        assert_eq!(
            fs::read(&obj).unwrap(),
            fs::read(e.model_file(m["path"].as_str().unwrap())).unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Dirty repos; caches never count.

#[test]
fn uncommitted_changes_make_a_repo_dirty_and_caches_do_not() {
    let e = Env::new();
    let clean = e.p("clean.lock.json");
    e.lock("v1", &clean, &[]);
    let clean_bytes = fs::read(&clean).unwrap();
    let clean_lock = read_json(&clean);
    let a_dir = e.node_dir("ComfyUI-NodeA");

    // A tracked file of NodeA edited.
    let nodes_py = a_dir.join("nodes.py");
    let mut src = fs::read_to_string(&nodes_py).unwrap();
    src.push_str("# local tweak\n");
    fs::write(&nodes_py, &src).unwrap();
    let dirty = e.p("dirty.lock.json");
    // Variants of the same tag in other files: their roots would drop clean's (refused).
    let res = e.lock("v1", &dirty, &["--no-root"]);
    assert_eq!(
        res["report"]["dirty"],
        json!(["custom_nodes/ComfyUI-NodeA"]),
        "{res:#}"
    );
    let dirty_lock = read_json(&dirty);
    let (a0, a1) = (
        node(&clean_lock, "ComfyUI-NodeA"),
        node(&dirty_lock, "ComfyUI-NodeA"),
    );
    assert_eq!(a1["dirty"], true);
    assert_eq!(a0.get("dirty"), None);
    assert_eq!(a1["commit"], a0["commit"]);
    assert_ne!(a1["tree"], a0["tree"]);
    assert_eq!(dirty_lock["comfyui"].get("dirty"), None);
    assert_eq!(ls(&e.store, &a1["tree"])["nodes.py"]["size"], src.len());
    let (_, stderr) = e.lock_text("v1", &e.p("dirty2.lock.json"), &["--no-root"]);
    assert!(
        stderr.lines().any(|l| l.starts_with("warning: ")
            && l.contains("custom_nodes/ComfyUI-NodeA")
            && l.contains("uncommitted")),
        "no warning about NodeA:\n{stderr}"
    );
    git(&a_dir, &["checkout", "--", "nodes.py"]);

    // An untracked, not ignored file in ComfyUI's root.
    let new_file = e.f.comfy.join("my_script.py");
    write(&new_file, b"print('mine')\n");
    let dirty = e.p("dirty3.lock.json");
    let res = e.lock("v1", &dirty, &["--no-root"]);
    assert_eq!(res["report"]["dirty"], json!(["comfyui"]), "{res:#}");
    let l = read_json(&dirty);
    assert_eq!(l["comfyui"]["dirty"], true);
    assert_eq!(l["comfyui"]["commit"], clean_lock["comfyui"]["commit"]);
    assert_ne!(l["comfyui"]["tree"], clean_lock["comfyui"]["tree"]);
    assert!(ls(&e.store, &l["comfyui"]["tree"]).contains_key("my_script.py"));
    fs::remove_file(&new_file).unwrap();

    // Byte code caches, in the git ComfyUI and in the plain node: not part of anything.
    for p in [
        "ComfyUI/__pycache__/main.cpython-311.pyc",
        "ComfyUI/comfy/__pycache__/sd.cpython-311.pyc",
        "ComfyUI/custom_nodes/PlainNode/__pycache__/x.pyc",
        "ComfyUI/custom_nodes/PlainNode/data/__pycache__/y.cpython-311.pyc",
        "ComfyUI/custom_nodes/ComfyUI-NodeB/__pycache__/z.pyc",
    ] {
        write(&e.f.root.join(p), &pseudo_random(44, 77));
    }
    let cached = e.p("cached.lock.json");
    let res = e.lock("v1", &cached, &[]);
    assert_eq!(res["report"]["dirty"], json!([]), "{res:#}");
    assert_eq!(
        String::from_utf8(fs::read(&cached).unwrap()).unwrap(),
        String::from_utf8(clean_bytes).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed locks are refused.

#[test]
fn malformed_locks_are_refused_by_show_and_diff() {
    let e = Env::new();
    let good = e.p("good.lock.json");
    e.lock("v1", &good, &[]);
    let valid = read_json(&good);
    assert_eq!(run(&e.store, &["show", s(&good)]).status.code(), Some(0));

    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Option<Edit>, &[&str])> = vec![
        ("invalid JSON", None, &["JSON"]),
        (
            "schema 2",
            Some(|v| v["schema"] = json!("comfystore.lock/2")),
            &["schema", "comfystore.lock/2"],
        ),
        (
            "model path ..",
            Some(|v| v["models"][0]["path"] = json!("../evil.bin")),
            &["models[0].path", "../evil.bin"],
        ),
        (
            "model path absolute",
            Some(|v| v["models"][0]["path"] = json!("/abs")),
            &["models[0].path", "/abs", "absolute"],
        ),
        (
            "short sha256",
            Some(|v| v["models"][1]["sha256"] = json!("0123456789")),
            &["sha256", "0123456789"],
        ),
        (
            "unknown top-level field",
            Some(|v| v["extra"] = json!(true)),
            &["unknown field", "extra"],
        ),
        (
            "duplicate model paths",
            Some(|v| v["models"][1]["path"] = v["models"][0]["path"].clone()),
            &["duplicate", "models/checkpoints/a.safetensors"],
        ),
        (
            "non-hex commit",
            Some(|v| v["comfyui"]["commit"] = json!("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")),
            &["comfyui.commit", "zzzzzzzz"],
        ),
    ];
    for (i, (what, edit, needles)) in cases.iter().enumerate() {
        let bad = e.p(&format!("bad{i}.lock.json"));
        match edit {
            Some(edit) => {
                let mut v = valid.clone();
                edit(&mut v);
                fs::write(&bad, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
            }
            None => {
                let text = fs::read_to_string(&good).unwrap();
                fs::write(&bad, &text[..text.len() / 2]).unwrap();
            }
        }
        let show = run(&e.store, &["show", s(&bad)]);
        let show_json = run(&e.store, &["--json", "show", s(&bad)]);
        let d1 = run(&e.store, &["diff", s(&bad), s(&good)]);
        let d2 = run(&e.store, &["diff", s(&good), s(&bad)]);
        for (cmd, o, code) in [
            ("show", &show, 1),
            ("show --json", &show_json, 1),
            ("diff bad good", &d1, 2),
            ("diff good bad", &d2, 2),
        ] {
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(code),
                "{what}: {cmd} should exit {code}\nstdout:\n{}\nstderr:\n{stderr}",
                String::from_utf8_lossy(&o.stdout)
            );
            for n in *needles {
                assert!(
                    stderr.contains(n),
                    "{what}: {cmd}'s stderr does not mention {n:?}:\n{stderr}"
                );
            }
            assert!(
                stderr.contains(s(&bad)),
                "{what}: {cmd} does not name the file"
            );
        }
        // Text output of show/diff stays empty: nothing was half-done.
        assert!(show.stdout.is_empty() && d1.stdout.is_empty(), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. ComfyUI-Manager snapshots.

#[test]
fn manager_snapshot_round_trips_through_a_lock() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let snap = json!({
        "comfyui": "0123456789abcdef0123456789abcdef01234567",
        "git_custom_nodes": {
            "https://github.com/example/ComfyUI-NodeA.git": {
                "hash": "89abcdef0123456789abcdef0123456789abcdef",
                "disabled": false
            },
            "https://github.com/example/OldNode": {
                "hash": "fedcba9876543210fedcba9876543210fedcba98",
                "disabled": true
            }
        },
        "cnr_custom_nodes": {"comfyui-impact-pack": "8.8.1"},
        "file_custom_nodes": [],
        "pips": {
            "tinyfoo==1.0.0": "",
            "tiny-bar==2.1": "",
            "somepkg": "git+https://github.com/x/somepkg@0123456789abcdef0123456789abcdef01234567"
        }
    });
    let snap_path = t.path().join("snapshot.json");
    fs::write(&snap_path, serde_json::to_vec_pretty(&snap).unwrap()).unwrap();
    let lock_path = t.path().join("out/imported.lock.json");
    let stdout = ok(
        &store,
        &[
            "import-snapshot",
            s(&snap_path),
            "--tag",
            "snap",
            "-o",
            s(&lock_path),
        ],
    );
    assert_eq!(stdout.trim(), s(&lock_path));
    let lock = read_json(&lock_path);
    assert_eq!(lock["schema"], "comfystore.lock/1");
    assert_eq!(lock["tag"], "snap");
    assert_eq!(lock["comfyui"]["commit"], snap["comfyui"]);
    let a = node(&lock, "ComfyUI-NodeA");
    assert_eq!(a["repo"], "https://github.com/example/ComfyUI-NodeA.git");
    assert_eq!(node(&lock, "OldNode")["disabled"], true);
    assert_eq!(
        node(&lock, "comfyui-impact-pack")["registry"],
        json!({"id": "comfyui-impact-pack", "version": "8.8.1"})
    );
    let names: Vec<&Value> = lock["python"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(
        names,
        [&json!("somepkg"), &json!("tiny-bar"), &json!("tinyfoo")]
    );
    // Nothing from the import is in the store, and show says so without failing.
    let shown = json(&store, &["show", s(&lock_path)]);
    assert_eq!(shown["comfyui"]["in_store"], false);
    assert_eq!(shown["models"]["count"], 0);
    // A registry node without a repository says why it cannot be fetched, here and in fetch.
    let gap = shown["not_portable"].to_string();
    assert!(
        gap.contains("comfyui-impact-pack: a Comfy Registry node (comfyui-impact-pack 8.8.1)"),
        "{shown:#}"
    );
    let fetched = run(&store, &["fetch", s(&lock_path), "--offline"]);
    assert!(
        String::from_utf8_lossy(&fetched.stderr).contains("a Comfy Registry node"),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );

    // To stdout by default, and to a file with -o: the same snapshot.
    let exported = ok(&store, &["export-snapshot", s(&lock_path)]);
    let back: Value = serde_json::from_str(&exported).expect("export-snapshot prints JSON");
    assert_eq!(back, snap);
    let file = t.path().join("back.json");
    ok(&store, &["export-snapshot", s(&lock_path), "-o", s(&file)]);
    assert_eq!(read_json(&file), snap);
    // And the round trip is stable.
    let again = t.path().join("again.lock.json");
    ok(
        &store,
        &[
            "import-snapshot",
            s(&file),
            "--tag",
            "snap",
            "-o",
            s(&again),
        ],
    );
    assert_eq!(fs::read(&again).unwrap(), fs::read(&lock_path).unwrap());
}

#[test]
fn manager_snapshots_as_manager_writes_and_reads_them() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let node = "89abcdef0123456789abcdef0123456789abcdef";
    let import = |name: &str, text: &str, extra: &[&str]| -> (Output, PathBuf) {
        let path = t.path().join(name);
        fs::write(&path, text).unwrap();
        let out = t.path().join(format!("{name}.lock.json"));
        let mut args = vec!["import-snapshot", s(&path), "--tag", "m", "-o", s(&out)];
        args.extend_from_slice(extra);
        (run(&store, &args), out)
    };
    // `"pips": null` is what Manager writes for a snapshot without pips.
    let snap = format!(
        r#"{{"comfyui": "{commit}", "git_custom_nodes": {{"https://github.com/example/NodeA": {{"hash": "{node}", "disabled": false}}}}, "cnr_custom_nodes": {{}}, "file_custom_nodes": [], "pips": null}}"#
    );
    let (o, lock) = import("null-pips.json", &snap, &[]);
    assert_success(&o, "import-snapshot with pips: null");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("--comfyui-repo"),
        "the upstream default is said: {stderr}"
    );
    assert_eq!(read_json(&lock)["custom_nodes"][0]["commit"], node);

    // A misspelled key is named, and nothing is written.
    let typo = snap.replace("git_custom_nodes", "git_custom_node");
    let (o, out) = import("typo.json", &typo, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("git_custom_node"));
    assert!(!out.exists());

    // A fork's repository, when given, is where the ComfyUI commit is.
    let fork = "https://github.com/me/ComfyUI-fork";
    let (o, lock) = import("fork.json", &snap, &["--comfyui-repo", fork]);
    assert_success(&o, "import-snapshot --comfyui-repo");
    assert_eq!(read_json(&lock)["comfyui"]["repo"], fork);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("--comfyui-repo"));

    // YAML out: the snapshot under `custom_nodes:`, which is what Manager's restore reads
    // (`yaml.load(...)['custom_nodes']`); and it imports back to the same lock.
    let yaml = t.path().join("back.yaml");
    let o = run(&store, &["export-snapshot", s(&lock), "-o", s(&yaml)]);
    assert_success(&o, "export-snapshot -o back.yaml");
    let read_back = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))['custom_nodes']))",
            s(&yaml),
        ])
        .output()
        .unwrap();
    if read_back.status.success() {
        let v: Value = serde_json::from_slice(&read_back.stdout).unwrap();
        assert_eq!(v["comfyui"], commit, "{v}");
        assert_eq!(
            v["git_custom_nodes"]["https://github.com/example/NodeA"]["hash"],
            node
        );
    } else {
        common::cannot_run(
            "manager_snapshots_as_manager_writes_and_reads_them (YAML by PyYAML)",
            &String::from_utf8_lossy(&read_back.stderr),
        );
    }
    let again = t.path().join("again.lock.json");
    let o = run(
        &store,
        &[
            "import-snapshot",
            s(&yaml),
            "--tag",
            "m",
            "-o",
            s(&again),
            "--comfyui-repo",
            fork,
        ],
    );
    assert_success(&o, "import-snapshot back.yaml");
    assert_eq!(fs::read(&again).unwrap(), fs::read(&lock).unwrap());
    // --format json wins over the extension.
    let o = run(
        &store,
        &[
            "export-snapshot",
            s(&lock),
            "-o",
            s(&yaml),
            "--format",
            "json",
        ],
    );
    assert_success(&o, "export-snapshot --format json");
    assert!(serde_json::from_slice::<Value>(&fs::read(&yaml).unwrap()).is_ok());
}

#[test]
fn import_snapshot_normalises_pip_names() {
    let t = tempfile::tempdir().unwrap();
    let snap_path = t.path().join("snapshot.json");
    fs::write(
        &snap_path,
        r#"{"comfyui": null, "git_custom_nodes": {}, "cnr_custom_nodes": {}, "file_custom_nodes": [],
            "pips": {"Tiny_Bar==2.1": "", "Zope.Interface==6.0": ""}}"#,
    )
    .unwrap();
    let out = t.path().join("x.lock.json");
    ok(
        &t.path().join("store"),
        &[
            "import-snapshot",
            s(&snap_path),
            "--tag",
            "x",
            "-o",
            s(&out),
        ],
    );
    let lock = read_json(&out);
    assert_eq!(
        lock["python"]["packages"],
        json!([{"name": "tiny-bar", "version": "2.1"}, {"name": "zope-interface", "version": "6.0"}])
    );
    assert_eq!(lock["comfyui"].get("commit"), None);
}

#[test]
fn export_snapshot_of_a_locked_install() {
    let e = Env::new();
    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    let o = run(&e.store, &["export-snapshot", s(&out)]);
    assert_success(&o, "export-snapshot");
    let snap: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(snap["comfyui"], git(&e.f.comfy, &["rev-parse", "HEAD"]));
    let g = &snap["git_custom_nodes"];
    assert_eq!(
        g[NODE_A_ORIGIN],
        json!({"hash": git(&e.node_dir("ComfyUI-NodeA"), &["rev-parse", "HEAD"]), "disabled": false})
    );
    assert_eq!(
        g[OLD_NODE_ORIGIN],
        json!({"hash": git(&e.node_dir(".disabled/OldNode"), &["rev-parse", "HEAD"]), "disabled": true})
    );
    assert_eq!(
        g["https://github.com/example/ComfyUI-NodeB"]["disabled"],
        false
    );
    assert_eq!(keys(g).len(), 3, "{g:#}");
    assert_eq!(snap["cnr_custom_nodes"], json!({}));
    assert_eq!(snap["file_custom_nodes"], json!([]));
    let pips = snap["pips"].as_object().unwrap();
    assert_eq!(pips["tinyfoo==1.0.0"], "");
    assert_eq!(pips["tiny-bar==2.1"], "");
    assert!(pips["directpkg"]
        .as_str()
        .unwrap()
        .ends_with("directpkg-0.3-py3-none-any.whl"));
    assert_eq!(pips.len(), 3, "{pips:#?}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("s3cret"));
    // PlainNode and models have no place in a snapshot: said on stderr.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("PlainNode"), "{stderr}");
    assert!(stderr.contains("model"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 8. show.

#[test]
fn show_reports_what_the_store_lacks_and_never_creates_a_store() {
    let e = Env::new();
    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    let lock = read_json(&out);
    let total: u64 = lock["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["size"].as_u64().unwrap())
        .sum();

    let v = json(&e.store, &["show", s(&out)]);
    assert_eq!(v["tag"], "v1");
    assert_eq!(v["comfyui"]["in_store"], true);
    assert_eq!(v["custom_nodes"]["count"], 4);
    assert_eq!(v["custom_nodes"]["disabled"], 1);
    assert_eq!(v["custom_nodes"]["missing"], json!([]));
    assert_eq!(v["python"]["version"], lock["python"]["version"]);
    assert_eq!(v["python"]["platform"], lock["python"]["platform"]);
    assert_eq!(v["python"]["packages"], 3);
    assert_eq!(v["python"]["environment_in_store"], true);
    assert_eq!(v["models"]["count"], 6);
    assert_eq!(v["models"]["bytes"], total);
    assert_eq!(v["models"]["missing"], json!([]));
    assert_eq!(v["models"]["missing_bytes"], 0);
    let text = ok(&e.store, &["show", s(&out)]);
    assert!(text.contains("v1"), "{text}");

    let nostore = e.p("nostore");
    let v = json(&nostore, &["show", s(&out)]);
    assert!(
        !nostore.exists(),
        "show created a store at {}",
        nostore.display()
    );
    assert_eq!(v["comfyui"]["in_store"], false);
    assert_eq!(v["python"]["environment_in_store"], false);
    assert_eq!(v["custom_nodes"]["missing"].as_array().unwrap().len(), 4);
    assert_eq!(v["models"]["missing"], json!(MODEL_PATHS));
    assert_eq!(v["models"]["missing_bytes"], total);
    let text = ok(&nostore, &["show", s(&out)]);
    assert!(text.contains("missing"), "{text}");
    assert!(
        !nostore.exists(),
        "show created a store at {}",
        nostore.display()
    );
}

// ---------------------------------------------------------------------------------------------
// 9. GC roots.

#[test]
fn lock_root_keeps_everything_through_gc() {
    let e = Env::new();
    // A lock without a root, of a model that is then deleted: gc may collect it.
    let extra_model = e.f.comfy.join("models/checkpoints/temp.safetensors");
    write(&extra_model, &pseudo_random(99, 64 << 10));
    let v0 = e.p("v0.lock.json");
    let res = e.lock("v0", &v0, &["--no-root"]);
    assert_eq!(res["root"], Value::Null);
    fs::remove_file(&extra_model).unwrap();

    let v1 = e.p("v1.lock.json");
    e.lock("v1", &v1, &[]);
    let lock = read_json(&v1);

    let roots = json(&e.store, &["root", "ls"]);
    let names: Vec<&str> = roots
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lock/v1"], "{roots:#}");
    let root = &roots[0];
    assert_eq!(root["path"], s(&v1));
    let ids: BTreeSet<&str> = root["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(ids.contains(lock["comfyui"]["tree"].as_str().unwrap()));
    assert!(ids.contains(lock["python"]["tree"].as_str().unwrap()));
    for m in lock["models"].as_array().unwrap() {
        assert!(ids.contains(format!("b3:{}", m["blake3"].as_str().unwrap()).as_str()));
    }

    ok(&e.store, &["gc", "--grace", "0"]);
    let v = json(&e.store, &["show", s(&v1)]);
    assert_eq!(v["models"]["missing"], json!([]), "{v:#}");
    assert_eq!(v["custom_nodes"]["missing"], json!([]), "{v:#}");
    assert_eq!(v["comfyui"]["in_store"], true);
    assert_eq!(v["python"]["environment_in_store"], true);
    // The unrooted model went.
    let v = json(&e.store, &["show", s(&v0)]);
    assert_eq!(
        v["models"]["missing"],
        json!(["models/checkpoints/temp.safetensors"]),
        "{v:#}"
    );
    let fsck = run(&e.store, &["fsck"]);
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // The user's models are still there, intact.
    for p in MODEL_PATHS {
        assert_eq!(
            sha256sum(&e.model_file(p)),
            model(&lock, p)["sha256"].as_str().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10. --sources.

#[test]
fn sources_are_recorded_remembered_and_stripped_of_credentials() {
    let e = Env::new();
    let x4 = sha256sum(&e.f.shared_models.join("upscale_models/x4.pth"));
    let yaml = format!(
        "models/checkpoints/a.safetensors: https://example.com/a.safetensors\n\
         {x4}:\n  - https://mirror.example.org/x4.pth\n  - https://example.com/x4.pth\n\
         models/loras/extra.safetensors: https://u:p@host.example/x\n"
    );
    let sources = e.p("sources.yaml");
    fs::write(&sources, yaml).unwrap();
    let v1 = e.p("v1.lock.json");
    e.lock("v1", &v1, &["--sources", s(&sources)]);
    let v2 = e.p("v2.lock.json");
    e.lock("v2", &v2, &[]);
    for out in [&v1, &v2] {
        let text = fs::read_to_string(out).unwrap();
        let lock: Value = serde_json::from_str(&text).unwrap();
        let srcs = |p: &str| -> BTreeSet<String> {
            model(&lock, p)["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            srcs("models/checkpoints/a.safetensors"),
            BTreeSet::from(["https://example.com/a.safetensors".to_string()]),
            "{}",
            out.display()
        );
        assert_eq!(
            srcs("models/upscale_models/x4.pth"),
            BTreeSet::from([
                "https://mirror.example.org/x4.pth".to_string(),
                "https://example.com/x4.pth".to_string()
            ]),
            "{}",
            out.display()
        );
        assert_eq!(
            model(&lock, "models/upscale_models/x4.pth")["sources"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(srcs("models/loras/b.safetensors").is_empty());
        // The credentials never reach the lock.
        assert!(!text.contains("u:p@"), "{text}");
        assert!(!text.contains("u:p"), "{text}");
        for u in srcs("models/loras/extra.safetensors") {
            assert!(!u.contains('@'), "{u}");
        }
    }
    // Sources are sorted, so passing --sources or not gives the same order.
    let sources_of = |p: &Path| {
        let l: Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
        model(&l, "models/upscale_models/x4.pth")["sources"].clone()
    };
    assert_eq!(sources_of(&v1), sources_of(&v2));
    // Nor are credentials kept in the store's source records.
    for entry in walkdir::WalkDir::new(e.store.join("sources")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let text = fs::read_to_string(entry.path()).unwrap();
            assert!(!text.contains("u:p"), "{}: {text}", entry.path().display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Hugging Face caches.

const HF_REV: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub cache at `hub` holding `org/name` @ HF_REV `sub/hf.safetensors`; returns the snapshot
/// file (a relative symlink to the blob) and the content.
fn make_hub(hub: &Path) -> (PathBuf, Vec<u8>) {
    let content = pseudo_random(77, 48 << 10);
    let repo = hub.join("models--org--name");
    let blob = repo.join("blobs/tmp");
    write(&blob, &content);
    let sha = sha256sum(&blob);
    fs::rename(&blob, repo.join("blobs").join(&sha)).unwrap();
    let snap_file = repo
        .join("snapshots")
        .join(HF_REV)
        .join("sub/hf.safetensors");
    fs::create_dir_all(snap_file.parent().unwrap()).unwrap();
    symlink(format!("../../../blobs/{sha}"), &snap_file).unwrap();
    assert_eq!(fs::read(&snap_file).unwrap(), content);
    (snap_file, content)
}

#[test]
fn hugging_face_cache_models_get_their_hub_url() {
    let e = Env::new();
    // Not in HF_HOME or HF_HUB_CACHE: found through the symlink.
    let (snap_file, content) = make_hub(&e.p("elsewhere/hub"));
    let link = e.f.comfy.join("models/checkpoints/hf.safetensors");
    symlink(&snap_file, &link).unwrap();
    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    let lock = read_json(&out);
    let m = model(&lock, "models/checkpoints/hf.safetensors");
    assert_eq!(
        m["sources"],
        json!([format!(
            "https://huggingface.co/org/name/resolve/{HF_REV}/sub/hf.safetensors"
        )])
    );
    assert_eq!(m["size"], content.len());
    assert_eq!(m["sha256"], sha256sum(&link));
    assert_eq!(lock["models"].as_array().unwrap().len(), 7);
}

#[test]
fn hugging_face_cache_from_hf_cache_flag() {
    let e = Env::new();
    // A copy of a hub file (not a symlink into the cache): found by its SHA-256 in --hf-cache.
    let hub = e.p("other/hub");
    let (_, content) = make_hub(&hub);
    write(
        &e.f.comfy.join("models/checkpoints/copied.safetensors"),
        &content,
    );
    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    let lock = read_json(&out);
    assert_eq!(
        model(&lock, "models/checkpoints/copied.safetensors")["sources"],
        json!([])
    );
    let out2 = e.p("v2.lock.json");
    e.lock("v2", &out2, &["--hf-cache", s(&hub)]);
    let lock = read_json(&out2);
    assert_eq!(
        model(&lock, "models/checkpoints/copied.safetensors")["sources"],
        json!([format!(
            "https://huggingface.co/org/name/resolve/{HF_REV}/sub/hf.safetensors"
        )])
    );
}

/// Lock a fixture with one more model, `models/checkpoints/<name>`, a symlink to `target`
/// (whose content is `data`); the store object must be a regular file with those bytes and
/// fsck must find nothing wrong.
fn check_symlinked_model(e: &Env, name: &str, target: &Path, data: &[u8]) {
    let link = e.f.comfy.join("models/checkpoints").join(name);
    symlink(target, &link).unwrap();
    assert_eq!(fs::read(&link).unwrap(), data);
    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    let lock = read_json(&out);
    let m = model(&lock, &format!("models/checkpoints/{name}"));
    let obj = object_path(&e.store, m["blake3"].as_str().unwrap());
    let meta = fs::symlink_metadata(&obj).unwrap();
    assert!(
        meta.is_file(),
        "the store object {} is not a regular file: {:?}",
        obj.display(),
        meta.file_type()
    );
    assert_eq!(fs::read(&obj).unwrap(), data);
    let fsck = run(&e.store, &["fsck"]);
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "fsck:\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn model_behind_an_absolute_symlink_is_stored_as_a_regular_object() {
    let e = Env::new();
    let (snap_file, content) = make_hub(&e.p("elsewhere/hub"));
    check_symlinked_model(&e, "hf.safetensors", &snap_file, &content);
}

#[test]
fn model_behind_a_relative_symlink_is_stored_as_a_regular_object() {
    let e = Env::new();
    let data = pseudo_random(78, 10 << 10);
    write(&e.p("volume/other.safetensors"), &data);
    // From fx/ComfyUI/models/checkpoints/ up to the temp dir.
    check_symlinked_model(
        &e,
        "rel.safetensors",
        Path::new("../../../../volume/other.safetensors"),
        &data,
    );
}

#[test]
/// Loose byte-code is a cache in source trees (git or not), but part of an installed
/// environment (sourceless packages ship only .pyc).
fn loose_pyc_files_are_not_locked_in_sources_but_are_in_the_venv() {
    let e = Env::new();
    let a = e.p("a.lock.json");
    e.lock("v1", &a, &[]);
    write(
        &e.node_dir("PlainNode").join("legacy.pyc"),
        &pseudo_random(5, 50),
    );
    let b = e.p("b.lock.json");
    e.lock("v1", &b, &[]);
    let (code, changes, _) = diff(&e.store, &a, &b);
    assert_eq!(changes, Vec::<Value>::new());
    assert_eq!(code, 0);
    assert_eq!(fs::read(&b).unwrap(), fs::read(&a).unwrap());

    write(
        &e.f.site_packages().join("tinyfoo/legacy.pyc"),
        &pseudo_random(6, 50),
    );
    let c = e.p("c.lock.json");
    e.lock("v1", &c, &["--no-root"]);
    let (code, changes, _) = diff(&e.store, &a, &c);
    assert_eq!(code, 1);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["name"], "environment");
}

// ---------------------------------------------------------------------------------------------
// 10. ComfyUI's repo decides what is its own; lock never locks its own outputs.

/// The `key` of every entry of a lock's array (`custom_nodes` names, `models` paths).
fn field_of<'a>(entries: &'a Value, key: &str) -> Vec<&'a str> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n[key].as_str().unwrap())
        .collect()
}

/// The paths of a stored tree that are not folders.
fn tree_files(store: &Path, tree: &Value) -> BTreeSet<String> {
    ls(store, tree)
        .into_iter()
        .filter(|(_, v)| v["kind"] != "dir")
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn comfyuis_tracked_files_are_its_tree_not_nodes_or_models() {
    let e = Env::new();
    let c = &e.f.comfy;
    // As in ComfyUI's repo: a tracked model config. Beside it the user's own files.
    ComfyFixture::commit_file(c, "models/configs/v1-inference.yaml", "model: {}\n");
    write(&c.join("models/configs/mine.yaml"), b"model: {mine: 1}\n");
    write(
        &c.join("custom_nodes/my_node.py"),
        b"NODE_CLASS_MAPPINGS = {}\n",
    );
    write(&c.join("custom_nodes/untracked.py.example"), b"# example\n");
    let out = e.p("v1.lock.json");
    let res = e.lock("v1", &out, &["--no-python"]);
    assert_eq!(res["report"]["dirty"], json!([]), "{res:#}");
    let lock = read_json(&out);

    let tree = tree_files(&e.store, &lock["comfyui"]["tree"]);
    for own in [
        "models/checkpoints/put_checkpoints_here",
        "models/configs/v1-inference.yaml",
        "custom_nodes/websocket_image_save.py",
        "custom_nodes/example_node.py.example",
        "input/example.png",
    ] {
        assert!(tree.contains(own), "comfyui tree lacks {own}: {tree:#?}");
    }
    for users in ["models/configs/mine.yaml", "custom_nodes/my_node.py"] {
        assert!(!tree.contains(users), "comfyui tree holds {users}");
    }
    let names: BTreeSet<&str> = field_of(&lock["custom_nodes"], "name")
        .into_iter()
        .collect();
    for not_a_node in [
        "websocket_image_save.py",
        "example_node.py.example",
        "untracked.py.example",
    ] {
        assert!(
            !names.contains(not_a_node),
            "{not_a_node} is a node: {names:?}"
        );
    }
    // The user's single-file node is one, stored as its bytes.
    let mine = node(&lock, "my_node.py");
    assert_eq!(keys(mine), BTreeSet::from(["name", "file"]), "{mine:#}");
    let stored = run(&e.store, &["cat", mine["file"].as_str().unwrap()]);
    assert_success(&stored, "cat");
    assert_eq!(stored.stdout, b"NODE_CLASS_MAPPINGS = {}\n");
    let paths: BTreeSet<&str> = field_of(&lock["models"], "path").into_iter().collect();
    assert!(paths.contains("models/configs/mine.yaml"), "{paths:?}");
    assert!(
        !paths.contains("models/configs/v1-inference.yaml"),
        "{paths:?}"
    );

    // Git rebuilds the very tree into an empty store (a bare clone of the install as origin).
    let bare = e.p("ComfyUI.git");
    git(&e.dir, &["clone", "-q", "--bare", s(c), s(&bare)]);
    let mut only_comfy = lock.clone();
    only_comfy["comfyui"]["repo"] = json!(s(&bare));
    only_comfy["custom_nodes"] = json!([]);
    let only_path = e.p("comfy-only.lock.json");
    fs::write(&only_path, serde_json::to_vec_pretty(&only_comfy).unwrap()).unwrap();
    let fetched = e.comfystore(
        &e.dir,
        &e.p("store2"),
        &["--json", "fetch", s(&only_path), "--only", "nodes"],
    );
    assert_success(&fetched, "fetch");
    let report: Value = serde_json::from_slice(&fetched.stdout).unwrap();
    assert_eq!(report["trees"][0]["label"], "comfyui", "{report:#}");
    assert_eq!(
        report["trees"][0]["tree"], lock["comfyui"]["tree"],
        "{report:#}"
    );
}

#[test]
fn a_model_or_node_where_comfyui_has_a_file_is_not_locked() {
    let e = Env::new();
    let c = &e.f.comfy;
    ComfyFixture::commit_file(c, "models/configs/v1-inference.yaml", "a: 1\n");
    // A models folder elsewhere with a file at the path ComfyUI's own config takes, and an
    // extra nodes folder with a node named as ComfyUI's own file.
    let shared = e.p("other-models");
    write(&shared.join("configs/v1-inference.yaml"), b"a: 2\n");
    write(&shared.join("configs/other.yaml"), b"b: 1\n");
    let nodes = e.p("extra-nodes");
    write(&nodes.join("websocket_image_save.py"), b"# a copy\n");
    write(&nodes.join("other_node.py"), b"# other\n");
    let yaml = c.join("extra_model_paths.yaml");
    let mut text = fs::read_to_string(&yaml).unwrap();
    text.push_str(&format!("extra:\n    custom_nodes: {}\n", nodes.display()));
    fs::write(&yaml, text).unwrap();
    let out = e.p("v1.lock.json");
    let (_, stderr) = e.lock_text("v1", &out, &["--no-python", "--models-dir", s(&shared)]);
    let lock = read_json(&out);
    let paths = field_of(&lock["models"], "path");
    let configs: Vec<&&str> = paths
        .iter()
        .filter(|p| p.starts_with("models/configs/"))
        .collect();
    assert_eq!(configs, [&"models/configs/other.yaml"], "{lock:#}");
    let names = field_of(&lock["custom_nodes"], "name");
    assert!(names.contains(&"other_node.py"), "{names:?}");
    assert!(!names.contains(&"websocket_image_save.py"), "{names:?}");
    for shadowed in [
        "models/configs/v1-inference.yaml: also found at",
        "custom_nodes/websocket_image_save.py: found again at",
    ] {
        let line = stderr.lines().find(|l| l.contains(shadowed));
        assert!(
            line.is_some_and(|l| l.ends_with("ComfyUI's own is kept")),
            "{shadowed}: {stderr}"
        );
    }
}

#[test]
fn lock_dot_inside_the_install_does_not_lock_itself() {
    let e = Env::new();
    let c = &e.f.comfy;
    // What a materialize leaves at the top of DEST.
    write(&c.join(".comfystore-materialized.json"), b"{}\n");
    write(&c.join(".comfystore-env.json"), b"{}\n");
    let lock_here = |extra: &[&str]| -> Value {
        let mut args = vec!["--json", "lock", ".", "--tag", "v1", "--no-python"];
        args.extend_from_slice(extra);
        let o = e.comfystore(c, &e.store, &args);
        assert_success(&o, "lock .");
        let res: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(res["report"]["dirty"], json!([]), "{res:#}");
        res
    };
    let default_out = c.join("lockfiles/comfy-v1.lock.json");
    for extra in [
        &[][..],
        &["-o", "locks/v1.lock.json"][..],
        &["-o", "custom_nodes/v1.lock.json"][..],
        &["-o", "models/v1.lock.json"][..],
    ] {
        let first = lock_here(extra);
        let path = match first["lockfile"].as_str() {
            Some("lockfiles/comfy-v1.lock.json") => default_out.clone(),
            Some(rel) => c.join(rel),
            None => panic!("no lockfile in {first:#}"),
        };
        let bytes = fs::read(&path).unwrap();
        let second = lock_here(extra);
        assert_eq!(second["unchanged"], true, "{extra:?}: {second:#}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "{extra:?}");
        let lock = read_json(&path);
        let tree = tree_files(&e.store, &lock["comfyui"]["tree"]);
        assert!(
            !tree
                .iter()
                .any(|p| p.contains("lock.json") || p.contains(".comfystore-")),
            "{extra:?}: {tree:#?}"
        );
        assert!(
            !lock.to_string().contains("v1.lock.json"),
            "{extra:?}: the lock names itself: {lock:#}"
        );
        // Another run's lock elsewhere is not this one's output: it goes before the next.
        fs::remove_file(&path).unwrap();
        let _ = fs::remove_dir(c.join("locks"));
    }
}

/// `show` says whether a lock rebuilds from its own sources and names what does not;
/// `lock --portable` refuses such a lock and writes nothing. The fixture's models have no
/// source and its index-installed packages are not pinned: each is named. A lock whose every
/// part has a source is portable.
#[test]
fn show_and_lock_portable_name_what_a_fresh_machine_could_not_rebuild() {
    let e = Env::new();
    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    let v = json(&e.store, &["show", s(&out)]);
    assert_eq!(v["portable"], false, "{v:#}");
    let gaps: Vec<&str> = v["not_portable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    for m in MODEL_PATHS {
        assert!(
            gaps.iter()
                .any(|g| g.starts_with(&format!("{m}: no known source"))),
            "{m} not named: {gaps:?}"
        );
    }
    assert!(
        gaps.iter()
            .any(|g| g.starts_with("python package tinyfoo: not pinned")),
        "{gaps:?}"
    );
    let text = ok(&e.store, &["show", s(&out)]);
    assert!(text.contains("portable  no:"), "{text}");

    // --portable: exit 1, each item named, no lockfile written.
    let refused = e.p("refused.lock.json");
    let o = e.lock_output(&[], "v2", &refused, &["--portable"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not portable"), "{err}");
    assert!(err.contains("python package tinyfoo"), "{err}");
    assert!(!refused.exists(), "a non-portable lock was written");

    // A lock whose every part has a source.
    let mut lock = read_json(&out);
    lock["custom_nodes"] = json!([]);
    lock["python"] = Value::Null;
    lock.as_object_mut().unwrap().remove("python");
    for m in lock["models"].as_array_mut().unwrap() {
        m["sources"] = json!(["https://example.invalid/model"]);
    }
    lock["comfyui"]["dirty"] = json!(false);
    let portable = e.p("portable.lock.json");
    fs::write(&portable, serde_json::to_vec_pretty(&lock).unwrap()).unwrap();
    let v = json(&e.store, &["show", s(&portable)]);
    assert_eq!(v["not_portable"], json!([]), "{v:#}");
    assert_eq!(v["portable"], true, "{v:#}");
}

// ---------------------------------------------------------------------------------------------
// Hardening: a reused tag never silently drops the old version's GC root.

#[test]
fn reusing_a_tag_for_another_lockfile_never_drops_the_old_root_silently() {
    let e = Env::new();
    let only = e.f.comfy.join("models/checkpoints/only-in-v1.safetensors");
    let data = pseudo_random(4242, 96 << 10);
    write(&only, &data);
    let v1a = e.p("v1a.lock.json");
    e.lock("v1", &v1a, &[]);
    let id = format!(
        "b3:{}",
        model(
            &read_json(&v1a),
            "models/checkpoints/only-in-v1.safetensors"
        )["blake3"]
            .as_str()
            .unwrap()
    );
    // The other install no longer has the model: its only copy is in the store.
    fs::remove_file(&only).unwrap();
    let v1b = e.p("v1b.lock.json");
    let o = e.lock_output(&[], "v1", &v1b, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", common::describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("lock/v1") && err.contains(s(&v1a)) && err.contains("--force"),
        "{err}"
    );
    assert!(!v1b.exists(), "nothing written when refused");
    let dry = json(&e.store, &["gc", "--dry-run", "--grace", "0"]);
    assert!(
        !dry["would_free"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["id"] == id.as_str()),
        "the old version's model is still kept: {dry:#}"
    );

    // --force replaces it, says so, and gc --dry-run says why the model would go.
    let (_, err) = e.lock_text("v1", &v1b, &["--force"]);
    assert!(err.contains("root lock/v1 replaced"), "{err}");
    let dry = json(&e.store, &["gc", "--dry-run", "--grace", "0"]);
    let item = dry["would_free"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{dry:#}"));
    assert!(
        item["why"].as_str().unwrap().contains("named by no root"),
        "{item}"
    );

    // `fetch` of the old lockfile (same tag) adds its ids to lock/v1, never replaces them.
    let v1b_ids = json(&e.store, &["root", "ls"])[0]["ids"].clone();
    let o = e.comfystore(&e.dir, &e.store, &["fetch", s(&v1a), "--offline"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::describe(&o));
    let root = json(&e.store, &["root", "ls"])[0].clone();
    let ids = root["ids"].as_array().unwrap();
    assert!(ids.iter().any(|i| i == id.as_str()), "{root:#}");
    for i in v1b_ids.as_array().unwrap() {
        assert!(ids.contains(i), "fetch kept v1b's {i}: {root:#}");
    }
}

#[test]
fn relocking_with_no_python_keeps_the_pinned_python_section_unless_dropped() {
    let e = Env::new();
    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    let before = read_json(&out)["python"].clone();
    assert!(before.is_object(), "the fixture has a venv");

    let (_, err) = e.lock_text("v1", &out, &["--no-python"]);
    assert!(
        err.contains("python section") && err.contains("kept") && err.contains("--drop-python"),
        "{err}"
    );
    assert_eq!(read_json(&out)["python"], before, "kept as it was");

    let (_, err) = e.lock_text("v1", &out, &["--no-python", "--drop-python"]);
    assert!(err.contains("dropped"), "{err}");
    assert_eq!(read_json(&out)["python"], Value::Null);
}

/// A model behind a symlink to a private file outside the install: lock never changes that
/// file (mode, link count), and never makes its bytes readable to other users through the
/// store (new stores are 0700; a store opened to others refuses such a file).
#[test]
fn a_private_model_outside_the_install_is_never_hardlinked_or_exposed() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    let secret_dir = e.p("secret");
    let key = secret_dir.join("key.safetensors");
    write(&key, &pseudo_random(777, 40 << 10));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&secret_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let link = e.f.comfy.join("models/checkpoints/x.safetensors");
    symlink(&key, &link).unwrap();
    // A private model inside the install is not widened to 0444 either.
    let inside = e.f.comfy.join("models/checkpoints/mine.safetensors");
    write(&inside, &pseudo_random(778, 40 << 10));
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o600)).unwrap();

    let out = e.p("v1.lock.json");
    e.lock("v1", &out, &[]);
    for f in [&key, &inside] {
        let m = fs::metadata(f).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", f.display());
        assert_eq!(m.nlink(), 1, "{} was hardlinked", f.display());
    }
    let store_mode = fs::metadata(&e.store).unwrap().permissions().mode() & 0o777;
    assert_eq!(store_mode, 0o700, "a new store is private");

    // A store opened to others refuses the private file, naming it.
    let shared = e.p("shared-store");
    ok(&shared, &["root", "ls"]);
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let o = e.comfystore(
        &e.dir,
        &shared,
        &[
            "lock",
            s(&e.f.comfy),
            "--tag",
            "v2",
            "-o",
            s(&e.p("v2.lock.json")),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", common::describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not readable by other users"), "{err}");
}
