//! `comfystore fetch`, `verify` and `mirror` through the real binary: trees rebuilt from git
//! (shallow, and the full-fetch fallback), tree ids checked against the lock, dirty repos,
//! `verify --fix` downloading from a real local HTTP server, the stat cache, `--offline`, and
//! offline mirrors (bundles, models, wheels with a PEP 503 index).
//!
//! Each test builds a small ComfyUI-shaped install of its own: a ComfyUI repo and one custom
//! node, each a work repo pushed to a local bare repo and cloned from it (so `origin` is a
//! local path or `file://` URL git can really fetch from), plus two models of just over 1 MiB.
//! Every comfystore run gets an isolated git configuration (no user or system config), its own
//! HOME and Hugging Face folders, no tokens and no proxies.

mod common;

use common::comfy::{pseudo_random, ComfyFixture};
use common::http::{Behavior, TestServer};
use common::{
    code, describe, model, node, parse, run_env, s, sha256_hex, stderr, stdout, write, NETWORK_ENV,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const A_PATH: &str = "models/checkpoints/a.safetensors";
const B_PATH: &str = "models/loras/b.safetensors";
const NODE: &str = "NodeA";
const NODE_LABEL: &str = "custom_nodes/NodeA";
const TAG: &str = "v1";

/// The two models of every install.
fn model_a() -> Vec<u8> {
    pseudo_random(101, (1 << 20) + 5)
}

fn model_b() -> Vec<u8> {
    pseudo_random(102, (1 << 20) + 333)
}

/// How the install's clones name their bare repo: a plain path, or a `file://` URL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Url {
    Path,
    File,
}

/// One temp dir holding the source repos, their bare copies, the install and the stores.
struct Env {
    _tmp: tempfile::TempDir,
    /// The temp dir, canonical.
    dir: PathBuf,
    /// The store `lock` writes to.
    store: PathBuf,
    /// dir/ComfyUI: cloned from `comfy_bare`, NodeA under custom_nodes/ cloned from `node_bare`.
    comfy: PathBuf,
    /// Work repos the bare repos are pushed from.
    comfy_src: PathBuf,
    node_src: PathBuf,
    comfy_bare: PathBuf,
    node_bare: PathBuf,
    /// An empty git config file (GIT_CONFIG_GLOBAL of every comfystore run by default).
    gitconfig: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    ComfyFixture::git(dir, args)
}

fn b3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn write_json(path: &Path, v: &Value) {
    fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// The custom node of a lock named `name`.
fn node_mut<'a>(lock: &'a mut Value, name: &str) -> &'a mut Value {
    lock["custom_nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no custom node {name}"))
}

fn tree_str(v: &Value) -> &str {
    v.as_str()
        .filter(|t| t.starts_with("b3:") && t.len() == 67)
        .unwrap_or_else(|| panic!("not a tree id: {v}"))
}

/// `key` → `value` of each object in the array `report[list]`.
fn pairs(report: &Value, list: &str, key: &str, value: &str) -> BTreeMap<String, String> {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} array in {report:#}"))
        .iter()
        .map(|t| {
            (
                t[key].as_str().unwrap().to_string(),
                t[value].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// label → tree of a fetch report's `trees`.
fn fetched_trees(report: &Value) -> BTreeMap<String, String> {
    pairs(report, "trees", "label", "tree")
}

/// what → why of a fetch report's `failed`.
fn failures(report: &Value) -> BTreeMap<String, String> {
    report["failed"]
        .as_array()
        .unwrap_or_else(|| panic!("no failed array in {report:#}"))
        .iter()
        .map(|f| {
            (
                f[0].as_str().unwrap().to_string(),
                f[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What a folder holds, for comparing two of them: files (content and exec bit) and symlinks
/// (target), by relative path. `.git` folders and byte-code caches are skipped anywhere, and
/// `skip_top` top-level names.
#[derive(Debug, PartialEq, Eq)]
enum Ent {
    File { data: Vec<u8>, exec: bool },
    Link(PathBuf),
}

fn snapshot(root: &Path, skip_top: &[&str]) -> BTreeMap<String, Ent> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            if name == ".git" || name == "__pycache__" || name == ".comfystore-materialized.json" {
                return false;
            }
            !(e.depth() == 1 && skip_top.contains(&name.as_ref()))
        });
    for e in walk {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ft = e.file_type();
        if ft.is_symlink() {
            out.insert(rel, Ent::Link(fs::read_link(e.path()).unwrap()));
        } else if ft.is_file() {
            let mode = e.metadata().unwrap().mode();
            out.insert(
                rel,
                Ent::File {
                    data: fs::read(e.path()).unwrap(),
                    exec: mode & 0o111 != 0,
                },
            );
        }
    }
    out
}

fn assert_same_files(a: &BTreeMap<String, Ent>, b: &BTreeMap<String, Ent>, what: &str) {
    let ka: Vec<&String> = a.keys().collect();
    let kb: Vec<&String> = b.keys().collect();
    assert_eq!(ka, kb, "{what}: different file lists");
    for (k, v) in a {
        assert!(b[k] == *v, "{what}: {k} differs");
    }
}

const COMFY_GITIGNORE: &str = "\
__pycache__/
*.py[cod]
/output/
/input/
/models/
/custom_nodes/
/user/
venv/
";

impl Env {
    /// Build the repos and the install; the clones' origin is the bare repo as `url` says.
    fn new(url: Url) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        for d in ["home", "hf/hub", "src", "git"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let gitconfig = dir.join("gitconfig");
        fs::write(&gitconfig, "").unwrap();
        let e = Env {
            store: dir.join("store"),
            comfy: dir.join("ComfyUI"),
            comfy_src: dir.join("src/ComfyUI"),
            node_src: dir.join("src/NodeA"),
            comfy_bare: dir.join("git/ComfyUI.git"),
            node_bare: dir.join("git/NodeA.git"),
            gitconfig,
            _tmp: tmp,
            dir,
        };

        // ComfyUI: two commits; a tracked symlink, an executable script, and a tracked file
        // inside a data folder (which the comfyui tree leaves out).
        let c = &e.comfy_src;
        fs::create_dir_all(c).unwrap();
        git(c, &["init", "-q", "-b", "main"]);
        write(&c.join(".gitignore"), COMFY_GITIGNORE.as_bytes());
        write(&c.join("main.py"), b"import nodes\nprint('fixture')\n");
        write(&c.join("nodes.py"), b"NODE_CLASS_MAPPINGS = {}\n");
        write(&c.join("comfy/__init__.py"), b"");
        write(
            &c.join("comfy/sd.py"),
            b"def load(path):\n    return path\n",
        );
        let run_sh = c.join("script_examples/run.sh");
        write(&run_sh, b"#!/bin/sh\nexec python3 main.py \"$@\"\n");
        fs::set_permissions(&run_sh, fs::Permissions::from_mode(0o755)).unwrap();
        symlink("main.py", c.join("latest.py")).unwrap();
        git(c, &["add", "-A"]);
        write(&c.join("models/checkpoints/put_checkpoints_here"), b"");
        git(c, &["add", "-f", "models/checkpoints/put_checkpoints_here"]);
        git(c, &["commit", "-q", "--no-verify", "-m", "ComfyUI: first"]);
        ComfyFixture::commit_file(
            c,
            "comfy/sd.py",
            "def load(path, vae=True):\n    return path\n",
        );

        // NodeA: two commits.
        let n = &e.node_src;
        fs::create_dir_all(n).unwrap();
        git(n, &["init", "-q", "-b", "main"]);
        write(&n.join("__init__.py"), b"NODE_CLASS_MAPPINGS = {}\n");
        write(&n.join("nodes.py"), b"class NodeA:\n    pass\n");
        write(&n.join("web/js/a.js"), b"export const name = 'NodeA';\n");
        git(n, &["add", "-A"]);
        git(n, &["commit", "-q", "--no-verify", "-m", "NodeA: first"]);
        ComfyFixture::commit_file(n, "nodes.py", "class NodeA:\n    FUNCTION = 'run'\n");

        for (src, bare) in [(&e.comfy_src, &e.comfy_bare), (&e.node_src, &e.node_bare)] {
            git(&e.dir, &["clone", "-q", "--bare", s(src), s(bare)]);
        }
        let comfy_url = e.url(&e.comfy_bare, url);
        let node_url = e.url(&e.node_bare, url);
        git(&e.dir, &["clone", "-q", &comfy_url, s(&e.comfy)]);
        let node_dir = e.comfy.join("custom_nodes").join(NODE);
        git(&e.dir, &["clone", "-q", &node_url, s(&node_dir)]);

        // Data the comfyui tree leaves out, an ignored cache, and the models.
        write(&e.comfy.join("output/ComfyUI_00001_.png"), b"\x89PNG out");
        write(&e.comfy.join("user/default/settings.json"), b"{}\n");
        write(
            &e.comfy.join("comfy/__pycache__/sd.cpython-311.pyc"),
            b"pyc",
        );
        write(&e.comfy.join(A_PATH), &model_a());
        write(&e.comfy.join(B_PATH), &model_b());
        e
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn url(&self, bare: &Path, url: Url) -> String {
        match url {
            Url::Path => s(bare).to_string(),
            Url::File => format!("file://{}", s(bare)),
        }
    }

    /// `comfystore --store STORE ARGS...` with git isolated (GIT_CONFIG_GLOBAL = `gitconfig`
    /// unless `envs` sets it), private HOME and Hugging Face folders, no tokens, no proxies,
    /// fast retries; then the `envs` changes.
    fn cs_env(&self, store: &Path, args: &[&str], envs: &[(&str, Option<&OsStr>)]) -> Output {
        let home = self.p("home");
        let hf = self.p("hf");
        let hub = self.p("hf/hub");
        let mut all: Vec<(&str, Option<&OsStr>)> = vec![
            ("GIT_CONFIG_GLOBAL", Some(self.gitconfig.as_os_str())),
            ("GIT_CONFIG_NOSYSTEM", Some(OsStr::new("1"))),
            ("HOME", Some(home.as_os_str())),
            ("XDG_CONFIG_HOME", None),
            ("HF_HOME", Some(hf.as_os_str())),
            ("HF_HUB_CACHE", Some(hub.as_os_str())),
            ("COMFYSTORE_BACKOFF", Some(OsStr::new("10ms"))),
            ("COMFYSTORE_RETRIES", None),
            ("COMFYSTORE_HTTP_TIMEOUT", None),
            ("RUST_LOG", None),
        ];
        for k in [
            "VIRTUAL_ENV",
            "COMFY_HOME",
            "GITHUB_TOKEN",
            "GIT_TOKEN",
            "GIT_CONFIG_COUNT",
            "GIT_DIR",
            "GIT_WORK_TREE",
        ]
        .iter()
        .chain(NETWORK_ENV)
        {
            all.push((k, None));
        }
        all.extend_from_slice(envs);
        run_env(store, args, &all)
    }

    fn cs(&self, store: &Path, args: &[&str]) -> Output {
        self.cs_env(store, args, &[])
    }

    /// Run and require exit 0; stdout.
    fn ok(&self, store: &Path, args: &[&str]) -> String {
        let out = self.cs(store, args);
        assert_eq!(code(&out), 0, "comfystore {args:?}: {}", describe(&out));
        stdout(&out)
    }

    /// `lock` the install (without Python) into `self.store` as `dir/TAG.lock.json`; returns
    /// the lock's path and content.
    fn lock(&self, extra: &[&str]) -> (PathBuf, Value) {
        let out = self.p(&format!("{TAG}.lock.json"));
        let mut args = vec![
            "lock",
            s(&self.comfy),
            "--tag",
            TAG,
            "--no-python",
            "-o",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let o = self.cs(&self.store, &args);
        assert_eq!(code(&o), 0, "lock: {}", describe(&o));
        let v = read_json(&out);
        (out, v)
    }

    /// A models `--sources` file pointing both models at `srv`.
    fn sources_file(&self, srv: &TestServer) -> PathBuf {
        let path = self.p("sources.json");
        let v = json!({
            A_PATH: srv.url("/files/a.safetensors"),
            B_PATH: srv.url("/files/b.safetensors"),
        });
        write_json(&path, &v);
        path
    }

    fn node_dir(&self) -> PathBuf {
        self.comfy.join("custom_nodes").join(NODE)
    }
}

/// A server holding both models.
fn model_server() -> TestServer {
    let srv = TestServer::start();
    srv.add("/files/a.safetensors", model_a(), Behavior::Normal);
    srv.add("/files/b.safetensors", model_b(), Behavior::Normal);
    srv
}

/// The lock has both trees, a clean ComfyUI, and the models' hashes.
fn assert_lock_basics(lock: &Value) {
    tree_str(&lock["comfyui"]["tree"]);
    tree_str(&node(lock, NODE)["tree"]);
    assert_eq!(lock["comfyui"]["dirty"], Value::Null, "{lock:#}");
    assert_eq!(model(lock, A_PATH)["sha256"], sha256_hex(&model_a()));
    assert_eq!(model(lock, B_PATH)["blake3"], b3_hex(&model_b()));
}

// ---------------------------------------------------------------------------------------------
// 1. Trees rebuilt from git.

#[test]
fn git_source_fetched_at_its_commit_matches_the_lock() {
    let e = Env::new(Url::Path);
    let (lock_path, lock) = e.lock(&[]);
    assert_lock_basics(&lock);
    let comfy_tree = tree_str(&lock["comfyui"]["tree"]).to_string();
    let node_tree = tree_str(&node(&lock, NODE)["tree"]).to_string();
    assert_eq!(lock["comfyui"]["repo"], s(&e.comfy_bare));
    assert_eq!(node(&lock, NODE)["repo"], s(&e.node_bare));
    let comfy_head = git(&e.comfy, &["rev-parse", "HEAD"]);
    assert_eq!(lock["comfyui"]["commit"], comfy_head.as_str());

    // An empty store: the trees can only come from git (models stay out: --only nodes).
    let store2 = e.p("store2");
    let progress = e.p("progress.jsonl");
    let out = e.cs_env(
        &store2,
        &["--json", "fetch", s(&lock_path), "--only", "nodes"],
        &[
            ("RUST_LOG", Some(OsStr::new("info"))),
            ("COMFYSTORE_PROGRESS_LOG", Some(progress.as_os_str())),
        ],
    );
    assert_eq!(code(&out), 0, "fetch: {}", describe(&out));
    // The git trees have a bar: one count a repository, done at two.
    let log = fs::read_to_string(&progress).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains(r#""label":"git""#)
            && l.contains(r#""total":2"#)
            && l.contains(r#""pos":2"#)
            && l.contains(r#""done":true"#)),
        "no finished git bar of 2 repositories: {log}"
    );
    assert!(
        !stderr(&out).contains("shallow fetch refused"),
        "the shallow fetch should work over protocol v2: {}",
        describe(&out)
    );
    let report = parse(&out);
    assert_eq!(failures(&report), BTreeMap::new(), "{report:#}");
    let trees = fetched_trees(&report);
    assert_eq!(
        trees,
        BTreeMap::from([
            ("comfyui".to_string(), comfy_tree.clone()),
            (NODE_LABEL.to_string(), node_tree.clone()),
        ]),
        "{report:#}"
    );
    for t in report["trees"].as_array().unwrap() {
        let want = if t["label"] == "comfyui" {
            (s(&e.comfy_bare), comfy_head.clone())
        } else {
            (s(&e.node_bare), git(&e.node_dir(), &["rev-parse", "HEAD"]))
        };
        assert_eq!(t["repo"], want.0, "{t}");
        assert_eq!(t["commit"], want.1.as_str(), "{t}");
    }
    assert_eq!(report["downloaded"], json!([]), "{report:#}");
    assert_eq!(report["needed"].as_array().unwrap().len(), 2, "{report:#}");

    // The new store lists the trees as the old one does.
    for t in [&comfy_tree, &node_tree] {
        let a = e.ok(&e.store, &["--json", "ls", t]);
        let b = e.ok(&store2, &["--json", "ls", t]);
        assert_eq!(
            serde_json::from_str::<Value>(&a).unwrap(),
            serde_json::from_str::<Value>(&b).unwrap(),
            "ls {t}"
        );
    }
    let listing: Value =
        serde_json::from_str(&e.ok(&store2, &["--json", "ls", &comfy_tree])).unwrap();
    let paths: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"main.py"), "{paths:?}");
    // ComfyUI's repo tracks this one: it is ComfyUI's, not a model.
    assert!(
        paths.contains(&"models/checkpoints/put_checkpoints_here"),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| *p == ".git" || p.starts_with(".git/")),
        "{paths:?}"
    );

    // Materialized from the new store, both trees hold what the checkouts hold.
    let m = e.p("m-comfy");
    e.ok(&store2, &["materialize", &comfy_tree, s(&m)]);
    let skip = ["models", "custom_nodes", "output", "input", "user", "temp"];
    let mut want = snapshot(&e.comfy, &skip);
    // What ComfyUI's repo tracks under the data folders is ComfyUI's own.
    let mut all = snapshot(&e.comfy, &[]);
    for p in git(&e.comfy, &["ls-files", "--cached"]).lines() {
        want.extend(all.remove_entry(p));
    }
    assert_same_files(&want, &snapshot(&m, &[]), "comfyui tree from git");
    let got = snapshot(&m, &[]);
    assert_eq!(got["latest.py"], Ent::Link(PathBuf::from("main.py")));
    assert!(matches!(
        got["script_examples/run.sh"],
        Ent::File { exec: true, .. }
    ));
    assert!(matches!(got["main.py"], Ent::File { exec: false, .. }));
    let m = e.p("m-node");
    e.ok(&store2, &["materialize", &node_tree, s(&m)]);
    assert_same_files(
        &snapshot(&e.node_dir(), &[]),
        &snapshot(&m, &[]),
        "node tree from git",
    );

    // A second fetch needs nothing.
    let out = e.cs(
        &store2,
        &["--json", "fetch", s(&lock_path), "--only", "nodes"],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let again = parse(&out);
    assert_eq!(again["needed"], json!([]), "{again:#}");
    assert_eq!(again["trees"], json!([]), "{again:#}");
}

#[test]
fn shallow_refused_falls_back_to_full_fetch() {
    let e = Env::new(Url::File);
    // The install is at the tip the bare repos had when cloned...
    let (lock_path, lock) = e.lock(&[]);
    let comfy_tree = tree_str(&lock["comfyui"]["tree"]).to_string();
    let node_tree = tree_str(&node(&lock, NODE)["tree"]).to_string();
    assert_eq!(
        lock["comfyui"]["repo"],
        format!("file://{}", s(&e.comfy_bare))
    );
    // ...which then move on: the locked commits are ancestors, no longer advertised.
    ComfyFixture::commit_file(&e.comfy_src, "comfy/sd.py", "def load():\n    pass\n");
    ComfyFixture::commit_file(&e.node_src, "nodes.py", "# newer\n");
    git(&e.comfy_src, &["push", "-q", s(&e.comfy_bare), "main"]);
    git(&e.node_src, &["push", "-q", s(&e.node_bare), "main"]);
    for (bare, locked) in [
        (&e.comfy_bare, &lock["comfyui"]["commit"]),
        (&e.node_bare, &node(&lock, NODE)["commit"]),
    ] {
        let tip = git(bare, &["rev-parse", "main"]);
        assert_ne!(locked.as_str().unwrap(), tip);
    }

    // Protocol v0: the server refuses a commit it does not advertise, so the shallow fetch
    // fails and a full fetch of the branches must find it.
    let v0 = e.p("gitconfig-v0");
    fs::write(&v0, "[protocol]\n\tversion = 0\n").unwrap();
    let store2 = e.p("store2");
    let out = e.cs_env(
        &store2,
        &["--json", "fetch", s(&lock_path), "--only", "nodes"],
        &[
            ("GIT_CONFIG_GLOBAL", Some(v0.as_os_str())),
            ("RUST_LOG", Some(OsStr::new("info"))),
        ],
    );
    assert_eq!(code(&out), 0, "fetch: {}", describe(&out));
    let err = stderr(&out);
    assert_eq!(
        err.matches("shallow fetch refused").count(),
        2,
        "both shallow fetches should have been refused and retried in full: {}",
        describe(&out)
    );
    let report = parse(&out);
    assert_eq!(
        fetched_trees(&report),
        BTreeMap::from([
            ("comfyui".to_string(), comfy_tree.clone()),
            (NODE_LABEL.to_string(), node_tree.clone()),
        ]),
        "{report:#}"
    );
    let m = e.p("m-comfy");
    e.ok(&store2, &["materialize", &comfy_tree, s(&m)]);
    assert_eq!(
        fs::read_to_string(m.join("comfy/sd.py")).unwrap(),
        "def load(path, vae=True):\n    return path\n",
        "the locked commit's file, not the newer tip's"
    );
}

#[test]
fn wrong_tree_id_is_reported() {
    let e = Env::new(Url::Path);
    let (lock_path, mut lock) = e.lock(&[]);
    let real = tree_str(&node(&lock, NODE)["tree"]).to_string();
    // A well-formed id of some other content.
    let bogus = format!("b3:{}", b3_hex(b"not the tree of NodeA"));
    node_mut(&mut lock, NODE)["tree"] = json!(bogus);
    write_json(&lock_path, &lock);

    let store2 = e.p("store2");
    let out = e.cs(
        &store2,
        &["--json", "fetch", s(&lock_path), "--only", "nodes"],
    );
    assert_eq!(code(&out), 1, "fetch: {}", describe(&out));
    let report = parse(&out);
    let failed = failures(&report);
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        vec![NODE_LABEL],
        "{report:#}"
    );
    let why = &failed[NODE_LABEL];
    assert!(
        why.contains(&format!(
            "the checkout gives tree {real}, but the lock says {bogus}"
        )),
        "{why}"
    );
    // ComfyUI itself is fine.
    assert_eq!(
        fetched_trees(&report),
        BTreeMap::from([(
            "comfyui".to_string(),
            tree_str(&lock["comfyui"]["tree"]).to_string()
        )]),
        "{report:#}"
    );
    // The text form says the same on stderr.
    let store3 = e.p("store3");
    let out = e.cs(&store3, &["fetch", s(&lock_path), "--only", "nodes"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&real) && err.contains(&bogus),
        "{}",
        describe(&out)
    );
}

#[test]
fn dirty_repo_is_not_fetched_from_git() {
    let e = Env::new(Url::Path);
    write(
        &e.node_dir().join("nodes.py"),
        b"class NodeA:\n    LOCAL = 1\n",
    );
    let (lock_path, lock) = e.lock(&[]);
    assert_eq!(node(&lock, NODE)["dirty"], true, "{lock:#}");
    assert_eq!(lock["comfyui"]["dirty"], Value::Null, "{lock:#}");

    let store2 = e.p("store2");
    let out = e.cs(
        &store2,
        &["--json", "fetch", s(&lock_path), "--only", "nodes"],
    );
    assert_eq!(code(&out), 1, "fetch: {}", describe(&out));
    let report = parse(&out);
    let failed = failures(&report);
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        vec![NODE_LABEL],
        "{report:#}"
    );
    assert!(
        failed[NODE_LABEL].contains("uncommitted changes"),
        "{report:#}"
    );
    assert_eq!(
        fetched_trees(&report).keys().collect::<Vec<_>>(),
        vec!["comfyui"],
        "{report:#}"
    );
    let node_tree = tree_str(&node(&lock, NODE)["tree"]).to_string();
    let out = e.cs(&store2, &["ls", &node_tree]);
    assert_ne!(code(&out), 0, "the dirty tree cannot be in the new store");
}

// ---------------------------------------------------------------------------------------------
// 2. verify.

/// A model file the locks never list.
const UNLISTED: &str = "models/loras/unlisted.safetensors";

/// Whether a JSON array holds that string.
fn has(list: &Value, s: &str) -> bool {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .any(|v| v == s)
}

/// The lines of a text `verify`, without the `extra-model` lines of ComfyUI's tracked
/// `put_*_here` placeholders (which `lock` skips as non-models but `verify` reports; see
/// `verify_does_not_report_placeholders_as_extra_models`).
fn verify_lines(out: &Output) -> Vec<String> {
    stdout(out)
        .lines()
        .filter(|l| {
            let name = l.rsplit('/').next().unwrap_or("");
            !(l.starts_with("extra-model\t") && name.starts_with("put_") && name.ends_with("_here"))
        })
        .map(String::from)
        .collect()
}

#[test]
fn verify_fix_restores_deleted_and_corrupted_models() {
    let e = Env::new(Url::Path);
    let srv = model_server();
    let sources = e.sources_file(&srv);
    let (lock_path, lock) = e.lock(&["--sources", s(&sources)]);
    assert_eq!(
        model(&lock, A_PATH)["sources"],
        json!([srv.url("/files/a.safetensors")])
    );
    let lp = s(&lock_path);
    let dest = s(&e.comfy);

    // Clean to begin with.
    let out = e.cs(&e.store, &["verify", lp, dest]);
    assert_eq!(code(&out), 0, "verify: {}", describe(&out));

    // One model deleted, one replaced by a copy with a byte changed (a new file: the old one
    // may be the store's own inode), and a model the lock does not list.
    let a = e.comfy.join(A_PATH);
    let b = e.comfy.join(B_PATH);
    fs::remove_file(&a).unwrap();
    let mut bad = model_b();
    bad[1 << 19] ^= 0x5a;
    fs::remove_file(&b).unwrap();
    write(&b, &bad);
    let extra = e.comfy.join(UNLISTED);
    write(&extra, b"user's own lora");

    // The lock's store sees exactly what is wrong.
    let out = e.cs(&e.store, &["verify", lp, dest]);
    assert_eq!(code(&out), 4, "verify: {}", describe(&out));
    let lines = verify_lines(&out);
    for want in [
        format!("missing\t{A_PATH}"),
        format!("modified\t{B_PATH}"),
        format!("extra-model\t{UNLISTED}"),
    ] {
        assert!(lines.contains(&want), "no {want:?} in {lines:?}");
    }
    assert_eq!(lines.len(), 3, "{lines:?}");

    // A fresh store has nothing: the sources are checked by hashing their folders (intact),
    // and --fix downloads both models from their sources, fetching no tree (issue 14: verify
    // by hash; this test asserted the old behaviour, every part `unchecked` and re-fetched).
    let store2 = e.p("store2");
    let out = e.cs(&store2, &["--json", "verify", lp, dest]);
    assert_eq!(code(&out), 4, "verify: {}", describe(&out));
    let r = parse(&out);
    assert_eq!(r["state"], "broken", "{r:#}");
    // The trees were checked by hash (the store has none), the models by hashing them.
    assert_eq!(r["unchecked"], json!([]), "{r:#}");
    assert_eq!(r["found"]["missing"], json!([A_PATH]), "{r:#}");
    assert_eq!(r["found"]["modified"], json!([B_PATH]), "{r:#}");
    assert!(has(&r["extra_models"], UNLISTED), "{r:#}");
    assert!(srv.requests().is_empty(), "verify without --fix downloaded");

    let out = e.cs(&store2, &["--json", "verify", lp, dest, "--fix"]);
    assert_eq!(code(&out), 3, "verify --fix: {}", describe(&out));
    let r = parse(&out);
    assert_eq!(r["state"], "fixed", "{r:#}");
    let fetched = &r["fetched"];
    assert_eq!(failures(fetched), BTreeMap::new(), "{r:#}");
    let mut downloaded: Vec<&str> = fetched["downloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    downloaded.sort();
    assert_eq!(downloaded, vec![A_PATH, B_PATH], "{r:#}");
    assert!(fetched_trees(fetched).is_empty(), "{r:#}");
    for p in ["/files/a.safetensors", "/files/b.safetensors"] {
        assert!(
            srv.requests_for(p).iter().any(|q| q.method == "GET"),
            "no GET {p}"
        );
    }
    assert_eq!(r["after"]["missing"], json!([]), "{r:#}");
    assert_eq!(r["after"]["modified"], json!([]), "{r:#}");
    assert!(fs::read(&a).unwrap() == model_a(), "{A_PATH} not restored");
    assert!(fs::read(&b).unwrap() == model_b(), "{B_PATH} not restored");
    assert_eq!(fs::read(&extra).unwrap(), b"user's own lora");
    assert!(has(&r["extra_models"], UNLISTED), "{r:#}");
    assert_eq!(r["unchecked"], json!([]), "{r:#}");

    // Now clean, in both stores; the user's file is still reported, still there.
    for store in [&store2, &e.store] {
        let out = e.cs(store, &["verify", lp, dest]);
        assert_eq!(code(&out), 0, "verify after fix: {}", describe(&out));
        assert_eq!(
            verify_lines(&out),
            vec![format!("extra-model\t{UNLISTED}")],
            "{}",
            describe(&out)
        );
    }
    assert!(extra.is_file());
    // Other user data was never touched.
    assert_eq!(
        fs::read(e.comfy.join("output/ComfyUI_00001_.png")).unwrap(),
        b"\x89PNG out"
    );
}

/// `extra_models` is documented as "model files under `models/` that the lock does not list".
/// ComfyUI's tracked `put_*_here` placeholders and hidden files are not models: `lock` skips
/// them (src/lock/models.rs `skip_name`), but src/materialize/verify.rs keeps every `models/`
/// path of `found.extra` not ending in `.placeholder`, so `verify` reports them.
#[test]
fn verify_does_not_report_placeholders_or_hidden_files_as_extra_models() {
    let e = Env::new(Url::Path);
    write(&e.comfy.join("models/.hidden-note"), b"not a model");
    let (lock_path, lock) = e.lock(&[]);
    assert_eq!(
        lock["models"].as_array().unwrap().len(),
        2,
        "lock skips placeholders and hidden files: {lock:#}"
    );
    write(&e.comfy.join(UNLISTED), b"user's own lora");
    let out = e.cs(&e.store, &["--json", "verify", s(&lock_path), s(&e.comfy)]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let r = parse(&out);
    assert_eq!(r["extra_models"], json!([UNLISTED]), "{r:#}");
}

/// A model the lock lists but the store lacks is still checked (by hashing the file against
/// the lock), so it is neither `unchecked` nor an `extra-model`.
#[test]
fn verify_does_not_report_listed_models_as_extra() {
    let e = Env::new(Url::Path);
    let (lock_path, _) = e.lock(&[]);
    write(&e.comfy.join(UNLISTED), b"user's own lora");
    let store2 = e.p("store2");
    let out = e.cs(
        &store2,
        &[
            "--json",
            "verify",
            s(&lock_path),
            s(&e.comfy),
            "--only",
            "models",
        ],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let r = parse(&out);
    assert_eq!(r["unchecked"], json!([]), "{r:#}");
    assert_eq!(r["found"]["ok"], 2, "{r:#}");
    let extra: Vec<&Value> = r["extra_models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p.as_str().unwrap().contains("put_checkpoints_here"))
        .collect();
    assert_eq!(extra, vec![&json!(UNLISTED)], "{r:#}");
}

#[test]
fn verify_uses_the_stat_cache() {
    let e = Env::new(Url::Path);
    let (lock_path, _) = e.lock(&[]);
    let args = ["--json", "verify", s(&lock_path), s(&e.comfy)];
    let first = parse(&e.cs(&e.store, &args));
    assert_eq!(first["state"], "clean", "{first:#}");
    let out = e.cs(&e.store, &args);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let second = parse(&out);
    assert_eq!(second["state"], "clean", "{second:#}");
    assert_eq!(second["found"]["rehashed"], 0, "{second:#}");
    let entries = second["found"]["entries"].as_u64().unwrap();
    assert!(entries >= 10, "{second:#}");

    let mut full_args = args.to_vec();
    full_args.push("--full");
    let out = e.cs(&e.store, &full_args);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let full = parse(&out);
    let rehashed = full["found"]["rehashed"].as_u64().unwrap();
    // Every file (models included) is read again.
    assert!(rehashed >= 8, "{full:#}");

    // A same-size edit with a new mtime is caught, and only that file is read.
    let f = e.node_dir().join("nodes.py");
    let old = fs::read(&f).unwrap();
    let mut new = old.clone();
    new[0] = if new[0] == b'#' { b'%' } else { b'#' };
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&f, &new).unwrap();
    let out = e.cs(&e.store, &args);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    let after = parse(&out);
    assert_eq!(
        after["found"]["modified"],
        json!([format!("{NODE_LABEL}/nodes.py")]),
        "{after:#}"
    );
    assert_eq!(after["found"]["rehashed"], 1, "{after:#}");
}

/// Files under a store's `objects/` and `trees/`: what a verify that only hashes must not add.
fn stored_count(store: &Path) -> usize {
    ["objects", "trees"]
        .iter()
        .flat_map(|d| walkdir::WalkDir::new(store.join(d)))
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_type().is_file()))
        .count()
}

/// part → state of a verify report's `by_hash`.
fn by_hash(r: &Value) -> BTreeMap<String, String> {
    pairs(r, "by_hash", "part", "state")
}

/// The lock, and the install materialized from the lock's store into `dir/dest` (copies, so
/// an edit in DEST is not an edit of a store object).
fn locked_and_materialized(e: &Env) -> (PathBuf, Value, PathBuf) {
    let (lock_path, lock) = e.lock(&[]);
    let dest = e.p("dest");
    e.ok(
        &e.store,
        &["materialize", s(&lock_path), s(&dest), "--link", "copy"],
    );
    (lock_path, lock, dest)
}

/// A tree id is a hash: a store that lacks the lock's trees still checks ComfyUI and the
/// nodes, by hashing their folders in DEST (a materialized copy, walked; the original install,
/// by git's file list), and writes nothing while doing so.
#[test]
fn verify_by_hash_needs_no_stored_tree() {
    let e = Env::new(Url::Path);
    let (lock_path, lock, dest) = locked_and_materialized(&e);
    let empty = e.p("empty");
    for d in [&dest, &e.comfy] {
        let out = e.cs(&empty, &["--json", "verify", s(&lock_path), s(d)]);
        assert_eq!(code(&out), 0, "verify {}: {}", d.display(), describe(&out));
        let r = parse(&out);
        assert_eq!(r["state"], "clean", "{r:#}");
        assert_eq!(r["unchecked"], json!([]), "{r:#}");
        let want = [("comfyui", "ok"), (NODE_LABEL, "ok")];
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(by_hash(&r), want, "{r:#}");
        // Only user data is extra: the parts' files were checked by their hash.
        let extra = r["found"]["extra"].as_array().unwrap();
        assert!(
            extra.iter().all(|p| {
                let p = p.as_str().unwrap();
                ["models/", "output/", "user/"]
                    .iter()
                    .any(|d| p.starts_with(d))
            }),
            "{r:#}"
        );
    }
    assert_eq!(
        stored_count(&empty),
        0,
        "verify without --fix stored something"
    );

    // One byte of one node file changed: that node is named, with both ids; ComfyUI is ok.
    let f = dest.join(NODE_LABEL).join("nodes.py");
    let mut data = fs::read(&f).unwrap();
    data[0] ^= 0x20;
    fs::write(&f, &data).unwrap();
    let out = e.cs(&empty, &["--json", "verify", s(&lock_path), s(&dest)]);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    let r = parse(&out);
    assert_eq!(by_hash(&r)[NODE_LABEL], "modified", "{r:#}");
    assert_eq!(by_hash(&r)["comfyui"], "ok", "{r:#}");
    let node_tree = tree_str(&node(&lock, NODE)["tree"]);
    let text = e.cs(&empty, &["verify", s(&lock_path), s(&dest)]);
    assert_eq!(code(&text), 4, "{}", describe(&text));
    let line = verify_lines(&text)
        .into_iter()
        .find(|l| l.starts_with(&format!("modified\t{NODE_LABEL}\t")))
        .unwrap_or_else(|| panic!("no line for {NODE_LABEL}: {}", describe(&text)));
    assert!(
        line.contains(&format!("tree differs: expected {node_tree}, got b3:")),
        "{line}"
    );
    assert_eq!(
        stored_count(&empty),
        0,
        "verify without --fix stored something"
    );
}

/// `verify --fix` against a store that lacks the trees fetches only the parts that hashed
/// different: ComfyUI, intact, is not fetched (its repo here leads nowhere), the node is
/// fetched from git and repaired, file by file.
#[test]
fn verify_fix_fetches_only_broken_parts() {
    let e = Env::new(Url::Path);
    let (lock_path, mut lock, dest) = locked_and_materialized(&e);
    lock["comfyui"]["repo"] = json!(s(&e.p("git/nowhere.git")));
    write_json(&lock_path, &lock);
    let lp = s(&lock_path);
    let empty = e.p("empty");

    // Everything intact: offline is enough, nothing to fetch.
    let out = e.cs(&empty, &["verify", lp, s(&dest), "--fix", "--offline"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));

    let f = dest.join(NODE_LABEL).join("nodes.py");
    let good = fs::read(&f).unwrap();
    fs::write(&f, b"class NodeA:\n    BROKEN = 1\n").unwrap();

    // Offline: the node cannot be fetched, and nothing is tried for ComfyUI.
    let out = e.cs(
        &empty,
        &["--json", "verify", lp, s(&dest), "--fix", "--offline"],
    );
    assert_eq!(code(&out), 4, "{}", describe(&out));
    let r = parse(&out);
    let failed = failures(&r["fetched"]);
    assert!(failed.contains_key(NODE_LABEL), "{r:#}");
    assert!(!failed.contains_key("comfyui"), "{r:#}");

    // Online: only the node's tree is fetched; the files are named, and restored.
    let out = e.cs(&empty, &["--json", "verify", lp, s(&dest), "--fix"]);
    assert_eq!(code(&out), 3, "{}", describe(&out));
    let r = parse(&out);
    assert_eq!(r["state"], "fixed", "{r:#}");
    assert_eq!(
        fetched_trees(&r["fetched"]).keys().collect::<Vec<_>>(),
        vec![NODE_LABEL],
        "{r:#}"
    );
    assert!(!failures(&r["fetched"]).contains_key("comfyui"), "{r:#}");
    assert_eq!(
        r["found"]["modified"],
        json!([format!("{NODE_LABEL}/nodes.py")]),
        "{r:#}"
    );
    assert_eq!(fs::read(&f).unwrap(), good);
    let comfy_tree = tree_str(&lock["comfyui"]["tree"]);
    let out = e.cs(&empty, &["ls", comfy_tree]);
    assert_ne!(
        code(&out),
        0,
        "ComfyUI's tree was fetched: {}",
        describe(&out)
    );
    let out = e.cs(&empty, &["verify", lp, s(&dest)]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
}

// ---------------------------------------------------------------------------------------------
// 3. --offline.

#[test]
fn offline_never_opens_a_connection() {
    let e = Env::new(Url::Path);
    let srv = model_server();
    let sources = e.sources_file(&srv);
    let (lock_path, mut lock) = e.lock(&["--sources", s(&sources)]);
    // Repos on the same server: a git fetch would show in its log too.
    lock["comfyui"]["repo"] = json!(srv.url("/git/ComfyUI.git"));
    node_mut(&mut lock, NODE)["repo"] = json!(srv.url("/git/NodeA.git"));
    write_json(&lock_path, &lock);
    let lp = s(&lock_path);

    let store2 = e.p("store2");
    let out = e.cs(&store2, &["fetch", lp, "--offline"]);
    assert_eq!(code(&out), 1, "fetch --offline: {}", describe(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    for want in [
        format!("{A_PATH}: "),
        format!("{B_PATH}: "),
        "missing comfyui: offline".to_string(),
        format!("missing {NODE_LABEL}: offline"),
        format!("would download it from {}", srv.url("/files/a.safetensors")),
        format!("would download it from {}", srv.url("/files/b.safetensors")),
        format!("would fetch {}@", srv.url("/git/NodeA.git")),
    ] {
        assert!(text.contains(&want), "no {want:?} in {}", describe(&out));
    }
    let out = e.cs(&store2, &["--json", "fetch", lp, "--offline"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let report = parse(&out);
    let failed = failures(&report);
    // (Sorted: failures() is a map.)
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        vec!["comfyui", NODE_LABEL, A_PATH, B_PATH],
        "{report:#}"
    );
    assert!(
        failed["comfyui"].contains(&srv.url("/git/ComfyUI.git")),
        "{report:#}"
    );
    assert_eq!(
        report["needed_bytes"],
        (model_a().len() + model_b().len()) as u64,
        "{report:#}"
    );
    assert_eq!(report["downloaded"], json!([]), "{report:#}");
    assert_eq!(report["trees"], json!([]), "{report:#}");

    // verify --fix --offline: still broken, nothing fetched.
    fs::remove_file(e.comfy.join(A_PATH)).unwrap();
    let out = e.cs(
        &store2,
        &["--json", "verify", lp, s(&e.comfy), "--fix", "--offline"],
    );
    assert_eq!(code(&out), 4, "verify --fix --offline: {}", describe(&out));
    let r = parse(&out);
    assert_eq!(r["state"], "broken", "{r:#}");
    assert!(e.comfy.join(B_PATH).is_file());
    assert!(!e.comfy.join(A_PATH).exists());

    let reqs = srv.requests();
    assert!(
        reqs.is_empty(),
        "--offline opened connections: {:?}",
        reqs.iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );

    // The check can fail: online, the same fetch reaches the server (for the models, and for
    // git, which finds no repo there).
    let out = e.cs(&store2, &["--json", "fetch", lp, "--retries", "0"]);
    assert_eq!(code(&out), 1, "{}", describe(&out));
    let report = parse(&out);
    assert_eq!(
        failures(&report).keys().collect::<Vec<_>>(),
        vec!["comfyui", NODE_LABEL],
        "{report:#}"
    );
    assert!(!srv.requests_for("/files/a.safetensors").is_empty());
    assert!(srv
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/git/ComfyUI.git")));
}

// ---------------------------------------------------------------------------------------------
// 4. Offline mirrors.

#[test]
fn mirror_round_trip() {
    let e = Env::new(Url::Path);
    let (lock_path, lock) = e.lock(&[]);
    let comfy_tree = tree_str(&lock["comfyui"]["tree"]).to_string();
    let node_tree = tree_str(&node(&lock, NODE)["tree"]).to_string();
    let dir = e.p("mirror");
    let out = e.cs(&e.store, &["--json", "mirror", s(&lock_path), s(&dir)]);
    assert_eq!(code(&out), 0, "mirror: {}", describe(&out));
    let report = parse(&out);
    assert_eq!(report["fetch"]["failed"], json!([]), "{report:#}");

    // Layout.
    let manifest = read_json(&dir.join("mirror.json"));
    assert_eq!(manifest["schema"], "comfystore.mirror/1", "{manifest:#}");
    assert_eq!(manifest["locks"], json!([TAG]), "{manifest:#}");
    let files: BTreeMap<String, Value> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_string(), f.clone()))
        .collect();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        vec![A_PATH, B_PATH],
        "{manifest:#}"
    );
    assert_eq!(
        fs::read(dir.join(format!("lockfiles/comfy-{TAG}.lock.json"))).unwrap(),
        fs::read(&lock_path).unwrap(),
        "the mirrored lock is the lock"
    );
    let bundle = dir.join(format!("bundles/{TAG}.bundle"));
    assert!(fs::metadata(&bundle).unwrap().len() > 0);
    assert_eq!(
        report["bundle_bytes"],
        fs::metadata(&bundle).unwrap().len(),
        "{report:#}"
    );
    for (path, data) in [(A_PATH, model_a()), (B_PATH, model_b())] {
        let f = dir.join(path);
        assert!(fs::read(&f).unwrap() == data, "{path} in the mirror");
        let sha = sha256_hex(&data);
        assert_eq!(files[path]["sha256"], sha.as_str());
        assert_eq!(files[path]["size"], data.len() as u64);
        let link = dir.join("sha256").join(&sha);
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("..").join(path),
            "sha256 link"
        );
        assert!(fs::read(&link).unwrap() == data);
        // Linked (same inode as the store's object) or a copy/reflink (own inode): either way
        // a regular file of the right size.
        let meta = fs::symlink_metadata(&f).unwrap();
        assert!(meta.is_file());
        let obj = e
            .store
            .join("objects/b3")
            .join(&b3_hex(&data)[..2])
            .join(&b3_hex(&data)[2..]);
        let obj_meta = fs::metadata(&obj).unwrap();
        if meta.ino() == obj_meta.ino() {
            assert!(meta.nlink() >= 2);
        }
    }

    // Another machine: an empty store, no network, only the mirror.
    let store2 = e.p("store2");
    let out = e.cs(
        &store2,
        &[
            "--json",
            "fetch",
            s(&lock_path),
            "--mirror",
            s(&dir),
            "--offline",
        ],
    );
    assert_eq!(
        code(&out),
        0,
        "fetch --mirror --offline: {}",
        describe(&out)
    );
    let report = parse(&out);
    assert_eq!(report["imported"], json!([s(&bundle)]), "{report:#}");
    assert_eq!(report["trees"], json!([]), "trees came from the bundle");
    let mut downloaded: Vec<&str> = report["downloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    downloaded.sort();
    assert_eq!(downloaded, vec![A_PATH, B_PATH], "{report:#}");

    for t in [&comfy_tree, &node_tree] {
        let a: Value = serde_json::from_str(&e.ok(&e.store, &["--json", "ls", t])).unwrap();
        let b: Value = serde_json::from_str(&e.ok(&store2, &["--json", "ls", t])).unwrap();
        assert_eq!(a, b, "ls {t}");
        assert!(!a.as_array().unwrap().is_empty());
        let m1 = e.p(&format!("m1-{}", &t[3..15]));
        let m2 = e.p(&format!("m2-{}", &t[3..15]));
        e.ok(&e.store, &["materialize", t, s(&m1)]);
        e.ok(&store2, &["materialize", t, s(&m2)]);
        assert_same_files(&snapshot(&m1, &[]), &snapshot(&m2, &[]), t);
    }
    for data in [model_a(), model_b()] {
        let out = e.cs(&store2, &["cat", &format!("b3:{}", b3_hex(&data))]);
        assert_eq!(code(&out), 0, "{}", describe(&out));
        assert!(out.stdout == data, "cat gave other bytes");
    }
    let out = e.cs(&store2, &["fsck"]);
    assert_eq!(code(&out), 0, "fsck of the new store: {}", describe(&out));

    // And the new store can verify the install with no network.
    let out = e.cs(
        &store2,
        &["verify", s(&lock_path), s(&e.comfy), "--offline"],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));

    // Mirroring again writes nothing new.
    let out = e.cs(&e.store, &["--json", "mirror", s(&lock_path), s(&dir)]);
    assert_eq!(code(&out), 0, "mirror again: {}", describe(&out));
    let again = parse(&out);
    assert_eq!(again["written"], 0, "{again:#}");
    assert_eq!(again["present"], 2, "{again:#}");
    assert_eq!(read_json(&dir.join("mirror.json")), manifest);

    // verify --fix repairs from the mirror alone, into yet another empty store.
    let a = e.comfy.join(A_PATH);
    fs::remove_file(&a).unwrap();
    let store3 = e.p("store3");
    let out = e.cs(
        &store3,
        &[
            "--json",
            "verify",
            s(&lock_path),
            s(&e.comfy),
            "--fix",
            "--offline",
            "--mirror",
            s(&dir),
        ],
    );
    assert_eq!(code(&out), 3, "verify --fix --mirror: {}", describe(&out));
    let r = parse(&out);
    assert_eq!(r["fetched"]["imported"], json!([s(&bundle)]), "{r:#}");
    assert!(fs::read(&a).unwrap() == model_a(), "{A_PATH} not restored");
}

/// `python3 -m pip ARGS...` with no pip configuration from the environment.
fn pip(args: &[&str]) -> Output {
    let mut cmd = Command::new("python3");
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("PIP_") || name.starts_with("PYTHON") || name == "VIRTUAL_ENV" {
            cmd.env_remove(&k);
        }
    }
    cmd.env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .args(["-m", "pip"])
        .args(args);
    cmd.output().expect("run python3 -m pip")
}

#[test]
fn mirror_wheels_pep503() {
    let e = Env::new(Url::Path);
    let wheel = ComfyFixture::build_wheel(
        &e.p("wheels"),
        "Tiny_Wheel",
        "1.2",
        &[("tiny_wheel/__init__.py", "VALUE = 12\n")],
    );
    let file = wheel.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(file, "Tiny_Wheel-1.2-py3-none-any.whl");
    let bytes = fs::read(&wheel).unwrap();
    let sha = sha256_hex(&bytes);
    let srv = TestServer::start();
    srv.add(&format!("/pkgs/{file}"), bytes.clone(), Behavior::Normal);

    // A lock made without Python, given a pinned wheel.
    let (lock_path, mut lock) = e.lock(&[]);
    lock["python"] = json!({
        "packages": [{
            "name": "tiny-wheel",
            "version": "1.2",
            "wheel": file,
            "url": srv.url(&format!("/pkgs/{file}")),
            "sha256": sha,
        }]
    });
    write_json(&lock_path, &lock);
    let out = e.cs(&e.store, &["show", s(&lock_path)]);
    assert_eq!(
        code(&out),
        0,
        "the edited lock is valid: {}",
        describe(&out)
    );

    let dir = e.p("mirror");
    let out = e.cs(&e.store, &["--json", "mirror", s(&lock_path), s(&dir)]);
    assert_eq!(code(&out), 0, "mirror: {}", describe(&out));
    let report = parse(&out);
    let downloaded: Vec<&str> = report["fetch"]["downloaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    assert_eq!(downloaded, vec![format!("wheels/{file}")], "{report:#}");
    assert!(srv
        .requests_for(&format!("/pkgs/{file}"))
        .iter()
        .any(|r| r.method == "GET"));

    let in_mirror = dir.join("wheels").join(&file);
    assert!(
        fs::read(&in_mirror).unwrap() == bytes,
        "wheel in the mirror"
    );
    let manifest = read_json(&dir.join("mirror.json"));
    assert!(
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == format!("wheels/{file}") && f["sha256"] == sha.as_str()),
        "{manifest:#}"
    );
    assert_eq!(
        fs::read_link(dir.join("sha256").join(&sha)).unwrap(),
        Path::new("..").join("wheels").join(&file)
    );
    let page = fs::read_to_string(dir.join("simple/tiny-wheel/index.html")).unwrap();
    assert!(
        page.contains(&format!("href=\"../../wheels/{file}#sha256={sha}\"")),
        "{page}"
    );
    let root = fs::read_to_string(dir.join("simple/index.html")).unwrap();
    assert!(root.contains("href=\"tiny-wheel/\""), "{root}");

    // pip installs it from the mirror alone, both ways.
    if code(&pip(&["--version"])) != 0 {
        common::cannot_run(
            "mirror_wheels_pep503 (its pip half)",
            "python3 -m pip is not available",
        );
        return;
    }
    let x = e.p("pip-find-links");
    let out = pip(&[
        "download",
        "--no-index",
        "--no-deps",
        "--find-links",
        s(&dir.join("wheels")),
        "tiny-wheel==1.2",
        "-d",
        s(&x),
    ]);
    assert_eq!(
        code(&out),
        0,
        "pip download --find-links: {}",
        describe(&out)
    );
    assert!(fs::read(x.join(&file)).unwrap() == bytes);
    let t = e.p("pip-target");
    let index = format!("file://{}", s(&dir.join("simple")));
    let out = pip(&[
        "install",
        "--no-deps",
        "--index-url",
        &index,
        "--target",
        s(&t),
        "tiny-wheel==1.2",
    ]);
    assert_eq!(code(&out), 0, "pip install --index-url: {}", describe(&out));
    assert_eq!(
        fs::read_to_string(t.join("tiny_wheel/__init__.py")).unwrap(),
        "VALUE = 12\n"
    );
}

// ---------------------------------------------------------------------------------------------
// A lock imported from a ComfyUI-Manager snapshot (repo + commit, no trees).

#[test]
fn snapshot_lock_fetches_once_and_materializes() {
    let e = Env::new(Url::File);
    let comfy_head = git(&e.comfy, &["rev-parse", "HEAD"]);
    let node_head = git(&e.node_dir(), &["rev-parse", "HEAD"]);
    let snap = e.p("snapshot.json");
    write_json(
        &snap,
        &json!({
            "comfyui": comfy_head,
            "git_custom_nodes": { e.url(&e.node_bare, Url::File): { "hash": node_head, "disabled": false } },
            "cnr_custom_nodes": {},
            "file_custom_nodes": [],
            "pips": {}
        }),
    );
    // A snapshot never says where ComfyUI comes from: the import names GitHub, which git is
    // told to find in the fixture's bare repo.
    let redirect = format!(
        "[url \"{}\"]\n\tinsteadOf = https://github.com/comfyanonymous/ComfyUI\n",
        e.url(&e.comfy_bare, Url::File)
    );
    fs::write(&e.gitconfig, redirect).unwrap();
    let lock = e.p("snap.lock.json");
    let store = e.p("fresh-store");
    e.ok(
        &store,
        &["import-snapshot", s(&snap), "--tag", "snap", "-o", s(&lock)],
    );
    assert_eq!(read_json(&lock)["comfyui"]["tree"], Value::Null);

    let fetch = |what: &str| {
        let out = e.cs(&store, &["--json", "fetch", s(&lock)]);
        assert_eq!(code(&out), 0, "{what} fetch: {}", describe(&out));
        parse(&out)
    };
    let first = fetch("first");
    let trees = fetched_trees(&first);
    let labels: Vec<&str> = trees.keys().map(String::as_str).collect();
    assert_eq!(labels, ["comfyui", NODE_LABEL], "{first:#}");

    // show counts the recorded trees as in the store (the lock itself names none).
    let shown = e.cs(&store, &["--json", "show", s(&lock)]);
    assert_eq!(code(&shown), 0, "show: {}", describe(&shown));
    let shown = parse(&shown);
    assert_eq!(shown["comfyui"]["in_store"], true, "{shown:#}");
    assert_eq!(shown["custom_nodes"]["missing"], json!([]), "{shown:#}");

    // materialize composes the version from the trees fetch recorded for repo + commit.
    let dest = e.p("dest");
    e.ok(&store, &["materialize", s(&lock), s(&dest)]);
    let skip = ["models", "custom_nodes", "output", "input", "user", "temp"];
    assert_same_files(
        &snapshot(&e.comfy, &skip),
        &snapshot(&dest, &skip),
        "comfyui",
    );
    assert_same_files(
        &snapshot(&e.node_dir(), &[]),
        &snapshot(&dest.join("custom_nodes").join(NODE), &[]),
        NODE_LABEL,
    );

    // The repos are gone: a second fetch needs nothing and runs no git.
    fs::rename(e.p("git"), e.p("git-moved")).unwrap();
    let second = fetch("second");
    assert_eq!(second["trees"], json!([]), "{second:#}");
    assert_eq!(second["needed"], json!([]), "{second:#}");
    assert_eq!(failures(&second), BTreeMap::new(), "{second:#}");
    // gc keeps what the lock's root (and the record) name.
    e.ok(&store, &["gc", "--grace", "0s"]);
    let again = e.p("dest-again");
    e.ok(&store, &["materialize", s(&lock), s(&again)]);
    assert_same_files(
        &snapshot(&dest, &[]),
        &snapshot(&again, &[]),
        "second materialize",
    );
}

/// A mirror folder with a planted `models -> outside` symlink: refused, nothing written there.
#[test]
fn mirror_never_writes_through_a_planted_models_symlink() {
    let e = Env::new(Url::Path);
    let (lock_path, _) = e.lock(&[]);
    let dir = e.p("mirror");
    let outside = e.p("outside");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("models")).unwrap();
    let out = e.cs(&e.store, &["mirror", s(&lock_path), s(&dir)]);
    assert_eq!(code(&out), 1, "mirror: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing"),
        "{}",
        describe(&out)
    );
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside the mirror"
    );
}

#[test]
fn fetch_restores_a_lost_sha256_alias() {
    let e = Env::new(Url::Path);
    let srv = model_server();
    let sources = e.sources_file(&srv);
    let (lock_path, _) = e.lock(&["--sources", s(&sources)]);
    let store2 = e.p("store2");
    e.ok(&store2, &["fetch", s(&lock_path)]);
    let sha = sha256_hex(&model_a());
    let by_sha = format!("sha256:{sha}");
    assert!(e.cs(&store2, &["cat", &by_sha]).stdout == model_a());

    // What a fetch killed between publishing the model and writing its alias leaves: the
    // object, without its alias file nor its index row.
    let alias = store2
        .join("aliases/sha256")
        .join(&sha[..2])
        .join(&sha[2..]);
    fs::remove_file(&alias).unwrap();
    e.ok(&store2, &["index", "rebuild"]);
    assert_ne!(code(&e.cs(&store2, &["cat", &by_sha])), 0);

    // Fetching again finds the model present and restores its alias.
    e.ok(&store2, &["fetch", s(&lock_path)]);
    assert!(alias.is_file(), "fetch did not restore {}", alias.display());
    let out = e.cs(&store2, &["cat", &by_sha]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(out.stdout == model_a());
    e.ok(&store2, &["fsck", "--sha256"]);
}

/// A model changed through a hardlink in DEST changes the store's object: `verify` says
/// `--fix` restores it, and `--fix` does (the object goes to quarantine and is downloaded
/// again from the lock's sources).
#[test]
fn verify_fix_restores_a_store_object_changed_through_a_hardlink() {
    let e = Env::new(Url::Path);
    let srv = model_server();
    let sources = e.sources_file(&srv);
    let (lock_path, _) = e.lock(&["--sources", s(&sources)]);
    let dest = e.p("dest");
    e.ok(
        &e.store,
        &["materialize", s(&lock_path), s(&dest), "--link", "hardlink"],
    );
    let f = dest.join(A_PATH);
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut h, b"x\n").unwrap();
    drop(h);

    let out = e.cs(&e.store, &["verify", s(&lock_path), s(&dest)]);
    assert_eq!(code(&out), 4, "{}", describe(&out));
    assert!(
        stderr(&out).contains("--fix restores it"),
        "{}",
        describe(&out)
    );
    let out = e.cs(
        &e.store,
        &["--json", "verify", s(&lock_path), s(&dest), "--fix"],
    );
    assert_eq!(code(&out), 3, "verify --fix: {}", describe(&out));
    assert_eq!(parse(&out)["state"], "fixed", "{}", describe(&out));
    assert!(fs::read(&f).unwrap() == model_a());
    let out = e.cs(&e.store, &["verify", s(&lock_path), s(&dest)]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    e.ok(&e.store, &["fsck"]);
}

/// A model changed through a hardlink in one DEST is not copied into another: materialize
/// finds it changed, moves it to quarantine, downloads it again from the lock's sources and
/// places the right bytes.
#[test]
fn materialize_fetches_again_an_object_found_changed() {
    let e = Env::new(Url::Path);
    let srv = model_server();
    let sources = e.sources_file(&srv);
    let (lock_path, _) = e.lock(&["--sources", s(&sources)]);
    let (d1, d2) = (e.p("d1"), e.p("d2"));
    e.ok(
        &e.store,
        &["materialize", s(&lock_path), s(&d1), "--link", "hardlink"],
    );
    let f = d1.join(A_PATH);
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut h, b"x\n").unwrap();
    drop(h);
    let before = srv.requests_for("/files/a.safetensors").len();

    let out = e.cs(
        &e.store,
        &["materialize", s(&lock_path), s(&d2), "--link", "copy"],
    );
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        fs::read(d2.join(A_PATH)).unwrap() == model_a(),
        "wrong bytes copied"
    );
    assert!(
        srv.requests_for("/files/a.safetensors").len() > before,
        "not fetched again"
    );
    assert_eq!(fs::read_dir(e.store.join("quarantine")).unwrap().count(), 1);
    e.ok(&e.store, &["fsck"]);
}

/// kill -9 at random points of `fetch` (git trees, downloads, aliases, root), 20 times: after
/// every kill the store passes fsck and the install is untouched; the rerun completes and
/// every model is found by its SHA-256 (the alias is part of publishing a download).
#[test]
fn kill_9_during_fetch_leaves_fsck_clean_and_the_rerun_restores_every_alias() {
    use std::os::unix::process::ExitStatusExt;
    let e = Env::new(Url::Path);
    let srv = model_server();
    let sources = e.sources_file(&srv);
    let (lock_path, _) = e.lock(&["--sources", s(&sources)]);
    let install = snapshot(&e.comfy, &[]);
    let spawn = |store: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_comfystore"));
        c.arg("--store")
            .arg(store)
            .args(["fetch", s(&lock_path)])
            .env("GIT_CONFIG_GLOBAL", &e.gitconfig)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", e.p("home"))
            .env("HF_HOME", e.p("hf"))
            .env("COMFYSTORE_NO_PIN_WHEELS", "1")
            .env_remove("COMFYSTORE_DIR")
            .env_remove("COMFYSTORE_INDEX")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for k in NETWORK_ENV {
            c.env_remove(k);
        }
        c.spawn().expect("spawn fetch")
    };
    // Spread the kills over one whole fetch into an empty store.
    let started = std::time::Instant::now();
    let status = spawn(&e.p("scratch")).wait().unwrap();
    assert!(status.success(), "fetch: {status}");
    let span_ms = (started.elapsed().as_millis() as u64).clamp(10, 2_000);

    let mut seed: u64 = 0x5eed_f37c;
    let (mut killed, mut round) = (0, 0);
    while killed < 20 {
        round += 1;
        assert!(
            round <= 60,
            "only {killed} fetches were killed while running"
        );
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let store = e.p(&format!("s{round}"));
        let mut child = spawn(&store);
        std::thread::sleep(std::time::Duration::from_millis(seed % (span_ms + 1)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Killed, or it had finished by the time the signal came (then it must have succeeded).
        if status.signal() == Some(9) {
            killed += 1;
        } else {
            assert!(status.success(), "round {round}: fetch failed: {status}");
        }
        if store.join("comfystore-store.json").exists() {
            let out = e.cs(&store, &["--json", "fsck"]);
            assert_eq!(code(&out), 0, "round {round}: fsck: {}", describe(&out));
        }
        assert!(
            snapshot(&e.comfy, &[]) == install,
            "round {round}: the install changed"
        );
        // The rerun completes, and restores what the kill left out.
        e.ok(&store, &["fetch", s(&lock_path)]);
        for (bytes, path) in [(model_a(), A_PATH), (model_b(), B_PATH)] {
            let out = e.cs(&store, &["cat", &format!("sha256:{}", sha256_hex(&bytes))]);
            assert!(
                code(&out) == 0 && out.stdout == bytes,
                "round {round}: {path} by its sha256: {}",
                describe(&out)
            );
        }
        e.ok(&store, &["fsck", "--sha256"]);
        let _ = fs::remove_dir_all(&store);
    }
    eprintln!("{killed} of {round} fetches killed while running (span {span_ms} ms)");
}

/// A lock that gives a stored model another size makes no tree that lies about it (every
/// materialize would "repair" the file again): materialize refuses, naming the model.
#[test]
fn a_lock_that_lies_about_a_model_size_makes_no_tree() {
    let e = Env::new(Url::Path);
    let (lock_path, mut lock) = e.lock(&[]);
    let dest = e.p("dest");
    let m = lock["models"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["path"] == A_PATH)
        .unwrap();
    m["size"] = json!(model_a().len() + 1);
    write_json(&lock_path, &lock);
    let out = e.cs(&e.store, &["materialize", s(&lock_path), s(&dest)]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("{} bytes", model_a().len() + 1)),
        "{}",
        describe(&out)
    );
    assert!(!dest.join(A_PATH).exists());
    e.ok(&e.store, &["fsck"]);
}

/// Materializing a lock again over the DEST whose hardlink changed a model's object: the
/// object goes to quarantine, is downloaded again and DEST gets the right bytes.
#[test]
fn materialize_over_a_dest_that_changed_an_object_fetches_it_again() {
    let e = Env::new(Url::Path);
    let srv = model_server();
    let sources = e.sources_file(&srv);
    let (lock_path, _) = e.lock(&["--sources", s(&sources)]);
    let dest = e.p("dest");
    let args = ["materialize", s(&lock_path), s(&dest), "--link", "hardlink"];
    e.ok(&e.store, &args);
    let f = dest.join(A_PATH);
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut h, b"x\n").unwrap();
    drop(h);

    let out = e.cs(&e.store, &args);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(
        fs::read(&f).unwrap() == model_a(),
        "DEST keeps the changed bytes"
    );
    assert_eq!(fs::read_dir(e.store.join("quarantine")).unwrap().count(), 1);
    e.ok(&e.store, &["fsck"]);
    e.ok(&e.store, &["status", "--verify", s(&dest)]);
}

/// A model changed through a hardlink is not copied into a mirror.
#[test]
fn mirror_never_copies_a_changed_object() {
    let e = Env::new(Url::Path);
    let (lock_path, _) = e.lock(&[]);
    let dest = e.p("dest");
    e.ok(
        &e.store,
        &["materialize", s(&lock_path), s(&dest), "--link", "hardlink"],
    );
    let f = dest.join(A_PATH);
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut h, b"x\n").unwrap();
    drop(h);
    let dir = e.p("mirror");
    let out = e.cs(&e.store, &["mirror", s(&lock_path), s(&dir)]);
    for entry in walkdir::WalkDir::new(&dir).into_iter().flatten() {
        if entry.file_type().is_file() {
            let bytes = fs::read(entry.path()).unwrap();
            assert!(
                !bytes.ends_with(b"x\n") || bytes.len() != model_a().len() + 2,
                "the mirror got the changed bytes at {}: {}",
                entry.path().display(),
                describe(&out)
            );
        }
    }
    assert_eq!(fs::read_dir(e.store.join("quarantine")).unwrap().count(), 1);
}
