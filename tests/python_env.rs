//! Python environments through the real binary: `pin` (requirements → exact wheels with
//! sha256, downloaded into the store), `materialize LOCK DEST` (ComfyUI, nodes, models and a
//! venv installed once and linked afterwards), `remove`, and `init` (clone + pinned venv).
//!
//! Everything is local and offline: the wheels are tiny pure-Python packages the tests build
//! (tests/common/pyindex.rs), served as a PEP 503 index by a real HTTP server on 127.0.0.1;
//! ComfyUI is a small git repo with two tagged commits, cloned from a local bare repo. Every
//! comfystore run gets no PYTHON*/PIP_*/UV_*/GIT_*/COMFYSTORE_* variables from the machine
//! (it sets PIP_FIND_LINKS and PYTHONDONTWRITEBYTECODE), no pip/uv/git configuration files,
//! its own HOME and cache folders, and no proxies.
//!
//! The `harness_*` tests check the harness alone (pip and uv install from the index, the venv
//! checks accept a pip-built venv, `lock` accepts the fixture) and pass without the new
//! commands.

mod common;

use common::comfy::{pseudo_random, ComfyFixture};
use common::pyindex::{
    pip, python3, python_cmd, python_info, scrubbed_vars, site_packages, uv, uv_available,
    wheel_set, IndexServer, Wheel, WheelSet, TINYCLI_OUTPUT,
};
use common::{
    code, describe, json, parse, run_env, s, sha256_hex, stderr, stdout, write, NETWORK_ENV,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// The ComfyUI-shaped repo.

const COMFY_GITIGNORE: &str = "\
__pycache__/
*.py[cod]
/output/
/input/
/models/
/custom_nodes/
/user/
/temp/
venv/
";

const MAIN_V1: &str =
    "import sys\n\nimport comfy.sd\n\nprint(\"ComfyUI fixture v1\", comfy.sd.VERSION)\n";
const MAIN_V2: &str =
    "import sys\n\nimport comfy.sd\n\nprint(\"ComfyUI fixture v2\", comfy.sd.VERSION)\n";
/// ComfyUI's requirements at v1, and at v2 (tinyfoo held back to 1.0).
const REQ_V1: &str = "tinycli\ntinydep\n";
const REQ_V2: &str = "tinycli\ntinydep\ntinyfoo==1.0\n";
/// Only in v1 (v2 deletes it).
const V1_ONLY: &str = "old_v1_only.py";
const MODEL: &str = "models/checkpoints/tiny.safetensors";
const NODE: &str = "NodeA";

fn model_bytes() -> Vec<u8> {
    pseudo_random(71, 4096 + 17)
}

fn git(dir: &Path, args: &[&str]) -> String {
    ComfyFixture::git(dir, args)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(
        &fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One temp dir: the repos, the index server, the store, HOME and caches of one test.
struct Env {
    _tmp: tempfile::TempDir,
    /// The temp dir, canonical.
    dir: PathBuf,
    store: PathBuf,
    wheels: &'static WheelSet,
    srv: IndexServer,
    /// An empty git config (GIT_CONFIG_GLOBAL of every comfystore run).
    gitconfig: PathBuf,
    /// The bare ComfyUI repo (tags v1, v2): `init --repo`, and origin of `comfy`.
    comfy_bare: PathBuf,
    /// A clone of `comfy_bare` with custom_nodes/NodeA (a git repo of its own) and one model.
    comfy: PathBuf,
    /// The commits of tags v1 and v2.
    v1: String,
    v2: String,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        for d in ["home", "cache", "hf/hub", "src", "git"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let gitconfig = dir.join("gitconfig");
        fs::write(&gitconfig, "").unwrap();

        // ComfyUI: v1, then v2 (main.py and requirements.txt change, one file goes).
        let src = dir.join("src/ComfyUI");
        fs::create_dir_all(&src).unwrap();
        git(&src, &["init", "-q", "-b", "master"]);
        write(&src.join(".gitignore"), COMFY_GITIGNORE.as_bytes());
        write(&src.join("main.py"), MAIN_V1.as_bytes());
        write(&src.join("requirements.txt"), REQ_V1.as_bytes());
        write(&src.join("nodes.py"), b"NODE_CLASS_MAPPINGS = {}\n");
        write(&src.join("comfy/__init__.py"), b"");
        write(&src.join("comfy/sd.py"), b"VERSION = 'sd'\n");
        write(&src.join(V1_ONLY), b"# only in v1\n");
        git(&src, &["add", "-A"]);
        write(&src.join("models/checkpoints/put_checkpoints_here"), b"");
        write(&src.join("output/_output_images_will_be_put_here"), b"");
        git(
            &src,
            &[
                "add",
                "-f",
                "models/checkpoints/put_checkpoints_here",
                "output/_output_images_will_be_put_here",
            ],
        );
        git(&src, &["commit", "-q", "--no-verify", "-m", "ComfyUI v1"]);
        git(&src, &["tag", "v1"]);
        let v1 = git(&src, &["rev-parse", "HEAD"]);
        write(&src.join("main.py"), MAIN_V2.as_bytes());
        write(&src.join("requirements.txt"), REQ_V2.as_bytes());
        git(&src, &["rm", "-q", V1_ONLY]);
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-q", "--no-verify", "-m", "ComfyUI v2"]);
        git(&src, &["tag", "v2"]);
        let v2 = git(&src, &["rev-parse", "HEAD"]);

        let comfy_bare = dir.join("git/ComfyUI.git");
        git(&dir, &["clone", "-q", "--bare", s(&src), s(&comfy_bare)]);
        let comfy = dir.join("ComfyUI");
        git(&dir, &["clone", "-q", s(&comfy_bare), s(&comfy)]);
        git(&comfy, &["checkout", "-q", "--detach", "v1"]);

        // A custom node (its own repo) and a model.
        let node = comfy.join("custom_nodes").join(NODE);
        fs::create_dir_all(&node).unwrap();
        git(&node, &["init", "-q", "-b", "main"]);
        write(&node.join("__init__.py"), b"NODE_CLASS_MAPPINGS = {}\n");
        write(&node.join("requirements.txt"), b"tinyfoo\n");
        git(&node, &["add", "-A"]);
        git(&node, &["commit", "-q", "--no-verify", "-m", "NodeA"]);
        write(&comfy.join(MODEL), &model_bytes());

        Env {
            store: dir.join("store"),
            wheels: wheel_set(),
            srv: IndexServer::fixture(),
            gitconfig,
            comfy_bare,
            comfy,
            v1,
            v2,
            _tmp: tmp,
            dir,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn wheel(&self, name: &str, version: &str) -> &'static Wheel {
        self.wheels.get(name, version)
    }

    /// `comfystore --store STORE ARGS...` with a clean environment (see the module docs),
    /// then the `envs` changes.
    fn cs_env(&self, store: &Path, args: &[&str], envs: &[(&str, Option<&OsStr>)]) -> Output {
        let clean = self.clean_env();
        let mut all: Vec<(&str, Option<&OsStr>)> = clean
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        all.extend_from_slice(envs);
        run_env(store, args, &all)
    }

    /// The same run as [`Env::cs`], as a command to spawn (stdin closed, output discarded).
    fn cs_command(&self, store: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfystore"));
        cmd.arg("--store")
            .arg(store)
            .args(args)
            .env_remove("COMFYSTORE_DIR")
            .env_remove("COMFYSTORE_INDEX")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in self.clean_env() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// The environment changes of every comfystore run (see the module docs): `None` removes.
    fn clean_env(&self) -> Vec<(String, Option<OsString>)> {
        let home = self.p("home");
        let cache = self.p("cache");
        let hf = self.p("hf");
        let hub = self.p("hf/hub");
        let mut all: Vec<(&str, Option<&OsStr>)> = Vec::new();
        for k in NETWORK_ENV.iter().chain(&[
            "COMFY_HOME",
            "RUST_LOG",
            "XDG_CONFIG_HOME",
            "GITHUB_TOKEN",
            "GIT_TOKEN",
        ]) {
            all.push((*k, None));
        }
        all.extend([
            ("GIT_CONFIG_GLOBAL", Some(self.gitconfig.as_os_str())),
            ("GIT_CONFIG_NOSYSTEM", Some(OsStr::new("1"))),
            ("GIT_TERMINAL_PROMPT", Some(OsStr::new("0"))),
            ("HOME", Some(home.as_os_str())),
            ("XDG_CACHE_HOME", Some(cache.as_os_str())),
            ("HF_HOME", Some(hf.as_os_str())),
            ("HF_HUB_CACHE", Some(hub.as_os_str())),
            ("PIP_CONFIG_FILE", Some(OsStr::new("/dev/null"))),
            ("PIP_NO_INPUT", Some(OsStr::new("1"))),
            ("PIP_DISABLE_PIP_VERSION_CHECK", Some(OsStr::new("1"))),
            ("UV_NO_CONFIG", Some(OsStr::new("1"))),
            ("UV_PYTHON_DOWNLOADS", Some(OsStr::new("never"))),
            ("COMFYSTORE_BACKOFF", Some(OsStr::new("10ms"))),
            ("LC_ALL", Some(OsStr::new("C"))),
        ]);
        scrubbed_vars()
            .into_iter()
            .map(|k| (k, None))
            .chain(
                all.into_iter()
                    .map(|(k, v)| (k.to_string(), v.map(OsStr::to_os_string))),
            )
            .collect()
    }

    fn cs(&self, store: &Path, args: &[&str]) -> Output {
        self.cs_env(store, args, &[])
    }

    /// Run in `self.store` and require exit 0; the output.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.cs(&self.store, args);
        assert_eq!(code(&out), 0, "comfystore {args:?}: {}", describe(&out));
        out
    }

    /// Write a requirements file; its path.
    fn requirements(&self, name: &str, content: &str) -> PathBuf {
        let p = self.p(name);
        write(&p, content.as_bytes());
        p
    }

    /// Check out `git_ref` in the ComfyUI clone and `lock --no-python` it into `store` as
    /// `out`.
    fn lock_into(&self, store: &Path, git_ref: &str, tag: &str, out: &Path) {
        git(&self.comfy, &["checkout", "-q", "--detach", git_ref]);
        let o = self.cs(
            store,
            &[
                "lock",
                s(&self.comfy),
                "--tag",
                tag,
                "--no-python",
                "-o",
                s(out),
            ],
        );
        assert_eq!(code(&o), 0, "lock: {}", describe(&o));
    }

    /// A lock of tag v1 (REQ_V1) or v2 (REQ_V2) in `self.store`, with its python section from
    /// `pin --lock` against the index.
    fn pinned_lock(&self, tag: &str) -> PathBuf {
        let (commit, req) = match tag {
            "v1" => (self.v1.clone(), REQ_V1),
            "v2" => (self.v2.clone(), REQ_V2),
            _ => unreachable!(),
        };
        let lock = self.p(&format!("{tag}.lock.json"));
        self.lock_into(&self.store, &commit, tag, &lock);
        let req = self.requirements(&format!("req-{tag}.txt"), req);
        let idx = self.srv.index_url();
        self.ok(&["pin", s(&req), "--index-url", &idx, "--lock", s(&lock)]);
        lock
    }

    /// `materialize LOCK DEST EXTRA... --json` in `self.store`, required to succeed; the report
    /// and how long it took.
    fn materialize(&self, lock: &Path, dest: &Path, extra: &[&str]) -> (Value, f64) {
        let mut args = vec!["--json", "materialize", s(lock), s(dest)];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let out = self.ok(&args);
        (parse(&out), t.elapsed().as_secs_f64())
    }

    /// `VENV/bin/python -c CODE` in the temp dir, clean; byte-code written only if `bytecode`.
    fn venv_python(&self, venv: &Path, code: &str, bytecode: bool) -> Output {
        let mut cmd = python_cmd(&venv.join("bin/python"));
        if !bytecode {
            cmd.env("PYTHONDONTWRITEBYTECODE", "1");
        }
        cmd.current_dir(&self.dir)
            .args(["-c", code])
            .output()
            .expect("run the venv's python")
    }

    /// Require that `venv` imports the three packages, is its own prefix, has tinyfoo at
    /// `foo_version`, and that its `tinycli` script runs.
    fn assert_venv_works(&self, venv: &Path, foo_version: &str) {
        let out = self.venv_python(
            venv,
            "import sys, tinyfoo, tinydep, tinycli\n\
             print(sys.prefix)\nprint(tinyfoo.__version__)\nprint(tinydep.FOO_VERSION)\n\
             print(tinyfoo.__file__)",
            false,
        );
        assert_eq!(
            code(&out),
            0,
            "{}: import: {}",
            venv.display(),
            describe(&out)
        );
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            Path::new(lines[0]),
            venv,
            "sys.prefix of {}",
            venv.display()
        );
        assert_eq!(lines[1], foo_version, "tinyfoo in {}", venv.display());
        assert_eq!(
            lines[2],
            foo_version,
            "tinydep's tinyfoo in {}",
            venv.display()
        );
        assert!(
            Path::new(lines[3]).starts_with(venv),
            "tinyfoo imported from {} instead of {}",
            lines[3],
            venv.display()
        );
        let script = venv.join("bin/tinycli");
        let out = python_cmd(&script)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert_eq!(code(&out), 0, "{}: {}", script.display(), describe(&out));
        assert_eq!(stdout(&out).trim(), TINYCLI_OUTPUT, "{}", script.display());
    }
}

/// The `python.packages` of a pins file or lock, by name.
fn packages(doc: &Value) -> BTreeMap<String, Value> {
    let list = doc["python"]["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no python.packages in {doc:#}"));
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "packages are not sorted by name");
    list.iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

/// `url` without its `#fragment`.
fn strip_fragment(url: &str) -> &str {
    url.split('#').next().unwrap()
}

/// Check that `doc`'s packages are exactly `want` (the wheels), with the wheel name, version and
/// sha256 of each, and either the server's URL for it or (`srv` None) no URL.
fn assert_pinned(doc: &Value, want: &[&Wheel], srv: Option<&IndexServer>) {
    let got = packages(doc);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    let want_names: Vec<&str> = want.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, want_names, "{doc:#}");
    for w in want {
        let p = &got[&w.name];
        assert_eq!(p["version"], w.version.as_str(), "{p}");
        assert_eq!(p["wheel"], w.file.as_str(), "{p}");
        assert_eq!(p["sha256"], w.sha256.as_str(), "{p}");
        assert_eq!(p["sha256"], sha256_hex(&w.bytes).as_str(), "{p}");
        match srv {
            Some(srv) => {
                let url = p["url"].as_str().unwrap_or_else(|| panic!("no url: {p}"));
                assert_eq!(strip_fragment(url), srv.file_url(w), "{p}");
            }
            None => assert!(
                p.get("url").is_none(),
                "a wheel from --wheels-dir has a url: {p}"
            ),
        }
    }
}

/// The interpreter fields are python3's.
fn assert_interpreter(doc: &Value) {
    let py = &doc["python"];
    let info = python_info();
    assert_eq!(py["version"], info.version.as_str(), "{py:#}");
    assert_eq!(py["implementation"], info.implementation.as_str(), "{py:#}");
    for k in ["abi", "platform"] {
        assert!(
            py[k].as_str().is_some_and(|v| !v.is_empty()),
            "python.{k} missing: {py:#}"
        );
    }
}

/// The three packages REQ_V1 resolves to: tinycli, tinydep, tinyfoo 2.0.
fn v1_wheels(e: &Env) -> Vec<&'static Wheel> {
    vec![
        e.wheel("tinycli", "0.3"),
        e.wheel("tinydep", "0.5"),
        e.wheel("tinyfoo", "2.0"),
    ]
}

/// One entry of [`stat_walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    /// 'f' file, 'l' symlink, 'd' folder (folders record nothing else).
    kind: char,
    size: u64,
    mtime: (i64, i64),
    ino: u64,
    /// File bytes or link target.
    data: Vec<u8>,
}

/// What a folder holds, for "nothing changed": every file and symlink with its size, mtime
/// (ns), inode and bytes (or target), and every folder's path. `.git` is left out (a fetch may
/// touch FETCH_HEAD).
fn stat_walk(root: &Path) -> BTreeMap<String, Stat> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git");
    for e in walk {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else {
            'f'
        };
        let v = match kind {
            'd' => Stat {
                kind,
                size: 0,
                mtime: (0, 0),
                ino: 0,
                data: Vec::new(),
            },
            _ => Stat {
                kind,
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ino: m.ino(),
                data: if kind == 'l' {
                    fs::read_link(e.path())
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes()
                } else {
                    fs::read(e.path()).unwrap()
                },
            },
        };
        out.insert(rel, v);
    }
    out
}

fn assert_same_walk(a: &BTreeMap<String, Stat>, b: &BTreeMap<String, Stat>, what: &str) {
    let mut diffs = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diffs.push(format!("gone: {k}")),
            Some(w) if w != v => {
                let mut d = format!(
                    "changed: {k}: kind {}->{} size {}->{} mtime {:?}->{:?} inode {}->{}",
                    v.kind, w.kind, v.size, w.size, v.mtime, w.mtime, v.ino, w.ino
                );
                if v.data != w.data && v.data.len() + w.data.len() < 8192 {
                    d += &format!(
                        "\n  before: {}\n  after:  {}",
                        String::from_utf8_lossy(&v.data),
                        String::from_utf8_lossy(&w.data)
                    );
                } else if v.data == w.data {
                    d += " (same bytes)";
                }
                diffs.push(d);
            }
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("new: {k}"));
    }
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
}

fn has_pycache(root: &Path) -> bool {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .any(|e| e.file_type().is_dir() && e.file_name() == "__pycache__")
}

// ---------------------------------------------------------------------------------------------
// 0. The harness alone.

#[test]
fn harness_pip_installs_from_the_local_index() {
    let w = wheel_set();
    for (name, version) in [
        ("tinyfoo", "1.0"),
        ("tinyfoo", "2.0"),
        ("tinycli", "0.3"),
        ("tinydep", "0.5"),
        ("requests", "2.32.3"),
    ] {
        let wheel = w.get(name, version);
        assert_eq!(wheel.file, format!("{name}-{version}-py3-none-any.whl"));
        assert!(wheel.path.starts_with(&w.dir));
    }
    assert_ne!(w.tampered.sha256, w.get("tinyfoo", "2.0").sha256);
    assert_eq!(w.tampered.file, w.get("tinyfoo", "2.0").file);

    let tmp = tempfile::tempdir().unwrap();
    let srv = IndexServer::fixture();
    let target = tmp.path().join("target");
    let out = pip(&[
        "install",
        "--index-url",
        &srv.index_url(),
        "--target",
        s(&target),
        "--no-compile",
        "tinycli",
        "tinydep",
    ]);
    assert_eq!(
        code(&out),
        0,
        "pip install from the index: {}",
        describe(&out)
    );
    assert_eq!(
        fs::read_to_string(target.join("tinyfoo/__init__.py")).unwrap(),
        "__version__ = \"2.0\"\n",
        "pip picked the newest tinyfoo"
    );
    let script = fs::read_to_string(target.join("bin/tinycli")).unwrap();
    assert!(script.contains("from tinycli import main"), "{script}");
    assert!(!srv.requests_for("/simple/tinyfoo/").is_empty());
    assert!(!srv
        .requests_for(&format!("/files/{}", w.get("tinyfoo", "2.0").file))
        .is_empty());

    // The tampered server's bytes are refused by pip (the fragment's hash is checked).
    let bad = IndexServer::fixture();
    bad.serve_bytes(w.get("tinyfoo", "2.0"), w.tampered.bytes.clone());
    let out = pip(&[
        "download",
        "--no-deps",
        "--index-url",
        &bad.index_url(),
        "-d",
        s(&tmp.path().join("dl")),
        "tinyfoo",
    ]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(stderr(&out).contains("HASH"), "{}", describe(&out));

    // Nothing from the machine's pip configuration (PIP_FIND_LINKS...) leaks in: without an
    // index, nothing is found.
    let out = pip(&[
        "download",
        "--no-index",
        "-d",
        s(&tmp.path().join("dl2")),
        "tinyfoo",
    ]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
}

#[test]
fn harness_uv_resolves_from_the_local_index() {
    if !uv_available() {
        common::cannot_run("harness_uv_resolves_from_the_local_index", "uv not on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = IndexServer::fixture();
    let req = tmp.path().join("req.in");
    fs::write(&req, REQ_V1).unwrap();
    let py = python3().to_str().unwrap().to_string();
    let out = uv(
        &[
            "pip",
            "compile",
            s(&req),
            "--python",
            &py,
            "--index-url",
            &srv.index_url(),
            "--no-header",
            "--no-annotate",
        ],
        &tmp.path().join("uv-cache"),
    );
    assert_eq!(code(&out), 0, "uv pip compile: {}", describe(&out));
    let pins: Vec<String> = stdout(&out)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    assert_eq!(
        pins,
        ["tinycli==0.3", "tinydep==0.5", "tinyfoo==2.0"],
        "{}",
        describe(&out)
    );
}

/// The venv checks the tests use hold for a venv pip builds from the index (and byte-code
/// appears when allowed, which the `remove` test relies on).
#[test]
fn harness_venv_checks_accept_a_pip_built_venv() {
    let e = Env::new();
    let venv = e.p("venv");
    e.pip_venv(&venv);
    let walk = stat_walk(&venv);
    e.assert_venv_works(&venv, "2.0");
    assert_same_walk(
        &walk,
        &stat_walk(&venv),
        "running the venv without byte-code",
    );
    assert!(!has_pycache(&venv));
    let out = e.venv_python(&venv, "import tinyfoo, tinydep, tinycli", true);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(has_pycache(&venv));
}

#[test]
fn harness_fixture_locks_without_python() {
    let e = Env::new();
    assert_eq!(git(&e.comfy_bare, &["rev-parse", "v1^{commit}"]), e.v1);
    assert_eq!(git(&e.comfy_bare, &["rev-parse", "v2^{commit}"]), e.v2);
    assert_ne!(e.v1, e.v2);
    for (git_ref, commit) in [("v1", &e.v1), ("v2", &e.v2)] {
        let out = e.p(&format!("{git_ref}.lock.json"));
        e.lock_into(&e.store, git_ref, git_ref, &out);
        let lock = read_json(&out);
        assert_eq!(lock["comfyui"]["commit"], commit.as_str(), "{lock:#}");
        assert_eq!(lock["comfyui"]["dirty"], Value::Null, "{lock:#}");
        assert!(lock.get("python").is_none(), "{lock:#}");
        common::node(&lock, NODE);
        assert_eq!(
            common::model(&lock, MODEL)["sha256"],
            sha256_hex(&model_bytes()).as_str()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. pin

#[test]
fn pin_gives_exact_versions_hashes_and_urls() {
    let e = Env::new();
    let req = e.requirements("req.txt", REQ_V1);
    let pins = e.p("pins.json");
    let idx = e.srv.index_url();
    e.ok(&["pin", s(&req), "--index-url", &idx, "-o", s(&pins)]);
    let doc = read_json(&pins);
    assert_eq!(doc["schema"], "comfystore.pins/1", "{doc:#}");
    assert_interpreter(&doc);
    assert_pinned(&doc, &v1_wheels(&e), Some(&e.srv));

    // Every pinned wheel is in the store, byte for byte.
    for w in v1_wheels(&e) {
        let out = e.ok(&["cat", &format!("sha256:{}", w.sha256)]);
        assert!(out.stdout == w.bytes, "the store's {} differs", w.file);
    }

    // Without -o the same document goes to stdout.
    let out = e.ok(&["pin", s(&req), "--index-url", &idx]);
    assert_eq!(parse(&out), doc, "stdout of pin without -o");
}

#[test]
fn pin_resolvers_pip_and_uv_agree() {
    let e = Env::new();
    let req = e.requirements("req.txt", REQ_V1);
    let idx = e.srv.index_url();
    let by_pip = e.p("pins-pip.json");
    e.ok(&[
        "pin",
        s(&req),
        "--index-url",
        &idx,
        "--resolver",
        "pip",
        "-o",
        s(&by_pip),
    ]);
    let by_pip = read_json(&by_pip);
    assert_pinned(&by_pip, &v1_wheels(&e), Some(&e.srv));
    if !uv_available() {
        common::cannot_run(
            "pin_resolvers_pip_and_uv_agree (its uv half)",
            "uv not on PATH (only --resolver pip was checked)",
        );
        return;
    }
    let by_uv = e.p("pins-uv.json");
    e.ok(&[
        "pin",
        s(&req),
        "--index-url",
        &idx,
        "--resolver",
        "uv",
        "-o",
        s(&by_uv),
    ]);
    let by_uv = read_json(&by_uv);
    assert_pinned(&by_uv, &v1_wheels(&e), Some(&e.srv));
    assert_eq!(
        packages(&by_pip),
        packages(&by_uv),
        "pip and uv pin differently"
    );
}

#[test]
fn pin_offline_from_a_wheels_dir_opens_no_connection() {
    let e = Env::new();
    let req = e.requirements("req.txt", REQ_V1);
    let local = e.wheels.copy_to(&e.p("local-wheels"));
    let trap = e.srv.index_url();
    let trap = OsStr::new(&trap);

    // No index given (the index variables point at the server, as traps).
    let pins = e.p("pins.json");
    let out = e.cs_env(
        &e.store,
        &[
            "pin",
            s(&req),
            "--offline",
            "--wheels-dir",
            s(&local),
            "-o",
            s(&pins),
        ],
        &[
            ("PIP_INDEX_URL", Some(trap)),
            ("PIP_EXTRA_INDEX_URL", Some(trap)),
            ("UV_INDEX_URL", Some(trap)),
            ("UV_DEFAULT_INDEX", Some(trap)),
        ],
    );
    assert_eq!(code(&out), 0, "pin --offline: {}", describe(&out));
    let doc = read_json(&pins);
    assert_eq!(doc["schema"], "comfystore.pins/1", "{doc:#}");
    assert_pinned(&doc, &v1_wheels(&e), None);

    // With the index given too: still nothing but the local wheels.
    let pins2 = e.p("pins2.json");
    let idx = e.srv.index_url();
    e.ok(&[
        "pin",
        s(&req),
        "--offline",
        "--wheels-dir",
        s(&local),
        "--index-url",
        &idx,
        "-o",
        s(&pins2),
    ]);
    assert_pinned(&read_json(&pins2), &v1_wheels(&e), None);
    assert!(
        e.srv.requests().is_empty(),
        "--offline made requests: {:?}",
        e.srv.requests()
    );
    for w in v1_wheels(&e) {
        let out = e.ok(&["cat", &format!("sha256:{}", w.sha256)]);
        assert!(out.stdout == w.bytes, "the store's {} differs", w.file);
    }
}

#[test]
fn pin_into_a_lock_rewrites_only_its_python_section() {
    let e = Env::new();
    let lock = e.p("v1.lock.json");
    e.lock_into(&e.store, &e.v1, "v1", &lock);
    let before = read_json(&lock);
    let req = e.requirements("req.txt", REQ_V1);
    let idx = e.srv.index_url();
    e.ok(&["pin", s(&req), "--index-url", &idx, "--lock", s(&lock)]);
    let after = read_json(&lock);
    assert_interpreter(&after);
    assert_pinned(&after, &v1_wheels(&e), Some(&e.srv));
    assert!(after["python"].get("tree").is_none(), "{after:#}");
    let (mut a, mut b) = (before.clone(), after.clone());
    a.as_object_mut().unwrap().remove("python");
    b.as_object_mut().unwrap().remove("python");
    assert_eq!(a, b, "pin --lock changed more than the python section");
}

#[test]
fn pin_of_a_package_the_index_lacks_names_it() {
    let e = Env::new();
    let req = e.requirements("req.txt", "tinycli\ntinyghost\n");
    let pins = e.p("pins.json");
    let idx = e.srv.index_url();
    let out = e.cs(
        &e.store,
        &["pin", s(&req), "--index-url", &idx, "-o", s(&pins)],
    );
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(stderr(&out).contains("tinyghost"), "{}", describe(&out));
    assert!(!pins.exists(), "a failed pin wrote {}", pins.display());
}

#[test]
fn pin_refuses_wheel_bytes_that_do_not_match_the_index_hash() {
    let e = Env::new();
    let foo = e.wheel("tinyfoo", "2.0");
    e.srv.serve_bytes(foo, e.wheels.tampered.bytes.clone());
    let req = e.requirements("req.txt", "tinyfoo\n");
    let idx = e.srv.index_url();
    // pip checks the fragment itself; `uv pip compile` does not (it resolves happily), so there
    // comfystore's own download must hold the bytes to the index's hash.
    let mut resolvers = vec!["auto", "pip"];
    if uv_available() {
        resolvers.push("uv");
    } else {
        common::cannot_run(
            "pin_refuses_wheel_bytes_that_do_not_match_the_index_hash (its uv half)",
            "uv not on PATH (--resolver uv not checked)",
        );
    }
    for resolver in resolvers {
        let pins = e.p(&format!("pins-{resolver}.json"));
        let out = e.cs(
            &e.store,
            &[
                "pin",
                s(&req),
                "--index-url",
                &idx,
                "--resolver",
                resolver,
                "-o",
                s(&pins),
            ],
        );
        assert_ne!(code(&out), 0, "--resolver {resolver}: {}", describe(&out));
        assert!(
            stderr(&out).contains(&foo.file),
            "--resolver {resolver}: {}",
            describe(&out)
        );
        assert!(!pins.exists(), "a failed pin wrote {}", pins.display());
        for sha in [&foo.sha256, &e.wheels.tampered.sha256] {
            let o = e.cs(&e.store, &["cat", &format!("sha256:{sha}")]);
            assert_ne!(
                code(&o),
                0,
                "--resolver {resolver}: the store holds sha256:{sha}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. materialize, remove

#[test]
fn materialize_builds_a_runnable_install() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let dest = e.p("dest");
    let (report, secs) = e.materialize(&lock, &dest, &[]);
    eprintln!("materialize (first, installs): {secs:.2}s");
    assert!(
        report["env"]["tree"]
            .as_str()
            .is_some_and(|t| t.starts_with("b3:")),
        "{report:#}"
    );
    assert_eq!(report["env"]["built"], true, "{report:#}");
    assert_eq!(fs::read_to_string(dest.join("main.py")).unwrap(), MAIN_V1);
    assert!(dest.join(V1_ONLY).is_file());
    assert!(dest
        .join("custom_nodes")
        .join(NODE)
        .join("__init__.py")
        .is_file());
    assert!(
        fs::read(dest.join(MODEL)).unwrap() == model_bytes(),
        "{MODEL}"
    );
    e.assert_venv_works(&dest.join("venv"), "2.0");
    stats_counts_every_object(&e.store);
}

/// `stats` (the index) counts every object the store holds: the objects written while
/// building and rendering an environment go through the index like any other.
fn stats_counts_every_object(store: &Path) {
    let on_disk: std::collections::BTreeSet<String> = walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy();
            let shard = e
                .path()
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy();
            format!("{shard}{}", name.trim_end_matches("-exec"))
        })
        .collect();
    let stats = json(store, &["stats"]);
    assert_eq!(
        stats["objects"].as_u64(),
        Some(on_disk.len() as u64),
        "stats counts {} objects, the store holds {}: {stats:#}",
        stats["objects"],
        on_disk.len()
    );
}

#[test]
fn second_materialize_links_the_stored_environment() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let (a, b) = (e.p("a"), e.p("b"));
    let (ra, ta) = e.materialize(&lock, &a, &["--venv-link", "hardlink"]);
    let (rb, tb) = e.materialize(&lock, &b, &["--venv-link", "hardlink"]);
    eprintln!("materialize: first {ta:.2}s (installs), second {tb:.2}s (links)");
    assert_eq!(ra["env"]["built"], true, "{ra:#}");
    assert_eq!(rb["env"]["built"], false, "{rb:#}");
    assert_eq!(ra["env"]["tree"], rb["env"]["tree"]);
    assert!(
        ra["env"]["tree"]
            .as_str()
            .is_some_and(|t| t.starts_with("b3:")),
        "{ra:#}"
    );

    let (sa, sb) = (
        site_packages(&a.join("venv")),
        site_packages(&b.join("venv")),
    );
    for rel in ["tinyfoo/__init__.py", "tinydep/__init__.py"] {
        let (ma, mb) = (
            fs::metadata(sa.join(rel)).unwrap(),
            fs::metadata(sb.join(rel)).unwrap(),
        );
        assert_eq!(
            (ma.dev(), ma.ino()),
            (mb.dev(), mb.ino()),
            "{rel} is not shared"
        );
    }
    e.assert_venv_works(&a.join("venv"), "2.0");
    e.assert_venv_works(&b.join("venv"), "2.0");
    // b's console script was written for b, not copied from a.
    let script = fs::read_to_string(b.join("venv/bin/tinycli")).unwrap();
    let a_venv = a.join("venv");
    assert!(
        !script.contains(s(&a_venv)),
        "b's tinycli names a's venv:\n{script}"
    );
}

#[test]
fn materialize_switches_in_place_and_keeps_user_files() {
    let e = Env::new();
    let l1 = e.pinned_lock("v1");
    let l2 = e.pinned_lock("v2");
    let dest = e.p("dest");
    e.materialize(&l1, &dest, &[]);
    e.assert_venv_works(&dest.join("venv"), "2.0");
    let user = dest.join("output/user.png");
    let png = pseudo_random(9, 777);
    write(&user, &png);

    let (r2, _) = e.materialize(&l2, &dest, &[]);
    assert_eq!(r2["env"]["built"], true, "another package set: {r2:#}");
    assert!(fs::read(&user).unwrap() == png, "the user's file changed");
    assert_eq!(fs::read_to_string(dest.join("main.py")).unwrap(), MAIN_V2);
    assert!(
        !dest.join(V1_ONLY).exists(),
        "{V1_ONLY} of v1 is still there"
    );
    assert_eq!(
        fs::read_to_string(dest.join("requirements.txt")).unwrap(),
        REQ_V2
    );
    assert!(
        fs::read(dest.join(MODEL)).unwrap() == model_bytes(),
        "{MODEL}"
    );
    e.assert_venv_works(&dest.join("venv"), "1.0");
}

#[test]
fn offline_materialize_names_missing_wheels_and_writes_nothing() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    // A second store with the trees and the model (from its own lock run) but no wheel.
    let store2 = e.p("store2");
    e.lock_into(&store2, &e.v1, "v1", &e.p("scratch.lock.json"));
    let before = e.srv.requests().len();
    let dest = e.p("dest");
    let out = e.cs(&store2, &["materialize", s(&lock), s(&dest), "--offline"]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    assert!(
        !dest.exists(),
        "a failed offline materialize created {}",
        dest.display()
    );
    let err = stderr(&out);
    for w in v1_wheels(&e) {
        assert!(
            err.contains(&w.file),
            "{} not named: {}",
            w.file,
            describe(&out)
        );
    }
    assert_eq!(e.srv.requests().len(), before, "--offline made requests");
}

#[test]
fn remove_leaves_nothing_even_after_python_ran() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let dest = e.p("dest");
    e.materialize(&lock, &dest, &[]);
    let venv = dest.join("venv");
    let out = e.venv_python(&venv, "import tinyfoo, tinydep, tinycli", true);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let out = python_cmd(&venv.join("bin/python"))
        .current_dir(&dest)
        .arg(dest.join("main.py"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "main.py: {}", describe(&out));
    assert!(
        stdout(&out).contains("ComfyUI fixture v1"),
        "{}",
        describe(&out)
    );
    assert!(
        has_pycache(&dest),
        "python wrote no __pycache__ (byte-code still off?)"
    );

    let out = e.cs(&e.store, &["remove", s(&dest)]);
    assert_eq!(code(&out), 0, "remove: {}", describe(&out));
    assert!(
        !dest.exists(),
        "{} still exists: {:?}",
        dest.display(),
        walkdir::WalkDir::new(&dest)
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| e.path().display().to_string())
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. init

#[test]
fn init_clones_pins_and_is_idempotent() {
    let e = Env::new();
    let path = e.p("comfy-init");
    let idx = e.srv.index_url();
    let init = |git_ref: &str| -> Value {
        let out = e.ok(&[
            "--json",
            "init",
            "--path",
            s(&path),
            "--ref",
            git_ref,
            "--repo",
            s(&e.comfy_bare),
            "--index-url",
            &idx,
        ]);
        parse(&out)
    };
    let head = || git(&path, &["rev-parse", "HEAD"]);

    let r1 = init("v1");
    assert_eq!(r1["changed"], true, "{r1:#}");
    assert_eq!(r1["commit"], e.v1.as_str(), "{r1:#}");
    assert_eq!(Path::new(r1["path"].as_str().unwrap()), path, "{r1:#}");
    assert_eq!(head(), e.v1);
    assert_eq!(fs::read_to_string(path.join("main.py")).unwrap(), MAIN_V1);
    let walk1 = stat_walk(&path);

    let r2 = init("v1");
    assert_eq!(r2["changed"], false, "{r2:#}");
    assert_eq!(r2["commit"], e.v1.as_str(), "{r2:#}");
    assert_eq!(head(), e.v1);
    assert_same_walk(
        &walk1,
        &stat_walk(&path),
        "a second identical init changed files",
    );

    let venv = path.join("venv");
    e.assert_venv_works(&venv, "2.0");
    let out = e.venv_python(&venv, "import requests; print(requests.__version__)", false);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "2.32.3");

    let r3 = init("v2");
    assert_eq!(r3["changed"], true, "{r3:#}");
    assert_eq!(r3["commit"], e.v2.as_str(), "{r3:#}");
    assert_eq!(head(), e.v2);
    assert_eq!(fs::read_to_string(path.join("main.py")).unwrap(), MAIN_V2);
    assert!(!path.join(V1_ONLY).exists());
    // v2's requirements hold tinyfoo at 1.0.
    e.assert_venv_works(&venv, "1.0");
}

// ---------------------------------------------------------------------------------------------
// 4. Installers, locked venvs, interpreters, layouts, verify, crashes and concurrency.

/// The first line of a text file.
fn first_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Every path under `root`, for assertion messages.
fn listing(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.path().display().to_string())
        .collect()
}

impl Env {
    /// The GC roots named `env/…`, with their ids.
    fn env_roots(&self, store: &Path) -> Vec<(String, Vec<String>)> {
        let out = self.cs(store, &["--json", "root", "ls"]);
        assert_eq!(code(&out), 0, "root ls: {}", describe(&out));
        parse(&out)
            .as_array()
            .unwrap_or_else(|| panic!("root ls is not a list: {}", describe(&out)))
            .iter()
            .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with("env/")))
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    /// The names of the GC roots starting with `prefix`.
    fn roots_named(&self, store: &Path, prefix: &str) -> Vec<String> {
        let out = self.cs(store, &["--json", "root", "ls"]);
        assert_eq!(code(&out), 0, "root ls: {}", describe(&out));
        parse(&out)
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .filter(|n| n.starts_with(prefix))
            .map(String::from)
            .collect()
    }

    /// `fsck` of `store` exits 0.
    fn assert_fsck_clean(&self, store: &Path) {
        let out = self.cs(store, &["--json", "fsck"]);
        assert_eq!(code(&out), 0, "fsck: {}", describe(&out));
        let report = parse(&out);
        assert_eq!(
            report["problems"].as_array().map(Vec::len),
            Some(0),
            "{report:#}"
        );
    }

    /// A plain venv (python3 -m venv, pip from the index; no comfystore) of REQ_V1 at `venv`.
    fn pip_venv(&self, venv: &Path) {
        let out = python_cmd(python3())
            .args(["-m", "venv", "--without-pip"])
            .arg(venv)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "venv: {}", describe(&out));
        let req = self.requirements("req-plain.txt", REQ_V1);
        let out = pip(&[
            "--python",
            s(&venv.join("bin/python")),
            "install",
            "--index-url",
            &self.srv.index_url(),
            "--no-compile",
            "-r",
            s(&req),
        ]);
        assert_eq!(code(&out), 0, "pip install: {}", describe(&out));
    }
}

/// Rewrite a lockfile's JSON.
fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut doc = read_json(path);
    f(&mut doc);
    fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

#[test]
fn pip_installer_renders_absolute_shebangs_per_destination() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let (a, b) = (e.p("a"), e.p("b"));
    let (ra, _) = e.materialize(&lock, &a, &["--installer", "pip"]);
    assert_eq!(ra["env"]["built"], true, "{ra:#}");
    assert_eq!(ra["env"]["installer"], "pip", "{ra:#}");
    e.assert_venv_works(&a.join("venv"), "2.0");
    // pip writes `#!<venv>/bin/python`: it must name a's venv, not the staging venv.
    let want_a = format!("#!{}", s(&a.join("venv/bin/python")));
    assert_eq!(first_line(&a.join("venv/bin/tinycli")), want_a);

    let (rb, _) = e.materialize(&lock, &b, &["--installer", "pip"]);
    assert_eq!(rb["env"]["built"], false, "{rb:#}");
    assert_eq!(rb["env"]["tree"], ra["env"]["tree"], "{rb:#}");
    let want_b = format!("#!{}", s(&b.join("venv/bin/python")));
    assert_eq!(first_line(&b.join("venv/bin/tinycli")), want_b);
    let script = fs::read_to_string(b.join("venv/bin/tinycli")).unwrap();
    assert!(!script.contains(s(&a)), "b's tinycli names a:\n{script}");

    let out = e.cs(&e.store, &["remove", s(&a)]);
    assert_eq!(code(&out), 0, "remove: {}", describe(&out));
    assert!(!a.exists(), "{:?}", listing(&a));
    e.assert_venv_works(&b.join("venv"), "2.0");

    // verify --fix writes the script again for b.
    fs::remove_file(b.join("venv/bin/tinycli")).unwrap();
    let out = e.cs(&e.store, &["verify", s(&lock), s(&b), "--fix"]);
    assert_eq!(code(&out), 3, "verify --fix: {}", describe(&out));
    assert_eq!(first_line(&b.join("venv/bin/tinycli")), want_b);
    e.assert_venv_works(&b.join("venv"), "2.0");
}

#[test]
fn a_package_no_index_offers_stays_unpinned_and_named_while_the_rest_are_pinned() {
    let e = Env::new();
    let orig = e.comfy.join("venv");
    e.pip_venv(&orig);
    let partial: Vec<Wheel> = v1_wheels(&e)
        .into_iter()
        .filter(|w| w.name != "tinydep")
        .cloned()
        .collect();
    let srv = IndexServer::with_index(&partial);
    let idx = srv.index_url();
    let lock = e.p("partial.lock.json");
    let args = |extra: &'static [&'static str]| {
        let mut a = vec!["lock", s(&e.comfy), "--tag", "partial", "-o", s(&lock)];
        a.extend_from_slice(extra);
        a
    };
    let mut with_index = args(&[]);
    with_index.extend(["--index-url", &idx]);
    let out = e.cs_env(&e.store, &with_index, &[PIN_BY_DEFAULT]);
    assert_eq!(code(&out), 0, "lock: {}", describe(&out));
    let warned = stderr(&out);
    assert!(
        warned.contains("1 of 3") && warned.contains("tinydep==0.5"),
        "the warning names the package: {}",
        describe(&out)
    );
    let got = packages(&read_json(&lock));
    for name in ["tinycli", "tinyfoo"] {
        assert!(got[name]["sha256"].is_string(), "{name}: {}", got[name]);
    }
    assert!(got["tinydep"].get("wheel").is_none(), "{}", got["tinydep"]);

    // --portable refuses it, naming the package, and writes nothing.
    fs::remove_file(&lock).unwrap();
    with_index.push("--portable");
    let out = e.cs_env(&e.store, &with_index, &[PIN_BY_DEFAULT]);
    assert_eq!(code(&out), 1, "lock --portable: {}", describe(&out));
    assert!(stderr(&out).contains("tinydep"), "{}", describe(&out));
    assert!(!lock.exists());

    // --no-pin-wheels asks no index.
    let before = srv.requests().len();
    let out = e.cs_env(&e.store, &args(&["--no-pin-wheels"]), &[PIN_BY_DEFAULT]);
    assert_eq!(code(&out), 0, "lock --no-pin-wheels: {}", describe(&out));
    assert_eq!(srv.requests().len(), before);
    let got = packages(&read_json(&lock));
    assert!(got.values().all(|p| p.get("wheel").is_none()), "{got:?}");
}

/// `lock` with pinning on (the default; the harness turns it off for the fixtures).
const PIN_BY_DEFAULT: (&str, Option<&OsStr>) = ("COMFYSTORE_NO_PIN_WHEELS", None);

#[test]
fn a_plain_pip_venv_locked_by_default_materializes_elsewhere() {
    let e = Env::new();
    let orig = e.comfy.join("venv");
    e.pip_venv(&orig);
    e.assert_venv_works(&orig, "2.0");
    let lock = e.p("plain.lock.json");
    // The index with a credential in its URL (never recorded), and tinydep only on an extra
    // index.
    let (main_wheels, extra_wheels): (Vec<Wheel>, Vec<Wheel>) = v1_wheels(&e)
        .into_iter()
        .cloned()
        .partition(|w| w.name != "tinydep");
    let (main, extra) = (
        IndexServer::with_index(&main_wheels),
        IndexServer::with_index(&extra_wheels),
    );
    let idx = main.index_url().replace("http://", "http://alice:sekret@");
    let out = e.cs_env(
        &e.store,
        &[
            "lock",
            s(&e.comfy),
            "--tag",
            "plain",
            "--index-url",
            &idx,
            "--extra-index-url",
            &extra.index_url(),
            "-o",
            s(&lock),
        ],
        &[PIN_BY_DEFAULT],
    );
    assert_eq!(code(&out), 0, "lock: {}", describe(&out));
    let text = fs::read_to_string(&lock).unwrap();
    assert!(
        !text.contains("sekret") && !text.contains("alice"),
        "{text}"
    );
    let doc = read_json(&lock);
    assert_interpreter(&doc);
    assert_eq!(
        doc["python"]["index_url"],
        main.index_url().as_str(),
        "{doc:#}"
    );
    assert_eq!(
        doc["python"]["extra_index_urls"],
        serde_json::json!([extra.index_url()]),
        "{doc:#}"
    );
    let got = packages(&doc);
    assert_eq!(got.len(), 3, "{doc:#}");
    let server_of = |w: &Wheel| if w.name == "tinydep" { &extra } else { &main };
    for w in v1_wheels(&e) {
        let p = &got[&w.name];
        assert_eq!(p["wheel"], w.file.as_str(), "{p}");
        assert_eq!(p["sha256"], sha256_hex(&w.bytes).as_str(), "{p}");
        let url = p["url"].as_str().unwrap_or_else(|| panic!("no url: {p}"));
        assert_eq!(strip_fragment(url), server_of(w).file_url(w), "{p}");
    }
    // No wheel was downloaded to lock: each sha256 is the one the index published.
    for srv in [&main, &extra] {
        let gets: Vec<String> = srv
            .requests()
            .into_iter()
            .map(|r| r.path)
            .filter(|p| p.starts_with("/files/"))
            .collect();
        assert!(gets.is_empty(), "lock downloaded {gets:?}");
    }

    // In the same store (the locked venv tree is there), and in a store that has only the
    // lock's trees and model: there the wheels are fetched from their URLs and installed.
    let store2 = e.p("store2");
    e.lock_into(&store2, &e.v1, "v1", &e.p("scratch.lock.json"));
    let wheel_gets = || {
        v1_wheels(&e)
            .iter()
            .map(|w| {
                server_of(w)
                    .requests_for(&format!("/files/{}", w.file))
                    .len()
            })
            .collect::<Vec<_>>()
    };
    for (store, dest) in [(&e.store, e.p("elsewhere/one")), (&store2, e.p("two"))] {
        let before = wheel_gets();
        let out = e.cs(store, &["--json", "materialize", s(&lock), s(&dest)]);
        assert_eq!(code(&out), 0, "materialize: {}", describe(&out));
        let after = wheel_gets();
        if store == &store2 {
            // store2 had no wheel: each came from the URL `lock` recorded.
            assert!(
                before.iter().zip(&after).all(|(b, a)| a > b),
                "wheel downloads {before:?} -> {after:?}"
            );
            assert_eq!(parse(&out)["env"]["built"], true, "{}", describe(&out));
        } else {
            assert_eq!(before, after, "the store had every wheel");
        }
        let venv = dest.join("venv");
        e.assert_venv_works(&venv, "2.0");
        for f in ["pyvenv.cfg", "bin/activate", "bin/tinycli"] {
            let text = fs::read_to_string(venv.join(f)).unwrap();
            assert!(
                !text.contains(s(&orig)),
                "{} names the original venv {}:\n{text}",
                venv.join(f).display(),
                orig.display()
            );
        }
        // Sourced, bin/activate names this venv (written for it, or relocatable).
        let out = Command::new("bash")
            .arg("-c")
            .arg(
                "unset VIRTUAL_ENV; . \"$1/bin/activate\" && printf '%s\\n' \"$VIRTUAL_ENV\" \
                 && command -v python",
            )
            .arg("bash")
            .arg(&venv)
            .env_remove("VIRTUAL_ENV")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "source bin/activate: {}", describe(&out));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{}", describe(&out));
        assert_eq!(Path::new(lines[0]), venv, "VIRTUAL_ENV after activate");
        assert_eq!(
            Path::new(lines[1]),
            venv.join("bin/python"),
            "python after activate"
        );
        let cfg = fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
        assert!(
            cfg.lines().any(|l| l.starts_with("home")),
            "pyvenv.cfg:\n{cfg}"
        );
        // Python 3.11+ records the creating command; it must name this venv if anything.
        for l in cfg.lines().filter(|l| l.starts_with("command")) {
            assert!(l.contains(s(&venv)), "pyvenv.cfg {l:?}\n{cfg}");
        }
    }
}

#[test]
fn materialize_refuses_an_interpreter_that_does_not_fit() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");

    // A lock for a python nobody has.
    let l399 = e.p("v399.lock.json");
    fs::copy(&lock, &l399).unwrap();
    edit_json(&l399, |d| {
        d["python"]["version"] = "3.99.0".into();
        d["python"]["abi"] = "cp399".into();
    });
    let dest = e.p("dest399");
    let out = e.cs(&e.store, &["materialize", s(&l399), s(&dest)]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("3.99"), "{}", describe(&out));
    assert!(err.contains("--python"), "{}", describe(&out));
    assert!(!dest.exists(), "{:?}", listing(&dest));
    assert!(e.env_roots(&e.store).is_empty());

    // --python that is not a python: a shell script, and /bin/false.
    let fake = e.p("bin/fakepython");
    write(&fake, b"#!/bin/sh\necho 'I am not python'\nexit 0\n");
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for py in [s(&fake), "/bin/false"] {
        let dest = e.p("dest-bad-python");
        let out = e.cs(
            &e.store,
            &["materialize", s(&lock), s(&dest), "--python", py],
        );
        assert_ne!(code(&out), 0, "--python {py}: {}", describe(&out));
        assert!(
            stderr(&out).contains(py),
            "--python {py}: the error does not name it: {}",
            describe(&out)
        );
        assert!(!dest.exists(), "--python {py}: {:?}", listing(&dest));
        assert!(e.env_roots(&e.store).is_empty(), "--python {py}");
    }
    // The right one still works.
    let dest = e.p("dest");
    e.materialize(&lock, &dest, &["--python", s(python3())]);
    e.assert_venv_works(&dest.join("venv"), "2.0");
}

#[test]
fn models_dir_keeps_models_in_a_shared_folder() {
    let e = Env::new();
    let l1 = e.pinned_lock("v1");
    let l2 = e.pinned_lock("v2");
    let shared = e.p("shared-models");
    let rel = MODEL.strip_prefix("models/").unwrap(); // checkpoints/tiny.safetensors
    let want_sha = sha256_hex(&model_bytes());
    let check_shared = |what: &str| {
        let f = shared.join(rel);
        let bytes =
            fs::read(&f).unwrap_or_else(|err| panic!("{what}: read {}: {err}", f.display()));
        assert_eq!(sha256_hex(&bytes), want_sha, "{what}: {}", f.display());
    };

    let (a, b) = (e.p("a"), e.p("b"));
    e.materialize(&l1, &a, &["--models-dir", s(&shared)]);
    assert!(
        !a.join(MODEL).exists(),
        "the model is in DEST too: {}",
        a.join(MODEL).display()
    );
    check_shared("after a");
    let yaml = fs::read_to_string(a.join("extra_model_paths.yaml")).unwrap();
    let base = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("base_path:"))
        .unwrap_or_else(|| panic!("no base_path:\n{yaml}"))
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    assert_eq!(Path::new(base), shared, "{yaml}");
    assert!(
        yaml.lines().any(|l| {
            let l = l.trim().replace(['"', '\''], "");
            l.starts_with("checkpoints:") && l.contains("checkpoints")
        }),
        "no checkpoints folder:\n{yaml}"
    );
    e.assert_venv_works(&a.join("venv"), "2.0");

    // verify sees the layout materialize recorded; a second run over `a` changes nothing.
    let out = e.cs(&e.store, &["verify", s(&l1), s(&a)]);
    assert_eq!(code(&out), 0, "verify: {}", describe(&out));
    e.materialize(&l1, &a, &["--models-dir", s(&shared)]);
    assert!(!a.join(MODEL).exists());
    check_shared("after a again");

    // Another version with the same folder.
    e.materialize(&l2, &b, &["--models-dir", s(&shared)]);
    assert!(!b.join(MODEL).exists());
    check_shared("after b");
    assert!(b.join("extra_model_paths.yaml").is_file());

    for d in [&a, &b] {
        let out = e.cs(&e.store, &["remove", s(d)]);
        assert_eq!(code(&out), 0, "remove: {}", describe(&out));
        assert!(!d.exists(), "{:?}", listing(d));
        check_shared(&format!("after remove {}", d.display()));
    }
}

#[test]
fn venv_outside_dest_runs_and_goes_with_remove() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let dest = e.p("dest");
    let outside = e.p("envs/v1-venv");
    e.materialize(&lock, &dest, &["--venv", s(&outside)]);
    assert!(
        !dest.join("venv").exists(),
        "DEST/venv exists: {:?}",
        listing(&dest.join("venv"))
    );
    assert!(dest.join("main.py").is_file());
    e.assert_venv_works(&outside, "2.0");
    let out = python_cmd(&outside.join("bin/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&dest)
        .arg(dest.join("main.py"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "main.py: {}", describe(&out));
    let out = e.cs(&e.store, &["verify", s(&lock), s(&dest)]);
    assert_eq!(code(&out), 0, "verify: {}", describe(&out));
    // Byte-code in the outside env (remove takes Python's __pycache__ folders too).
    let out = e.venv_python(&outside, "import tinyfoo, tinydep, tinycli", true);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert!(has_pycache(&outside), "python wrote no byte-code");

    let out = e.cs(&e.store, &["remove", s(&dest)]);
    assert_eq!(code(&out), 0, "remove: {}", describe(&out));
    assert!(!dest.exists(), "{:?}", listing(&dest));
    assert!(
        !outside.exists(),
        "remove left the --venv env: {:?}",
        listing(&outside)
    );
    let left = e.roots_named(&e.store, "materialized/");
    assert!(left.is_empty(), "remove left GC roots: {left:?}");
}

#[test]
fn verify_checks_and_fixes_a_venv_outside_dest() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let dest = e.p("dest");
    let outside = e.p("envs/v1-venv");
    e.materialize(&lock, &dest, &["--venv", s(&outside)]);
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", s(&lock), s(&dest)];
        args.extend_from_slice(extra);
        e.cs(&e.store, &args)
    };
    let out = verify(&[]);
    assert_eq!(code(&out), 0, "clean verify: {}", describe(&out));

    let foo = site_packages(&outside).join("tinyfoo/__init__.py");
    let script = outside.join("bin/tinycli");
    fs::remove_file(&foo).unwrap();
    fs::remove_file(&script).unwrap();
    let out = verify(&[]);
    assert_eq!(
        code(&out),
        4,
        "verify does not see files missing from the --venv env {}: {}",
        outside.display(),
        describe(&out)
    );
    let out = verify(&["--fix"]);
    assert_eq!(code(&out), 3, "verify --fix: {}", describe(&out));
    assert!(foo.is_file() && script.is_file(), "--fix restored nothing");
    e.assert_venv_works(&outside, "2.0");
}

#[test]
fn switching_away_from_venv_outside_leaves_no_orphan_env() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let dest = e.p("dest");
    let (o1, o2) = (e.p("envs/one"), e.p("envs/two"));
    e.materialize(&lock, &dest, &["--venv", s(&o1)]);
    e.assert_venv_works(&o1, "2.0");
    // The same version, its env moved into DEST, then to another outside folder.
    e.materialize(&lock, &dest, &[]);
    e.assert_venv_works(&dest.join("venv"), "2.0");
    e.materialize(&lock, &dest, &["--venv", s(&o2)]);
    assert!(
        !dest.join("venv").exists(),
        "{:?}",
        listing(&dest.join("venv"))
    );
    e.assert_venv_works(&o2, "2.0");

    let out = e.cs(&e.store, &["remove", s(&dest)]);
    assert_eq!(code(&out), 0, "remove: {}", describe(&out));
    assert!(!dest.exists(), "{:?}", listing(&dest));
    assert!(!o2.exists(), "remove left the current --venv env");
    // The first outside env belonged to this version too: the switch or the remove must take
    // it (and its GC root); nothing else knows it exists.
    assert!(
        !o1.exists(),
        "{} (placed by `materialize --venv` for {}) outlived the switch and `remove`",
        o1.display(),
        dest.display()
    );
    let left = e.roots_named(&e.store, "materialized/");
    assert!(left.is_empty(), "GC roots left after remove: {left:?}");
}

#[test]
fn verify_finds_and_fixes_a_damaged_venv() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let dest = e.p("dest");
    e.materialize(&lock, &dest, &[]);
    let verify = |fix: bool| {
        let mut args = vec!["verify", s(&lock), s(&dest)];
        if fix {
            args.push("--fix");
        }
        e.cs(&e.store, &args)
    };
    let out = verify(false);
    assert_eq!(code(&out), 0, "clean verify: {}", describe(&out));

    let venv = dest.join("venv");
    let foo = site_packages(&venv).join("tinyfoo/__init__.py");
    let script = venv.join("bin/tinycli");
    let script_before = fs::read(&script).unwrap();
    // pyvenv.cfg and bin/python are written per destination (templates).
    let cfg = venv.join("pyvenv.cfg");
    let cfg_before = fs::read(&cfg).unwrap();
    let py = venv.join("bin/python");
    let py_before = fs::read_link(&py).ok();
    fs::remove_file(&foo).unwrap();
    fs::remove_file(&script).unwrap();
    fs::remove_file(&cfg).unwrap();
    fs::remove_file(&py).unwrap();

    let out = verify(false);
    assert_eq!(
        code(&out),
        4,
        "verify of a damaged venv: {}",
        describe(&out)
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("tinyfoo"), "{}", describe(&out));
    assert!(text.contains("tinycli"), "{}", describe(&out));
    assert!(
        !foo.exists() && !script.exists() && !cfg.exists(),
        "plain verify repaired"
    );

    let out = verify(true);
    assert_eq!(code(&out), 3, "verify --fix: {}", describe(&out));
    assert_eq!(fs::read_to_string(&foo).unwrap(), "__version__ = \"2.0\"\n");
    assert!(
        fs::read(&script).unwrap() == script_before,
        "the restored tinycli differs:\n{}",
        String::from_utf8_lossy(&fs::read(&script).unwrap())
    );
    assert!(
        fs::read(&cfg).unwrap() == cfg_before,
        "the restored pyvenv.cfg differs:\n{}",
        String::from_utf8_lossy(&fs::read(&cfg).unwrap())
    );
    assert_eq!(fs::read_link(&py).ok(), py_before, "bin/python");
    e.assert_venv_works(&venv, "2.0");
    let out = verify(false);
    assert_eq!(code(&out), 0, "verify after --fix: {}", describe(&out));
}

#[test]
fn killed_materialize_leaves_a_store_that_recovers() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let mut finished = 0;
    for i in 0..8u64 {
        // No environment in the store: each run has to install it.
        for (name, _) in e.env_roots(&e.store) {
            e.ok(&["root", "rm", &name]);
        }
        let dest = e.p(&format!("killed-{i}"));
        let mut cmd = e.cs_command(&e.store, &["materialize", s(&lock), s(&dest)]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + i * 55));
        let done = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
                              // Its installer children die with it, as in a crash of the whole machine.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stderr(Stdio::null())
            .status();
        let status = child.wait().unwrap();
        if done {
            finished += 1;
            assert!(status.success(), "run {i} failed on its own: {status}");
        }
    }
    eprintln!("{finished} of 8 runs finished before the kill");
    assert!(finished < 8, "no run was killed: make the sleeps shorter");

    let dest = e.p("dest");
    e.materialize(&lock, &dest, &[]);
    e.assert_venv_works(&dest.join("venv"), "2.0");
    e.assert_fsck_clean(&e.store);
    // Every killed DEST (whatever state it was left in) can be materialized over, and then
    // removed.
    for i in 0..8 {
        let killed = e.p(&format!("killed-{i}"));
        let (r, _) = e.materialize(&lock, &killed, &[]);
        assert_eq!(r["env"]["built"], false, "killed-{i}: {r:#}");
        e.assert_venv_works(&killed.join("venv"), "2.0");
        let out = e.cs(&e.store, &["remove", s(&killed)]);
        assert_eq!(code(&out), 0, "remove killed-{i}: {}", describe(&out));
        assert!(!killed.exists(), "killed-{i}: {:?}", listing(&killed));
    }
    e.assert_fsck_clean(&e.store);
}

#[test]
fn concurrent_materializes_of_one_new_environment_both_work() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let (a, b) = (e.p("a"), e.p("b"));
    let spawn = |dest: &Path| {
        let mut cmd = e.cs_command(&e.store, &["--json", "materialize", s(&lock), s(dest)]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    assert_eq!(code(&oa), 0, "a: {}", describe(&oa));
    assert_eq!(code(&ob), 0, "b: {}", describe(&ob));
    let (ra, rb) = (parse(&oa), parse(&ob));
    e.assert_venv_works(&a.join("venv"), "2.0");
    e.assert_venv_works(&b.join("venv"), "2.0");
    assert!(
        ra["env"]["built"] == true || rb["env"]["built"] == true,
        "neither built the environment:\n{ra:#}\n{rb:#}"
    );
    let roots = e.env_roots(&e.store);
    assert_eq!(roots.len(), 1, "{roots:?}");
    let rooted = &roots[0].1;
    assert_eq!(rooted.len(), 1, "{roots:?}");
    let (ta, tb) = (ra["env"]["tree"].as_str(), rb["env"]["tree"].as_str());
    assert!(
        ta == Some(rooted[0].as_str()) || tb == Some(rooted[0].as_str()),
        "the env root {roots:?} is neither run's tree: {ta:?} {tb:?}"
    );
    if ta != tb {
        eprintln!("note: both runs built, with different trees: {ta:?} {tb:?}");
    }
    e.assert_fsck_clean(&e.store);
    // A third run links the rooted environment.
    let (rc, _) = e.materialize(&lock, &e.p("c"), &[]);
    assert_eq!(rc["env"]["built"], false, "{rc:#}");
    assert_eq!(rc["env"]["tree"].as_str(), Some(rooted[0].as_str()));
}

impl Env {
    /// `materialize LOCK DEST --only python --installer INSTALLER` into `store` (wheels
    /// fetched there from the index); the environment tree id it reports.
    fn env_tree_in(&self, store: &Path, lock: &Path, dest: &Path, installer: &str) -> String {
        let args = [
            "--json",
            "materialize",
            s(lock),
            s(dest),
            "--only",
            "python",
            "--installer",
            installer,
        ];
        let out = self.cs(store, &args);
        assert_eq!(code(&out), 0, "{args:?}: {}", describe(&out));
        let report = parse(&out);
        assert_eq!(report["env"]["built"], true, "{report:#}");
        assert_eq!(report["env"]["installer"], installer, "{report:#}");
        report["env"]["tree"].as_str().unwrap().to_string()
    }

    /// The lines of `ls TREE` in `store`, for a diff of two trees.
    fn ls_lines(&self, store: &Path, tree: &str) -> Vec<String> {
        let out = self.cs(store, &["ls", tree]);
        assert_eq!(code(&out), 0, "ls {tree}: {}", describe(&out));
        stdout(&out).lines().map(str::to_string).collect()
    }
}

/// The entries of two `ls` listings that differ, with the content of differing files.
fn ls_diff(e: &Env, (sa, a): (&Path, &[String]), (sb, b): (&Path, &[String])) -> String {
    let mut out = String::new();
    for (store, x, y, which) in [(sa, a, b, "first"), (sb, b, a, "second")] {
        for line in x.iter().filter(|l| !y.contains(l)) {
            out.push_str(&format!("only in the {which}: {line}\n"));
            let id = line.split('\t').nth(2).unwrap_or("");
            if id.starts_with("b3:") {
                out.push_str(&stdout(&e.cs(store, &["cat", id])));
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn same_wheels_give_the_same_environment_tree_in_two_stores() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let mut installers = vec!["pip"];
    if uv_available() {
        installers.push("uv");
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "uv is not on PATH, and CI needs the uv installer checked"
        );
        eprintln!("note: uv not on PATH, only the pip installer is checked");
    }
    for installer in installers {
        let (sa, sb) = (
            e.p(&format!("store-a-{installer}")),
            e.p(&format!("s-b-{installer}")),
        );
        let ta = e.env_tree_in(&sa, &lock, &e.p(&format!("a-{installer}")), installer);
        // Another second on the clock, another store path, another staging folder.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let tb = e.env_tree_in(&sb, &lock, &e.p(&format!("b-{installer}")), installer);
        assert_eq!(
            ta,
            tb,
            "{installer}: the same wheels gave two environment trees\n{}",
            ls_diff(
                &e,
                (&sa, &e.ls_lines(&sa, &ta)),
                (&sb, &e.ls_lines(&sb, &tb))
            )
        );
    }
}

#[test]
fn an_environment_comfystore_built_is_locked_as_such_and_a_rebuild_must_hash_to_it() {
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let dest = e.p("dest");
    let (report, _) = e.materialize(&lock, &dest, &["--installer", "pip"]);
    let built = report["env"]["tree"].as_str().unwrap().to_string();

    // `lock DEST`: its venv is exactly what comfystore built from the lock's wheels.
    let relock = e.p("relock.lock.json");
    let out = e.cs(
        &e.store,
        &[
            "lock",
            s(&dest),
            "--tag",
            "re",
            "--no-pin-wheels",
            "-o",
            s(&relock),
        ],
    );
    assert_eq!(code(&out), 0, "lock DEST: {}", describe(&out));
    let py = read_json(&relock)["python"].clone();
    assert_eq!(py["tree"], built.as_str(), "{py:#}");
    assert_eq!(py["built_with"], "pip", "{py:#}");

    // The v1 lock with that python section, rebuilt in a store that has only the lock's
    // trees and model: the same wheels give the same tree.
    let portable = e.p("portable.lock.json");
    fs::copy(&lock, &portable).unwrap();
    edit_json(&portable, |d| d["python"] = py.clone());
    let store2 = e.p("store2");
    e.lock_into(&store2, &e.v1, "v1", &e.p("scratch.lock.json"));
    let out = e.cs(
        &store2,
        &["--json", "materialize", s(&portable), s(&e.p("two"))],
    );
    assert_eq!(code(&out), 0, "materialize: {}", describe(&out));
    let r2 = parse(&out);
    assert_eq!(r2["env"]["built"], true, "{r2:#}");
    assert_eq!(r2["env"]["tree"], built.as_str(), "{r2:#}");

    // A lock whose tree the wheels do not give: the rebuild is refused, naming both trees,
    // and DEST is not written.
    let other = Value::from(format!("b3:{}", "5e".repeat(32)));
    edit_json(&portable, |d| d["python"]["tree"] = other.clone());
    let store3 = e.p("store3");
    e.lock_into(&store3, &e.v1, "v1", &e.p("scratch3.lock.json"));
    let three = e.p("three");
    let out = e.cs(&store3, &["materialize", s(&portable), s(&three)]);
    assert_ne!(code(&out), 0, "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&built) && err.contains(other.as_str().unwrap()),
        "the error names both trees: {}",
        describe(&out)
    );
    assert!(!three.exists(), "{:?}", listing(&three));
}

/// Every file under `dir` (not following symlinks): its path, size, mode, inode and mtime.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u32, u64, i64)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| {
            let m = e.path().symlink_metadata().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            (
                rel,
                (
                    m.len(),
                    m.mode(),
                    m.ino(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                ),
            )
        })
        .collect()
}

/// `fsck --json` of `store` finds nothing wrong, and every object is read-only.
fn assert_store_sound(e: &Env, store: &Path, when: &str) {
    let out = e.cs(store, &["--json", "fsck"]);
    assert_eq!(code(&out), 0, "{when}: fsck: {}", describe(&out));
    let report = parse(&out);
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{when}: {report:#}"
    );
    for f in walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
    {
        let mode = f.metadata().unwrap().mode();
        assert_eq!(
            mode & 0o222,
            0,
            "{when}: {} is writable",
            f.path().display()
        );
    }
}

/// The first build of an environment (`comfystore env LOCK`) takes the installer's files
/// into the store without copying them (uv unpacks into a cache of comfystore's own in the
/// store's tmp/): the user's uv cache is neither read nor written, the store is sound, a
/// second build finds the tree. A kill -9 at points spread over the build leaves a store that
/// fsck finds sound and in which the next build completes with the same tree.
#[test]
fn env_build_leaves_the_users_uv_cache_alone_and_survives_kill_9() {
    const TEST: &str = "env_build_leaves_the_users_uv_cache_alone_and_survives_kill_9";
    if !uv_available() {
        common::cannot_run(TEST, "uv not on PATH");
        return;
    }
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    // uv's cache as the user has it ($XDG_CACHE_HOME/uv, made by `pin`'s resolution).
    let user_cache = e.p("cache");
    fs::create_dir_all(user_cache.join("uv")).unwrap();
    let before = snapshot(&user_cache);
    let t = Instant::now();
    let built = parse(&e.ok(&["--json", "env", s(&lock)]));
    let full = t.elapsed();
    assert_eq!(built["built"], true, "{built:#}");
    let tree = built["tree"].as_str().unwrap().to_string();
    assert_eq!(
        snapshot(&user_cache),
        before,
        "building the environment changed the user's caches"
    );
    assert_store_sound(&e, &e.store, "after the build");
    let again = parse(&e.ok(&["--json", "env", s(&lock)]));
    assert_eq!(again["built"], false, "{again:#}");
    assert_eq!(again["tree"].as_str(), Some(tree.as_str()));

    let mut killed_running = 0;
    for (i, fraction) in [0.1, 0.3, 0.5, 0.7, 0.9].into_iter().enumerate() {
        let store = e.p(&format!("killed-{i}"));
        let out = e.cs(&store, &["fetch", s(&lock), "--only", "python"]);
        assert_eq!(code(&out), 0, "fetch: {}", describe(&out));
        let mut child = e.cs_command(&store, &["env", s(&lock)]).spawn().unwrap();
        std::thread::sleep(full.mul_f64(fraction));
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let when = format!("after a kill at {:.0}% of a build", fraction * 100.0);
        assert_store_sound(&e, &store, &when);
        let out = e.cs(&store, &["--json", "env", s(&lock)]);
        assert_eq!(code(&out), 0, "{when}: env: {}", describe(&out));
        assert_eq!(parse(&out)["tree"].as_str(), Some(tree.as_str()), "{when}");
        assert_store_sound(&e, &store, &format!("{when} and a build"));
    }
    eprintln!("build {full:?}; {killed_running} of 5 kills landed while it ran");
}

/// The wheels are checked while the installer already reads them (`ensure_env`): a wheel
/// damaged in the store still fails the build, with its object named, and nothing of the
/// build is stored (no environment root, the store sound once the damaged copy is set aside).
#[test]
fn env_build_refuses_a_wheel_damaged_in_the_store() {
    const TEST: &str = "env_build_refuses_a_wheel_damaged_in_the_store";
    if !uv_available() {
        common::cannot_run(TEST, "uv not on PATH");
        return;
    }
    let e = Env::new();
    let lock = e.pinned_lock("v1");
    let store = e.p("damaged");
    let out = e.cs(&store, &["fetch", s(&lock), "--only", "python"]);
    assert_eq!(code(&out), 0, "fetch: {}", describe(&out));
    let locked: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&lock).unwrap()).unwrap();
    let sha = locked["python"]["packages"][0]["sha256"].as_str().unwrap();
    let alias =
        fs::read_to_string(store.join("aliases/sha256").join(&sha[..2]).join(&sha[2..])).unwrap();
    let b3 = alias.trim().trim_start_matches("b3:").to_string();
    let object = store.join("objects/b3").join(&b3[..2]).join(&b3[2..]);
    let mut bytes = fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::set_permissions(&object, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&object, &bytes).unwrap();
    fs::set_permissions(&object, fs::Permissions::from_mode(0o444)).unwrap();

    let out = e.cs(&store, &["env", s(&lock)]);
    assert_ne!(
        code(&out),
        0,
        "a damaged wheel was installed: {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&b3),
        "the error does not name the object: {err}"
    );
    let envs = store.join("roots/env");
    let roots = fs::read_dir(&envs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(roots, 0, "an environment was recorded: {}", envs.display());
    assert!(!object.exists(), "the damaged object was left in place");
}
