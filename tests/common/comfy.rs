//! A realistic, offline, deterministic ComfyUI-shaped install for the `comfystore lock` tests.
//!
//! `ComfyFixture::build(root)` creates, inside `root`:
//!
//! ```text
//! root/
//!   ComfyUI/                      git repo, branch main, 3 commits, origin comfyanonymous/ComfyUI
//!     main.py folder_paths.py nodes.py comfy/{__init__,sd}.py .gitignore
//!     latest.py -> main.py        tracked symlink
//!     script_examples/run.sh      tracked, mode 755
//!     extra_model_paths.yaml.example
//!     extra_model_paths.yaml      untracked, ignored; points at root/shared-models
//!     input/example.png  output/_output_images_will_be_put_here        force-added
//!     models/checkpoints/put_checkpoints_here (tracked, empty)  a.safetensors (ignored)
//!     models/loras/{b,b_copy}.safetensors  models/vae/sub/c.pt         ignored
//!     custom_nodes/
//!       example_node.py.example  websocket_image_save.py               force-added
//!       __pycache__/junk.pyc
//!       ComfyUI-NodeA/   git, 2 commits; ignored config.local.json and __pycache__/
//!       ComfyUI-NodeB/   git, 1 commit; origin URL carries credentials
//!       PlainNode/       no git
//!       .disabled/OldNode/  git, 1 commit
//!     venv/                       `venv --without-pip`; tinyfoo + Tiny_Bar (index-like),
//!                                 directpkg (by wheel path: has direct_url.json)
//!   shared-models/loras/extra.safetensors  shared-models/upscale_models/x4.pth
//!   wheels/                       the three wheels built by `build_wheel`
//! ```
//!
//! Everything is byte-for-byte deterministic (git object ids included) except what pip and
//! venv generate inside `venv/`. Nothing touches the network. Needs `git` and `python3` (with
//! pip >= 22.3 for `pip --python`) on PATH.
#![allow(dead_code)]

use super::check;
use super::pyindex::{python3, python_cmd};
use super::wheel::{self, WheelSpec};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Author and committer of every fixture commit.
pub const GIT_NAME: &str = "Fixture Author";
pub const GIT_EMAIL: &str = "fixture@example.invalid";
/// 2024-01-02T03:04:05Z, the author and committer date of every fixture commit.
pub const GIT_DATE: &str = "1704164645 +0000";

pub const COMFY_ORIGIN: &str = "https://github.com/comfyanonymous/ComfyUI";
pub const NODE_A_ORIGIN: &str = "https://github.com/example/ComfyUI-NodeA.git";
pub const NODE_B_ORIGIN: &str = "https://user:s3cret-token@github.com/example/ComfyUI-NodeB";
pub const OLD_NODE_ORIGIN: &str = "https://github.com/example/OldNode";

#[derive(Debug, Clone)]
pub struct ComfyFixture {
    /// The temp dir given to `build`.
    pub root: PathBuf,
    /// root/ComfyUI
    pub comfy: PathBuf,
    /// root/ComfyUI/venv
    pub venv: PathBuf,
    /// root/shared-models (the base_path of ComfyUI/extra_model_paths.yaml)
    pub shared_models: PathBuf,
    /// root/wheels (the wheels built)
    pub wheels: PathBuf,
}

/// Deterministic pseudo-random bytes (xorshift64*, seed scrambled with splitmix64 so any seed,
/// 0 included, works and nearby seeds give unrelated streams).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    s = (s ^ (s >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    s = (s ^ (s >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    s ^= s >> 31;
    if s == 0 {
        s = 0x9E37_79B9_7F4A_7C15;
    }
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let word = s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// Write a file, creating its parent directories.
fn put(path: &Path, data: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl ComfyFixture {
    /// Run git in `dir` with fixed author/committer name, email and date, no signing, no user
    /// or system config and no inherited GIT_* variables. Panics (with stderr) on failure;
    /// returns stdout trimmed.
    pub fn git(dir: &Path, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(&k);
            }
        }
        cmd.current_dir(dir)
            .env("HOME", "/dev/null")
            .env_remove("XDG_CONFIG_HOME")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", GIT_NAME)
            .env("GIT_AUTHOR_EMAIL", GIT_EMAIL)
            .env("GIT_AUTHOR_DATE", GIT_DATE)
            .env("GIT_COMMITTER_NAME", GIT_NAME)
            .env("GIT_COMMITTER_EMAIL", GIT_EMAIL)
            .env("GIT_COMMITTER_DATE", GIT_DATE)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        for c in [
            "commit.gpgsign=false",
            "tag.gpgsign=false",
            "core.autocrlf=false",
            "core.symlinks=true",
            "core.filemode=true",
            "core.hooksPath=/dev/null",
            "init.defaultBranch=main",
            "gc.auto=0",
            "safe.directory=*",
        ] {
            cmd.args(["-c", c]);
        }
        cmd.args(args);
        let out = cmd.output().expect("run git");
        check(&format!("git {args:?} in {}", dir.display()), &out)
    }

    /// Commit (in the repo at `dir`) a write of `content` to `file` (relative path, force-added
    /// even if ignored); returns the new HEAD sha.
    pub fn commit_file(dir: &Path, file: &str, content: &str) -> String {
        put(&dir.join(file), content);
        Self::git(dir, &["add", "-f", "--", file]);
        let msg = format!("Update {file}");
        Self::git(
            dir,
            &["commit", "-q", "--allow-empty", "--no-verify", "-m", &msg],
        );
        Self::git(dir, &["rev-parse", "HEAD"])
    }

    /// Build a pure-Python `{name}-{version}-py3-none-any.whl` of (relative path, content)
    /// files into `out_dir` (created), with the tests' one wheel builder ([`wheel::build`]:
    /// byte-stable). Returns the wheel's path.
    pub fn build_wheel(
        out_dir: &Path,
        name: &str,
        version: &str,
        files: &[(&str, &str)],
    ) -> PathBuf {
        fs::create_dir_all(out_dir).unwrap();
        let out_dir = out_dir.canonicalize().unwrap();
        let spec = WheelSpec::plain(name, version, files);
        wheel::build(&[(&spec, &out_dir)]).remove(0)
    }

    /// Install into the fixture venv with no network, through the outer pip:
    /// `python3 -m pip --python VENV/bin/python install --no-index --no-deps
    /// --disable-pip-version-check --find-links WHEELS SPECS...`.
    /// `NAME==VER` specs are index-like installs (no direct_url.json); a spec that is a wheel's
    /// path is a direct-URL install (pip writes direct_url.json with a file:// URL).
    pub fn pip_install(&self, specs: &[&str]) {
        let mut cmd = python_cmd(python3());
        cmd.args(["-m", "pip", "--python"])
            .arg(self.venv.join("bin/python"))
            .args([
                "install",
                "--no-index",
                "--no-deps",
                "--disable-pip-version-check",
                "--find-links",
            ])
            .arg(&self.wheels)
            .args(specs);
        check(
            &format!("pip install {specs:?}"),
            &cmd.output().expect("run python3 -m pip"),
        );
    }

    pub fn build(root: &Path) -> ComfyFixture {
        fs::create_dir_all(root).unwrap();
        let root = root.canonicalize().unwrap();
        let comfy = root.join("ComfyUI");
        let f = ComfyFixture {
            venv: comfy.join("venv"),
            shared_models: root.join("shared-models"),
            wheels: root.join("wheels"),
            comfy,
            root,
        };
        f.build_comfy_repo();
        f.build_custom_nodes();
        f.build_models();
        f.build_venv();
        f
    }

    fn init_repo(dir: &Path, origin: &str) {
        fs::create_dir_all(dir).unwrap();
        Self::git(dir, &["init", "-q", "-b", "main"]);
        Self::git(dir, &["remote", "add", "origin", origin]);
    }

    fn commit_all(dir: &Path, msg: &str) {
        Self::git(dir, &["add", "-A"]);
        Self::git(dir, &["commit", "-q", "--no-verify", "-m", msg]);
    }

    fn build_comfy_repo(&self) {
        let c = &self.comfy;
        Self::init_repo(c, COMFY_ORIGIN);

        // Commit 1: the code.
        put(&c.join(".gitignore"), COMFY_GITIGNORE);
        put(&c.join("main.py"), MAIN_PY);
        put(&c.join("folder_paths.py"), FOLDER_PATHS_PY);
        put(&c.join("nodes.py"), NODES_PY);
        put(&c.join("comfy/__init__.py"), "");
        put(&c.join("comfy/sd.py"), SD_PY_V1);
        put(
            &c.join("extra_model_paths.yaml.example"),
            EXTRA_MODEL_PATHS_EXAMPLE,
        );
        let run_sh = c.join("script_examples/run.sh");
        put(
            &run_sh,
            "#!/bin/sh\ncd \"$(dirname \"$0\")/..\" && exec python3 main.py \"$@\"\n",
        );
        fs::set_permissions(&run_sh, fs::Permissions::from_mode(0o755)).unwrap();
        symlink("main.py", c.join("latest.py")).unwrap();
        Self::commit_all(c, "Initial commit");

        // Commit 2: placeholders and examples inside ignored directories (force-added, as
        // upstream did).
        let forced: [(&str, &[u8]); 5] = [
            ("models/checkpoints/put_checkpoints_here", b""),
            (
                "custom_nodes/example_node.py.example",
                EXAMPLE_NODE.as_bytes(),
            ),
            (
                "custom_nodes/websocket_image_save.py",
                WEBSOCKET_IMAGE_SAVE.as_bytes(),
            ),
            (
                "input/example.png",
                b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR fixture",
            ),
            ("output/_output_images_will_be_put_here", b""),
        ];
        for (p, data) in forced {
            put(&c.join(p), data);
        }
        let mut add = vec!["add", "-f", "--"];
        add.extend(forced.iter().map(|(p, _)| *p));
        Self::git(c, &add);
        Self::git(
            c,
            &[
                "commit",
                "-q",
                "--no-verify",
                "-m",
                "Add model, input and output placeholders",
            ],
        );

        // Commit 3.
        Self::commit_file(c, "comfy/sd.py", SD_PY_V2);
    }

    fn build_custom_nodes(&self) {
        let cn = self.comfy.join("custom_nodes");

        let a = cn.join("ComfyUI-NodeA");
        Self::init_repo(&a, NODE_A_ORIGIN);
        put(&a.join(".gitignore"), "__pycache__/\nconfig.local.json\n");
        put(&a.join("__init__.py"), NODE_INIT_PY);
        put(&a.join("nodes.py"), NODE_A_NODES_V1);
        put(&a.join("requirements.txt"), "tinyfoo>=1.0\nTiny_Bar==2.1\n");
        Self::commit_all(&a, "NodeA: first version");
        Self::commit_file(&a, "nodes.py", NODE_A_NODES_V2);
        put(
            &a.join("config.local.json"),
            "{\"api_key\": \"local-only\"}\n",
        );
        put(
            &a.join("__pycache__/nodes.cpython-311.pyc"),
            pseudo_random(11, 613),
        );

        let b = cn.join("ComfyUI-NodeB");
        Self::init_repo(&b, NODE_B_ORIGIN);
        put(&b.join("__init__.py"), NODE_INIT_PY);
        put(
            &b.join("web/js/b.js"),
            "// NodeB frontend extension\nexport const name = \"NodeB\";\n",
        );
        Self::commit_all(&b, "NodeB");

        let plain = cn.join("PlainNode");
        put(&plain.join("__init__.py"), NODE_INIT_PY);
        put(&plain.join("data/x.json"), "{\"x\": 1}\n");

        let old = cn.join(".disabled/OldNode");
        Self::init_repo(&old, OLD_NODE_ORIGIN);
        put(&old.join("__init__.py"), NODE_INIT_PY);
        Self::commit_all(&old, "OldNode");

        put(&cn.join("__pycache__/junk.pyc"), pseudo_random(12, 211));
    }

    fn build_models(&self) {
        let m = self.comfy.join("models");
        put(
            &m.join("checkpoints/a.safetensors"),
            pseudo_random(1, (1 << 20) + 7),
        );
        let b = pseudo_random(2, 300 << 10);
        put(&m.join("loras/b.safetensors"), &b);
        put(&m.join("loras/b_copy.safetensors"), &b);
        put(&m.join("vae/sub/c.pt"), pseudo_random(3, 5 << 20));

        let s = &self.shared_models;
        put(
            &s.join("loras/extra.safetensors"),
            pseudo_random(4, 200 << 10),
        );
        put(
            &s.join("upscale_models/x4.pth"),
            pseudo_random(5, 100 << 10),
        );

        let yaml = format!(
            "comfyui:\n    base_path: {}\n    loras: loras/\n    upscale_models: |\n        upscale_models/\n",
            s.display()
        );
        put(&self.comfy.join("extra_model_paths.yaml"), yaml);
    }

    fn build_venv(&self) {
        let w = &self.wheels;
        Self::build_wheel(
            w,
            "tinyfoo",
            "1.0.0",
            &[("tinyfoo/__init__.py", "__version__ = \"1.0.0\"\n")],
        );
        Self::build_wheel(
            w,
            "Tiny_Bar",
            "2.1",
            &[("tiny_bar/__init__.py", "__version__ = \"2.1\"\n")],
        );
        let direct = Self::build_wheel(w, "directpkg", "0.3", &[("directpkg.py", "VALUE = 3\n")]);

        let mut cmd = python_cmd(python3());
        cmd.args(["-m", "venv", "--without-pip"]).arg(&self.venv);
        check(
            "python3 -m venv",
            &cmd.output().expect("run python3 -m venv"),
        );

        // One pip run: two index-like installs and one by wheel path (direct URL).
        self.pip_install(&["tinyfoo==1.0.0", "Tiny_Bar==2.1", direct.to_str().unwrap()]);
        let site = self.site_packages();
        let direct_url = site.join("directpkg-0.3.dist-info/direct_url.json");
        assert!(
            direct_url.is_file(),
            "pip wrote no {}",
            direct_url.display()
        );
    }

    /// `venv/lib/pythonX.Y/site-packages`.
    pub fn site_packages(&self) -> PathBuf {
        super::pyindex::site_packages(&self.venv)
    }
}

const COMFY_GITIGNORE: &str = "\
__pycache__/
*.py[cod]
/output/
/input/
!/input/example.png
/models/
/temp/
/custom_nodes/
!custom_nodes/example_node.py.example
extra_model_paths.yaml
/.vs
.vscode/
.idea/
venv/
.venv/
/web/extensions/*
!/web/extensions/logging.js.example
!/web/extensions/core/
/tests-ui/data/object_info.json
/user/
*.log
web_custom_versions/
.DS_Store
";

const MAIN_PY: &str = r#"import os
import sys

import folder_paths
import nodes


def main():
    print("ComfyUI fixture", folder_paths.base_path, len(nodes.NODE_CLASS_MAPPINGS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
"#;

const FOLDER_PATHS_PY: &str = r#"import os

base_path = os.path.dirname(os.path.realpath(__file__))
models_dir = os.path.join(base_path, "models")
folder_names_and_paths = {
    "checkpoints": ([os.path.join(models_dir, "checkpoints")], {".ckpt", ".safetensors"}),
    "loras": ([os.path.join(models_dir, "loras")], {".safetensors"}),
    "vae": ([os.path.join(models_dir, "vae")], {".pt", ".safetensors"}),
    "upscale_models": ([os.path.join(models_dir, "upscale_models")], {".pth"}),
    "custom_nodes": ([os.path.join(base_path, "custom_nodes")], set()),
}
output_directory = os.path.join(base_path, "output")
input_directory = os.path.join(base_path, "input")
user_directory = os.path.join(base_path, "user")
"#;

const NODES_PY: &str = r#"class CheckpointLoaderSimple:
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
}
"#;

const SD_PY_V1: &str = "def load_checkpoint(path):\n    raise NotImplementedError(path)\n";
const SD_PY_V2: &str =
    "def load_checkpoint(path, output_vae=True):\n    raise NotImplementedError((path, output_vae))\n";

const EXTRA_MODEL_PATHS_EXAMPLE: &str = r#"#Rename this to extra_model_paths.yaml and ComfyUI will load it

#config for a1111 ui
#all you have to do is change the base_path to where yours is installed
a111:
    base_path: path/to/stable-diffusion-webui/

    checkpoints: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    upscale_models: |
                  models/ESRGAN
                  models/RealESRGAN
"#;

const EXAMPLE_NODE: &str = r#"class Example:
    CATEGORY = "Example"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "test"

    def test(self, image):
        return (image,)


NODE_CLASS_MAPPINGS = {"Example": Example}
"#;

const WEBSOCKET_IMAGE_SAVE: &str = r#"class SaveImageWebsocket:
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "api node/image"


NODE_CLASS_MAPPINGS = {"SaveImageWebsocket": SaveImageWebsocket}
"#;

const NODE_INIT_PY: &str = "NODE_CLASS_MAPPINGS = {}\nNODE_DISPLAY_NAME_MAPPINGS = {}\n";
const NODE_A_NODES_V1: &str = "class NodeA:\n    FUNCTION = \"run\"\n";
const NODE_A_NODES_V2: &str =
    "import tinyfoo\n\n\nclass NodeA:\n    FUNCTION = \"run\"\n    CATEGORY = \"example\"\n";
