//! End to end, through the real binary: a lock made in store A rebuilds in an empty store B, on
//! another path, from the lock alone, hash for hash.
//!
//! One temp dir holds the "internet" and two "machines":
//!
//! ```text
//! git/ComfyUI.git, git/ComfyUI-NodeA.git, git/ComfyUI-NodeB.git    bare repos ("GitHub")
//! main index (PEP 503): tinyfoo 1.0/2.0, tinycli, requests        a local HTTP server each
//! extra index: tinydep (served nowhere else)
//! model server: the install's model files
//! a/   machine A: its HOME, caches, empty git config, store; a/ComfyUI the user's install
//! b/   machine B: its own HOME, caches, store (created by the test's first command there),
//!      and a git config whose `url.<bare>.insteadOf` rules send the GitHub URLs to the
//!      bare repos, as DNS and GitHub would
//! ```
//!
//! The install is a ComfyUI-shaped git checkout whose origin is a GitHub URL, at a commit that
//! is not the tip of its branch. ComfyUI's repo tracks files under `models/` and
//! `custom_nodes/` (`models/configs/v1-inference.yaml`, a `put_checkpoints_here` placeholder,
//! `custom_nodes/websocket_image_save.py`, `custom_nodes/example_node.py.example`): they are
//! ComfyUI's, never models or nodes. Two custom nodes are git checkouts of their own; the models
//! (one twice, at two paths) are on the model server; the packages come from the two indexes.
//! The lockfile is the only thing machine B gets from machine A: it names no path of A.

mod common;

use common::comfy::{pseudo_random, ComfyFixture};
use common::http::{Behavior, TestServer};
use common::pyindex::{
    pip, python3, python_cmd, scrubbed_vars, wheel_set, IndexServer, Wheel, TINYCLI_OUTPUT,
};
use common::{cannot_run, code, describe, parse, run_env, s, sha256_hex, stdout, NETWORK_ENV};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------------------------------------
// The repos.

const COMFY_URL: &str = "https://github.com/comfyanonymous/ComfyUI";
const NODE_A: &str = "ComfyUI-NodeA";
const NODE_B: &str = "ComfyUI-NodeB";
const NODE_A_URL: &str = "https://github.com/e2e-example/ComfyUI-NodeA.git";
const NODE_B_URL: &str = "https://github.com/e2e-example/ComfyUI-NodeB";

/// As ComfyUI's own: the data folders are ignored, and its files there are force-added.
const COMFY_GITIGNORE: &str = "\
__pycache__/
*.py[cod]
/output/
/input/
/models/
/temp/
/custom_nodes/
!custom_nodes/example_node.py.example
/user/
venv/
.venv/
";

/// ComfyUI's requirements: tinydep is only on the extra index, and pulls in tinyfoo.
const REQUIREMENTS: &str = "tinycli\ntinydep\n";

/// The entry point: loads every node as ComfyUI does (packages and single files of
/// custom_nodes/), imports a package of the environment, and hashes every file under models/.
const MAIN_PY: &str = r#"import hashlib
import importlib.util
import os
import sys

import tinydep
import tinyfoo

BASE = os.path.dirname(os.path.abspath(__file__))


def node_classes():
    names = []
    root = os.path.join(BASE, "custom_nodes")
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.startswith(".") or entry == "__pycache__":
            continue
        if os.path.isdir(path):
            path = os.path.join(path, "__init__.py")
        elif not entry.endswith(".py"):
            continue
        name = "e2e_node_" + "".join(c if c.isalnum() else "_" for c in entry)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names.extend(sorted(module.NODE_CLASS_MAPPINGS))
    return names


def model_files():
    out = []
    for folder, _, files in sorted(os.walk(os.path.join(BASE, "models"))):
        for f in sorted(files):
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()[:16]
            out.append("%s %d %s" % (os.path.relpath(path, BASE), os.path.getsize(path), digest))
    return out


def main():
    in_venv = os.path.realpath(tinyfoo.__file__).startswith(os.path.realpath(sys.prefix))
    print("ComfyUI e2e fixture: tinyfoo", tinydep.FOO_VERSION, "from the venv:", in_venv)
    print("nodes:", ", ".join(node_classes()))
    for line in model_files():
        print("model:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
"#;

const NODES_PY: &str = "NODE_CLASS_MAPPINGS = {\"CheckpointLoaderSimple\": object}\n";
const MODEL_CONFIG: &str = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n";
const WEBSOCKET_IMAGE_SAVE: &str =
    "class SaveImageWebsocket:\n    OUTPUT_NODE = True\n\n\nNODE_CLASS_MAPPINGS = {\"SaveImageWebsocket\": SaveImageWebsocket}\n";
const EXAMPLE_NODE: &str =
    "class Example:\n    pass\n\n\nNODE_CLASS_MAPPINGS = {\"Example\": Example}\n";
const NODE_A_INIT: &str = "import tinyfoo\n\n\nclass NodeA:\n    FOO = tinyfoo.__version__\n\n\nNODE_CLASS_MAPPINGS = {\"E2ENodeA\": NodeA}\n";
const NODE_B_INIT: &str =
    "class NodeB:\n    pass\n\n\nNODE_CLASS_MAPPINGS = {\"E2ENodeB\": NodeB}\n";

/// Files ComfyUI's repo tracks under its data folders: in the `comfyui` tree, never a model
/// or a node.
const COMFY_OWN_DATA: &[&str] = &[
    "models/configs/v1-inference.yaml",
    "models/checkpoints/put_checkpoints_here",
    "custom_nodes/websocket_image_save.py",
    "custom_nodes/example_node.py.example",
    "output/_output_images_will_be_put_here",
];

/// The install's models: (path, bytes, route on the model server). The copy has the same
/// bytes as the checkpoint, and gets its source through the checkpoint's SHA-256.
fn models() -> Vec<(&'static str, Vec<u8>)> {
    let ckpt = pseudo_random(301, (96 << 10) + 5);
    vec![
        ("models/checkpoints/tiny.safetensors", ckpt.clone()),
        (
            "models/loras/style/style.safetensors",
            pseudo_random(302, 40 << 10),
        ),
        ("models/vae/tiny-copy.safetensors", ckpt),
    ]
}

const MODEL_ROUTES: &[(&str, &str)] = &[
    (
        "models/checkpoints/tiny.safetensors",
        "/hub/tiny.safetensors",
    ),
    (
        "models/loras/style/style.safetensors",
        "/hub/style.safetensors",
    ),
];

fn git(dir: &Path, args: &[&str]) -> String {
    ComfyFixture::git(dir, args)
}

fn strip_fragment(url: &str) -> &str {
    url.split('#').next().unwrap()
}

/// The tools the test drives; `None` (after saying why) when one is missing.
fn prerequisites(test: &str) -> Option<()> {
    let runs = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !runs(Command::new("git").arg("--version")) {
        cannot_run(test, "git is not on PATH");
        return None;
    }
    if !runs(python_cmd(Path::new("python3")).args(["-c", "import venv"])) {
        cannot_run(test, "python3 with venv is not on PATH");
        return None;
    }
    if !pip(&["--version"]).status.success() {
        cannot_run(test, "python3 has no pip");
        return None;
    }
    Some(())
}

// ---------------------------------------------------------------------------------------------
// Machines.

/// One machine: its own HOME, caches, git configuration and store.
struct Machine {
    root: PathBuf,
    store: PathBuf,
    gitconfig: PathBuf,
}

impl Machine {
    fn new(root: PathBuf, gitconfig: &str) -> Machine {
        for d in ["home", "cache", "hf/hub"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let path = root.join("gitconfig");
        fs::write(&path, gitconfig).unwrap();
        Machine {
            store: root.join("store"),
            gitconfig: path,
            root,
        }
    }

    /// The environment changes of every comfystore run on this machine: nothing of the test
    /// machine's Python, pip, uv, git or comfystore settings, no proxies or tokens, this
    /// machine's HOME, caches and git config, and `lock`'s default of pinning wheels (the
    /// harness turns it off).
    fn env(&self) -> Vec<(String, Option<OsString>)> {
        let mut all: Vec<(String, Option<OsString>)> =
            scrubbed_vars().into_iter().map(|k| (k, None)).collect();
        for k in NETWORK_ENV.iter().chain(&[
            "COMFY_HOME",
            "COMFYSTORE_DIR",
            "COMFYSTORE_NO_PIN_WHEELS",
            "RUST_LOG",
            "XDG_CONFIG_HOME",
            "GITHUB_TOKEN",
            "GIT_TOKEN",
        ]) {
            all.push((k.to_string(), None));
        }
        let p = |rel: &str| Some(self.root.join(rel).into_os_string());
        let v = |s: &str| Some(OsString::from(s));
        all.extend([
            (
                "GIT_CONFIG_GLOBAL".into(),
                Some(self.gitconfig.clone().into_os_string()),
            ),
            ("GIT_CONFIG_NOSYSTEM".into(), v("1")),
            ("GIT_TERMINAL_PROMPT".into(), v("0")),
            ("HOME".into(), p("home")),
            ("XDG_CACHE_HOME".into(), p("cache")),
            ("HF_HOME".into(), p("hf")),
            ("HF_HUB_CACHE".into(), p("hf/hub")),
            ("PIP_CONFIG_FILE".into(), v("/dev/null")),
            ("PIP_NO_INPUT".into(), v("1")),
            ("PIP_DISABLE_PIP_VERSION_CHECK".into(), v("1")),
            ("UV_NO_CONFIG".into(), v("1")),
            ("UV_PYTHON_DOWNLOADS".into(), v("never")),
            ("COMFYSTORE_BACKOFF".into(), v("10ms")),
            ("LC_ALL".into(), v("C")),
        ]);
        all
    }

    /// `comfystore --store STORE ARGS...` on this machine.
    fn cs(&self, args: &[&str]) -> Output {
        let env = self.env();
        let envs: Vec<(&str, Option<&OsStr>)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        run_env(&self.store, args, &envs)
    }

    /// [`Machine::cs`], required to exit 0.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.cs(args);
        assert_eq!(code(&out), 0, "comfystore {args:?}: {}", describe(&out));
        out
    }

    /// `comfystore --json ARGS...`, required to exit 0, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        parse(&self.ok(&all))
    }
}

// ---------------------------------------------------------------------------------------------
// The world.

/// GET requests per path of one server.
type Gets = BTreeMap<String, usize>;

fn gets(srv: &TestServer) -> Gets {
    let mut out = Gets::new();
    for r in srv.requests().into_iter().filter(|r| r.method == "GET") {
        *out.entry(r.path).or_default() += 1;
    }
    out
}

/// The paths `after` has more GETs of than `before`.
fn new_gets(before: &Gets, after: &Gets) -> Vec<String> {
    after
        .iter()
        .filter(|(p, n)| before.get(*p).copied().unwrap_or(0) < **n)
        .map(|(p, _)| p.clone())
        .collect()
}

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The bare repos, "GitHub".
    git: PathBuf,
    main: IndexServer,
    extra: IndexServer,
    models: TestServer,
    a: Machine,
    b: Machine,
    /// a/ComfyUI: the user's install on machine A.
    install: PathBuf,
    /// The commits of the install: ComfyUI (not its branch's tip) and each node.
    comfy_commit: String,
    node_commits: BTreeMap<&'static str, String>,
    /// The model sources file for `lock --sources`.
    sources: PathBuf,
}

impl World {
    fn new(test: &str) -> Option<World> {
        prerequisites(test)?;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let git_dir = dir.join("git");
        fs::create_dir_all(&git_dir).unwrap();

        // "GitHub": ComfyUI at the install's commit and one later; two nodes.
        let src = dir.join("src");
        let comfy_src = src.join("ComfyUI");
        let comfy_commit = build_comfy_repo(&comfy_src);
        let node_a = build_node(&src.join(NODE_A), NODE_A_INIT, true);
        let node_b = build_node(&src.join(NODE_B), NODE_B_INIT, false);
        for (name, from) in [
            ("ComfyUI", &comfy_src),
            (NODE_A, &src.join(NODE_A)),
            (NODE_B, &src.join(NODE_B)),
        ] {
            let bare = git_dir.join(format!("{name}.git"));
            git(&dir, &["clone", "-q", "--bare", s(from), s(&bare)]);
        }
        fs::remove_dir_all(&src).unwrap();
        let insteadof = [
            (COMFY_URL, "ComfyUI"),
            (NODE_A_URL, NODE_A),
            (NODE_B_URL, NODE_B),
        ]
        .iter()
        .map(|(url, name)| {
            format!(
                "[url \"{}\"]\n\tinsteadOf = {url}\n",
                s(&git_dir.join(format!("{name}.git")))
            )
        })
        .collect::<String>();

        // The indexes: tinydep is on the extra one only.
        let ws = wheel_set();
        let (extra_wheels, main_wheels): (Vec<Wheel>, Vec<Wheel>) =
            ws.wheels.iter().cloned().partition(|w| w.name == "tinydep");
        let main = IndexServer::with_index(&main_wheels);
        let extra = IndexServer::with_index(&extra_wheels);

        // The models' server, and the sources file naming it.
        let models_srv = TestServer::start();
        let all = models();
        for (path, route) in MODEL_ROUTES {
            let bytes = &all.iter().find(|(p, _)| p == path).unwrap().1;
            models_srv.add(route, bytes.clone(), Behavior::Normal);
        }
        let (ckpt, lora) = (&all[0], &all[1]);
        let sources = dir.join("sources.json");
        fs::write(
            &sources,
            serde_json::to_vec_pretty(&json!({
                sha256_hex(&ckpt.1): [models_srv.url(MODEL_ROUTES[0].1)],
                lora.0: models_srv.url(MODEL_ROUTES[1].1),
            }))
            .unwrap(),
        )
        .unwrap();

        // Machine A: the install, cloned from "GitHub" (origin the GitHub URL), at a commit
        // behind the tip, with its nodes, models and some user data.
        let a = Machine::new(dir.join("a"), "");
        let b = Machine::new(dir.join("b"), &insteadof);
        let install = a.root.join("ComfyUI");
        git(
            &dir,
            &["clone", "-q", s(&git_dir.join("ComfyUI.git")), s(&install)],
        );
        git(&install, &["checkout", "-q", "--detach", &comfy_commit]);
        git(&install, &["remote", "set-url", "origin", COMFY_URL]);
        for (name, url) in [(NODE_A, NODE_A_URL), (NODE_B, NODE_B_URL)] {
            let to = install.join("custom_nodes").join(name);
            git(
                &dir,
                &[
                    "clone",
                    "-q",
                    s(&git_dir.join(format!("{name}.git"))),
                    s(&to),
                ],
            );
            git(&to, &["remote", "set-url", "origin", url]);
        }
        for (path, bytes) in &all {
            common::write(&install.join(path), bytes);
        }
        common::write(
            &install.join("output/ComfyUI_00001_.png"),
            b"\x89PNG user output",
        );
        common::write(&install.join("user/default/comfy.settings.json"), b"{}\n");

        Some(World {
            _tmp: tmp,
            git: git_dir,
            main,
            extra,
            models: models_srv,
            a,
            b,
            install,
            comfy_commit,
            node_commits: BTreeMap::from([(NODE_A, node_a), (NODE_B, node_b)]),
            sources,
            dir,
        })
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// GETs of the three servers so far.
    fn all_gets(&self) -> [Gets; 3] {
        [gets(&self.main), gets(&self.extra), gets(&self.models)]
    }

    /// A venv made by pip outside comfystore, at the install's `venv/`, from the two indexes.
    fn pip_venv(&self) {
        let venv = self.install.join("venv");
        let out = python_cmd(python3())
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "venv: {}", describe(&out));
        let out = pip(&[
            "--python",
            s(&venv.join("bin/python")),
            "install",
            "--no-compile",
            "--index-url",
            &self.main.index_url(),
            "--extra-index-url",
            &self.extra.index_url(),
            "-r",
            s(&self.install.join("requirements.txt")),
        ]);
        assert_eq!(code(&out), 0, "pip install: {}", describe(&out));
    }

    /// `lock` the install on machine A, as a user would: wheels pinned against the two
    /// indexes, models' sources from the sources file, refused unless portable. The lockfile is
    /// copied to machine B (the only thing B gets); its path there and its content.
    fn lock_on_a(&self) -> (PathBuf, Value) {
        let out = self.p("a/e2e.lock.json");
        let (main, extra) = (self.main.index_url(), self.extra.index_url());
        let before = self.all_gets();
        self.a.ok(&[
            "lock",
            s(&self.install),
            "--tag",
            "e2e",
            "--index-url",
            &main,
            "--extra-index-url",
            &extra,
            "--sources",
            s(&self.sources),
            "--portable",
            "-o",
            s(&out),
        ]);
        // Nothing was downloaded to lock: models are hashed in place, and each wheel's sha256 is
        // the one its index published.
        let after = self.all_gets();
        for (i, what) in ["main index", "extra index", "model server"]
            .iter()
            .enumerate()
        {
            let files: Vec<String> = new_gets(&before[i], &after[i])
                .into_iter()
                .filter(|p| !p.starts_with("/simple/"))
                .collect();
            assert_eq!(
                files,
                Vec::<String>::new(),
                "lock downloaded from the {what}"
            );
        }
        let text = fs::read_to_string(&out).unwrap();
        assert!(
            !text.contains(s(&self.dir)),
            "the lock names a path of this test's machines:\n{text}"
        );
        let lock: Value = serde_json::from_str(&text).unwrap();
        self.check_lock(&lock);
        let on_b = self.p("b/e2e.lock.json");
        fs::write(&on_b, &text).unwrap();
        (on_b, lock)
    }

    /// What the lock says of the install: commits and GitHub URLs, a tree for every source,
    /// ComfyUI's own files in no node or model, every model with its hashes and a URL, every
    /// package pinned to a wheel at the URL of the index that has it.
    fn check_lock(&self, lock: &Value) {
        let c = &lock["comfyui"];
        assert_eq!(c["repo"], COMFY_URL, "{c:#}");
        assert_eq!(c["commit"], self.comfy_commit.as_str(), "{c:#}");
        assert!(c.get("dirty").is_none(), "{c:#}");
        tree_id(&c["tree"]);
        let nodes = lock["custom_nodes"].as_array().unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [NODE_A, NODE_B],
            "only the user's nodes are nodes: {lock:#}"
        );
        for n in nodes {
            let name = n["name"].as_str().unwrap();
            let url = if name == NODE_A {
                NODE_A_URL
            } else {
                NODE_B_URL
            };
            assert_eq!(n["repo"], url, "{n:#}");
            assert_eq!(n["commit"], self.node_commits[name].as_str(), "{n:#}");
            tree_id(&n["tree"]);
        }
        let want: Vec<(&str, Vec<u8>)> = models();
        let got = lock["models"].as_array().unwrap();
        let paths: Vec<&str> = got.iter().map(|m| m["path"].as_str().unwrap()).collect();
        let mut want_paths: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
        want_paths.sort();
        assert_eq!(
            paths, want_paths,
            "only the user's models are models: {lock:#}"
        );
        for m in got {
            let bytes = &want.iter().find(|(p, _)| m["path"] == *p).unwrap().1;
            assert_eq!(m["sha256"], sha256_hex(bytes).as_str(), "{m:#}");
            assert_eq!(m["blake3"], blake3::hash(bytes).to_hex().as_str(), "{m:#}");
            assert_eq!(m["size"], bytes.len(), "{m:#}");
            let srcs = m["sources"]
                .as_array()
                .unwrap_or_else(|| panic!("no sources: {m:#}"));
            assert!(
                !srcs.is_empty()
                    && srcs
                        .iter()
                        .all(|u| u.as_str().unwrap().starts_with(&self.models.url("/"))),
                "{m:#}"
            );
        }
        let py = &lock["python"];
        assert_eq!(py["index_url"], self.main.index_url().as_str(), "{py:#}");
        assert_eq!(
            py["extra_index_urls"],
            json!([self.extra.index_url()]),
            "{py:#}"
        );
        tree_id(&py["tree"]);
        for p in py["packages"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let url = p["url"].as_str().unwrap_or_else(|| panic!("no url: {p}"));
            let srv = if name == "tinydep" {
                &self.extra
            } else {
                &self.main
            };
            let w = wheel_set().get(name, p["version"].as_str().unwrap());
            assert_eq!(p["wheel"], w.file.as_str(), "{p}");
            assert_eq!(p["sha256"], w.sha256.as_str(), "{p}");
            assert_eq!(strip_fragment(url), srv.file_url(w), "{p}");
        }
    }

    /// Machine B, from the lockfile alone: `fetch` into an empty store (trees from git, the
    /// models and wheels from the URLs the lock names, nothing else asked of any index), then
    /// `materialize`, which has nothing left to get. Checks DEST against the lock and the
    /// install, runs the entry point; returns the materialize report and DEST.
    fn rebuild_on_b(&self, lock_path: &Path, lock: &Value) -> (Value, PathBuf) {
        assert!(!self.b.store.exists(), "machine B's store is not empty");
        // Machine A is gone while B works: its store, install and caches cannot be read.
        let a_away = self.p("a-away");
        fs::rename(&self.a.root, &a_away).unwrap();
        let before = self.all_gets();
        let fetched = self.b.json(&["fetch", s(lock_path)]);
        let after = self.all_gets();
        assert_eq!(fetched["failed"], json!([]), "{fetched:#}");

        // Every source tree came from git, at the lock's commit, with the lock's id.
        let mut want_trees = BTreeMap::from([(
            "comfyui".to_string(),
            (
                lock["comfyui"]["tree"].clone(),
                self.comfy_commit.clone(),
                COMFY_URL,
            ),
        )]);
        for n in lock["custom_nodes"].as_array().unwrap() {
            let name = n["name"].as_str().unwrap();
            let url = if name == NODE_A {
                NODE_A_URL
            } else {
                NODE_B_URL
            };
            want_trees.insert(
                format!("custom_nodes/{name}"),
                (n["tree"].clone(), self.node_commits[name].clone(), url),
            );
        }
        let got_trees: BTreeMap<String, (Value, String, &str)> = fetched["trees"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let url = [COMFY_URL, NODE_A_URL, NODE_B_URL]
                    .into_iter()
                    .find(|u| t["repo"] == *u)
                    .unwrap_or_else(|| panic!("fetched from an unexpected repo: {t}"));
                (
                    t["label"].as_str().unwrap().to_string(),
                    (
                        t["tree"].clone(),
                        t["commit"].as_str().unwrap().to_string(),
                        url,
                    ),
                )
            })
            .collect();
        assert_eq!(got_trees, want_trees, "{fetched:#}");

        // The models and wheels came from the URLs the lock names: the extra index's wheel from
        // the extra index; no index page was read (nothing was resolved).
        let mut want_urls: BTreeMap<String, String> = BTreeMap::new();
        for p in lock["python"]["packages"].as_array().unwrap() {
            let url = strip_fragment(p["url"].as_str().unwrap()).to_string();
            want_urls.insert(format!("wheels/{}", p["wheel"].as_str().unwrap()), url);
        }
        for (path, route) in MODEL_ROUTES {
            want_urls.insert(path.to_string(), self.models.url(route));
        }
        let got_urls: BTreeMap<String, String> = fetched["downloaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let url = strip_fragment(d["url"].as_str().unwrap()).to_string();
                (d["label"].as_str().unwrap().to_string(), url)
            })
            .collect();
        assert_eq!(got_urls, want_urls, "{fetched:#}");
        let wheel_paths = |on_extra: bool| -> Vec<String> {
            let mut v: Vec<String> = lock["python"]["packages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| (p["name"] == "tinydep") == on_extra)
                .map(|p| format!("/files/{}", p["wheel"].as_str().unwrap()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            new_gets(&before[0], &after[0]),
            wheel_paths(false),
            "main index"
        );
        assert_eq!(
            new_gets(&before[1], &after[1]),
            wheel_paths(true),
            "extra index"
        );
        let mut routes: Vec<String> = MODEL_ROUTES.iter().map(|(_, r)| r.to_string()).collect();
        routes.sort();
        assert_eq!(new_gets(&before[2], &after[2]), routes);

        // Materialize: everything is in store B now; no server is asked anything.
        let dest = self.b.root.join("ComfyUI");
        let report = self.b.json(&["materialize", s(lock_path), s(&dest)]);
        assert_eq!(self.all_gets(), after, "materialize went to the network");
        // Only the environment was still to make (fetch gets its wheels, materialize builds it).
        assert_eq!(
            report["fetched"]["needed"],
            json!(["environment (installed from the wheels)"]),
            "{report:#}"
        );
        assert_eq!(report["fetched"]["downloaded"], json!([]), "{report:#}");
        assert_eq!(report["env"]["built"], true, "{report:#}");
        let status = self.b.cs(&["status", s(&dest)]);
        assert_eq!(code(&status), 0, "status of DEST: {}", describe(&status));
        let verified = self.b.cs(&["verify", s(lock_path), s(&dest), "--full"]);
        assert_eq!(code(&verified), 0, "verify: {}", describe(&verified));
        fs::rename(&a_away, &self.a.root).unwrap();

        // DEST holds ComfyUI's own files where its repo has them, and the models' bytes.
        for own in COMFY_OWN_DATA {
            assert_eq!(
                fs::read(dest.join(own)).unwrap_or_else(|e| panic!("{own}: {e}")),
                fs::read(self.install.join(own)).unwrap(),
                "{own}"
            );
        }
        for (path, bytes) in models() {
            assert!(fs::read(dest.join(path)).unwrap() == bytes, "{path}");
        }
        assert_eq!(
            fs::read_link(dest.join("latest.py")).unwrap(),
            Path::new("main.py")
        );
        let mode = fs::metadata(
            dest.join("custom_nodes")
                .join(NODE_A)
                .join("scripts/setup.sh"),
        )
        .unwrap()
        .permissions()
        .mode();
        assert_eq!(mode & 0o111, 0o111, "the node's script lost its exec bits");
        for user in ["output/ComfyUI_00001_.png", "user"] {
            assert!(
                !dest.join(user).exists(),
                "{user} is the user's, not the version's"
            );
        }

        // The entry point runs, on the rebuilt environment, as it runs in the install.
        let ran = run_main(&dest);
        assert_eq!(ran, run_main(&self.install), "DEST's main.py");
        assert!(
            ran.starts_with("ComfyUI e2e fixture: tinyfoo 2.0 from the venv: True\n")
                && ran.contains("nodes: E2ENodeA, E2ENodeB, SaveImageWebsocket\n")
                && ran.contains("model: models/vae/tiny-copy.safetensors"),
            "{ran}"
        );
        let script = dest.join("venv/bin/tinycli");
        let out = python_cmd(&script).output().unwrap();
        assert_eq!(code(&out), 0, "{}", describe(&out));
        assert_eq!(stdout(&out).trim(), TINYCLI_OUTPUT);
        (report, dest)
    }
}

/// `VENV/bin/python main.py` in `comfy`, without byte-code; its stdout.
fn run_main(comfy: &Path) -> String {
    let out = python_cmd(&comfy.join("venv/bin/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(comfy)
        .arg("main.py")
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        0,
        "{}/main.py: {}",
        comfy.display(),
        describe(&out)
    );
    stdout(&out)
}

fn tree_id(v: &Value) -> &str {
    v.as_str()
        .filter(|t| t.starts_with("b3:") && t.len() == 67)
        .unwrap_or_else(|| panic!("not a tree id: {v}"))
}

/// ComfyUI's repo: the install's commit, then one more (the tip the install is behind).
/// Returns the install's commit.
fn build_comfy_repo(c: &Path) -> String {
    fs::create_dir_all(c).unwrap();
    git(c, &["init", "-q", "-b", "master"]);
    let put = |p: &str, data: &[u8]| common::write(&c.join(p), data);
    put(".gitignore", COMFY_GITIGNORE.as_bytes());
    put("main.py", MAIN_PY.as_bytes());
    put("nodes.py", NODES_PY.as_bytes());
    put("requirements.txt", REQUIREMENTS.as_bytes());
    put("comfy/__init__.py", b"");
    put(
        "comfy/sd.py",
        b"def load_checkpoint(path):\n    return path\n",
    );
    put(
        "script_examples/run.sh",
        b"#!/bin/sh\nexec python3 main.py \"$@\"\n",
    );
    fs::set_permissions(
        c.join("script_examples/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("main.py", c.join("latest.py")).unwrap();
    git(c, &["add", "-A"]);
    let own: [(&str, &[u8]); 5] = [
        (COMFY_OWN_DATA[0], MODEL_CONFIG.as_bytes()),
        (COMFY_OWN_DATA[1], b""),
        (COMFY_OWN_DATA[2], WEBSOCKET_IMAGE_SAVE.as_bytes()),
        (COMFY_OWN_DATA[3], EXAMPLE_NODE.as_bytes()),
        (COMFY_OWN_DATA[4], b""),
    ];
    for (p, data) in own {
        put(p, data);
        git(c, &["add", "-f", "--", p]);
    }
    git(c, &["commit", "-q", "--no-verify", "-m", "ComfyUI"]);
    let commit = git(c, &["rev-parse", "HEAD"]);
    ComfyFixture::commit_file(
        c,
        "comfy/sd.py",
        "def load_checkpoint(path, vae=True):\n    return path\n",
    );
    commit
}

/// A node's repo (two commits for NodeA); returns its HEAD.
fn build_node(dir: &Path, init: &str, two_commits: bool) -> String {
    fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    common::write(&dir.join("__init__.py"), init.as_bytes());
    common::write(&dir.join("web/js/node.js"), b"export const name = 'e2e';\n");
    common::write(&dir.join("requirements.txt"), b"tinyfoo>=1.0\n");
    let script = dir.join("scripts/setup.sh");
    common::write(&script, b"#!/bin/sh\necho setup\n");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--no-verify", "-m", "first"]);
    if two_commits {
        ComfyFixture::commit_file(dir, "README.md", "# a node\n");
    }
    git(dir, &["rev-parse", "HEAD"])
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The install's environment is comfystore's own build (`init`, pinned from the two indexes):
/// `lock` records it as such, and store B's rebuild from the same wheels hashes to the very
/// tree. Then `repro env` scans DEST as `lock` would and finds the same version.
#[test]
fn a_comfystore_built_install_rebuilds_hash_for_hash_in_an_empty_store() {
    let Some(w) = World::new("a_comfystore_built_install_rebuilds_hash_for_hash_in_an_empty_store")
    else {
        return;
    };
    w.a.ok(&[
        "init",
        "--path",
        s(&w.install),
        "--index-url",
        &w.main.index_url(),
        "--extra-index-url",
        &w.extra.index_url(),
    ]);
    // init left the checkout where it was.
    assert_eq!(git(&w.install, &["rev-parse", "HEAD"]), w.comfy_commit);
    let (lock_path, lock) = w.lock_on_a();
    let py = &lock["python"];
    let installer = py["built_with"]
        .as_str()
        .unwrap_or_else(|| panic!("{py:#}"));
    assert!(["uv", "pip"].contains(&installer), "{py:#}");

    let (report, dest) = w.rebuild_on_b(&lock_path, &lock);
    assert_eq!(report["env"]["tree"], py["tree"], "{report:#}");
    assert_eq!(report["env"]["installer"], installer, "{report:#}");

    // Scanned as `lock` scans an install, DEST in store B is the lock's version: every tree,
    // the environment and every model.
    let out = w.b.cs(&["--json", "repro", "env", s(&lock_path), s(&dest)]);
    assert_eq!(code(&out), 0, "repro env LOCK DEST: {}", describe(&out));
    assert_eq!(parse(&out)["changes"], json!([]), "{}", describe(&out));
}

/// The install's venv was made by pip outside comfystore: `lock` pins each package to its
/// wheel on the index that has it (tinydep on the extra index only), and store B rebuilds the
/// version from those wheels. Every source tree and model is the same; the environment holds
/// the same packages but is comfystore's install of them, not pip's bytes (documented:
/// `python.built_with` is absent, so no rebuild is held to the venv's tree).
#[test]
fn a_pip_made_install_rebuilds_from_its_pinned_wheels_in_an_empty_store() {
    let Some(w) =
        World::new("a_pip_made_install_rebuilds_from_its_pinned_wheels_in_an_empty_store")
    else {
        return;
    };
    w.pip_venv();
    let (lock_path, lock) = w.lock_on_a();
    assert!(
        lock["python"].get("built_with").is_none(),
        "{:#}",
        lock["python"]
    );
    let names: Vec<&str> = lock["python"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tinycli", "tinydep", "tinyfoo"]);

    let (report, dest) = w.rebuild_on_b(&lock_path, &lock);
    let out = w.b.cs(&["--json", "repro", "env", s(&lock_path), s(&dest)]);
    let changes = parse(&out)["changes"].clone();
    assert_eq!(
        changes,
        json!([{"part": "python", "name": "environment", "change": "changed",
                "from": lock["python"]["tree"], "to": report["env"]["tree"]}]),
        "only the environment tree differs: {}",
        describe(&out)
    );
}

/// A ComfyUI-Manager snapshot of the same install (commits and repo URLs, pips): imported,
/// pinned, fetched and materialized on machine B. Git gives the trees machine A locked; a
/// second fetch and a materialize need no repo at all (the trees were recorded for their repo
/// and commit).
#[test]
fn a_manager_snapshot_imports_fetches_once_and_materializes() {
    let Some(w) = World::new("a_manager_snapshot_imports_fetches_once_and_materializes") else {
        return;
    };
    // What machine A locks of the same install, for its tree ids.
    w.pip_venv();
    let (_, lock) = w.lock_on_a();

    let snapshot = json!({
        "comfyui": w.comfy_commit,
        "git_custom_nodes": {
            NODE_A_URL: {"hash": w.node_commits[NODE_A], "disabled": false},
            NODE_B_URL: {"hash": w.node_commits[NODE_B], "disabled": false},
        },
        "cnr_custom_nodes": {},
        "file_custom_nodes": [],
        "pips": {"tinycli==0.3": "", "tinydep==0.5": "", "tinyfoo==2.0": ""},
    });
    let snap_path = w.p("b/snapshot.json");
    fs::write(&snap_path, serde_json::to_vec_pretty(&snapshot).unwrap()).unwrap();
    let snap_lock = w.p("b/snap.lock.json");
    w.b.ok(&[
        "import-snapshot",
        s(&snap_path),
        "--tag",
        "snap",
        "-o",
        s(&snap_lock),
    ]);
    // The snapshot's pips name versions, not wheels: pinned from the indexes.
    let reqs = w.p("b/snapshot-requirements.txt");
    fs::write(&reqs, "tinycli==0.3\ntinydep==0.5\ntinyfoo==2.0\n").unwrap();
    w.b.ok(&[
        "pin",
        s(&reqs),
        "--index-url",
        &w.main.index_url(),
        "--extra-index-url",
        &w.extra.index_url(),
        "--lock",
        s(&snap_lock),
    ]);

    let fetched = w.b.json(&["fetch", s(&snap_lock)]);
    assert_eq!(fetched["failed"], json!([]), "{fetched:#}");
    let trees: BTreeMap<&str, &Value> = fetched["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["label"].as_str().unwrap(), &t["tree"]))
        .collect();
    let want: BTreeMap<&str, &Value> = BTreeMap::from([
        ("comfyui", &lock["comfyui"]["tree"]),
        (
            "custom_nodes/ComfyUI-NodeA",
            &common::node(&lock, NODE_A)["tree"],
        ),
        (
            "custom_nodes/ComfyUI-NodeB",
            &common::node(&lock, NODE_B)["tree"],
        ),
    ]);
    assert_eq!(trees, want, "{fetched:#}");

    // "GitHub" goes away: a second fetch, the materialize and verify need no repo.
    let gone = w.p("git-gone");
    fs::rename(&w.git, &gone).unwrap();
    let again = w.b.json(&["fetch", s(&snap_lock)]);
    // Nothing but the environment, which materialize builds from the wheels it has.
    assert_eq!(
        again["needed"],
        json!(["environment (installed from the wheels)"]),
        "{again:#}"
    );
    assert_eq!(again["trees"], json!([]), "{again:#}");
    assert_eq!(again["downloaded"], json!([]), "{again:#}");
    assert_eq!(again["failed"], json!([]), "{again:#}");
    let dest = w.p("b/from-snapshot");
    let report = w.b.json(&["materialize", s(&snap_lock), s(&dest)]);
    assert_eq!(report["fetched"]["trees"], json!([]), "{report:#}");
    let status = w.b.cs(&["status", s(&dest)]);
    assert_eq!(code(&status), 0, "status: {}", describe(&status));
    let verified = w.b.cs(&["verify", s(&snap_lock), s(&dest), "--full"]);
    assert_eq!(code(&verified), 0, "verify: {}", describe(&verified));
    for own in COMFY_OWN_DATA {
        assert_eq!(
            fs::read(dest.join(own)).unwrap_or_else(|e| panic!("{own}: {e}")),
            fs::read(w.install.join(own)).unwrap(),
            "{own}"
        );
    }
    // The snapshot has no models; everything else runs as in the install.
    let user_models: Vec<String> = models()
        .iter()
        .map(|(p, _)| format!("model: {p} "))
        .collect();
    let install_ran: String = run_main(&w.install)
        .lines()
        .filter(|l| !user_models.iter().any(|m| l.starts_with(m.as_str())))
        .map(|l| format!("{l}\n"))
        .collect();
    let ran = run_main(&dest);
    assert_eq!(ran, install_ran, "DEST's main.py");
    assert!(
        ran.contains("model: models/configs/v1-inference.yaml"),
        "{ran}"
    );
}
