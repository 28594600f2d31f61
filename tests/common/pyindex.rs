//! A local Python package index for the `pin` / `materialize` / `init` tests: tiny pure-Python
//! wheels built by the tests themselves, served as a PEP 503 "simple" index by a real HTTP
//! server on 127.0.0.1, plus clean ways to run `python3`, `pip` and `uv`.
//!
//! The wheels (see [`WHEELS`]) are built once per test process, deterministically (fixed zip
//! timestamps and modes), into `$CARGO_TARGET_TMPDIR/pyindex-wheels-<hash of their spec>/`
//! and reused by later runs. Each test serves them with its own [`IndexServer`], routes on the
//! tests' one HTTP server ([`TestServer`]):
//!
//! ```text
//! /simple/                 <a href="tinyfoo/">tinyfoo</a> ...            text/html
//! /simple/<name>/          <a href="../../files/X.whl#sha256=HEX">X.whl</a>   text/html
//! /files/X.whl             the wheel's bytes (or other bytes, see IndexServer::serve_bytes)
//! ```
#![allow(dead_code)]

use super::http::{Behavior, TestServer, OCTET_STREAM};
use super::wheel::{self, squash_separators, WheelSpec};
use super::{check, sha256_hex};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// What `tinycli` prints (its console script `tinycli = tinycli:main`).
pub const TINYCLI_OUTPUT: &str = "tinycli says hello";

const TINYCLI_INIT: &str = "import sys\n\n\ndef main():\n    print(\"tinycli says hello\")\n    return 0\n\n\nif __name__ == \"__main__\":\n    sys.exit(main())\n";

/// The wheels of the index: `tinyfoo` 1.0 and 2.0 (so pinning has a version to pick),
/// `tinycli` (a console script), `tinydep` (needs `tinyfoo>=1.0`), and a stand-in `requests`
/// (what `init` adds to ComfyUI's requirements). `tinyghost` is never built.
pub const WHEELS: &[WheelSpec<'static>] = &[
    WheelSpec::plain("tinyfoo", "1.0", &[("tinyfoo/__init__.py", "__version__ = \"1.0\"\n")]),
    WheelSpec::plain("tinyfoo", "2.0", &[("tinyfoo/__init__.py", "__version__ = \"2.0\"\n")]),
    WheelSpec {
        name: "tinycli",
        version: "0.3",
        requires: &[],
        scripts: &["tinycli = tinycli:main"],
        files: &[("tinycli/__init__.py", TINYCLI_INIT)],
    },
    WheelSpec {
        name: "tinydep",
        version: "0.5",
        requires: &["tinyfoo>=1.0"],
        scripts: &[],
        files: &[(
            "tinydep/__init__.py",
            "import tinyfoo\n\nFOO_VERSION = tinyfoo.__version__\n",
        )],
    },
    WheelSpec::plain(
        "requests",
        "2.32.3",
        &[(
            "requests/__init__.py",
            "# a stand-in for the real requests, for comfystore's tests\n__version__ = \"2.32.3\"\n",
        )],
    ),
];

/// A valid wheel with the same file name as `tinyfoo-2.0-py3-none-any.whl` but other bytes
/// (for serving bytes that do not match the index's `#sha256=`).
pub const TAMPERED: WheelSpec<'static> = WheelSpec::plain(
    "tinyfoo",
    "2.0",
    &[("tinyfoo/__init__.py", "__version__ = \"2.0\"  # tampered\n")],
);

/// One built wheel.
#[derive(Clone, Debug)]
pub struct Wheel {
    /// PEP 503 normalised project name.
    pub name: String,
    pub version: String,
    /// `tinyfoo-2.0-py3-none-any.whl`
    pub file: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Bare hex.
    pub sha256: String,
}

/// The wheels, built once per process.
pub struct WheelSet {
    /// Holds exactly the wheels of [`WHEELS`].
    pub dir: PathBuf,
    pub wheels: Vec<Wheel>,
    /// [`TAMPERED`], built in another folder.
    pub tampered: Wheel,
}

impl WheelSet {
    /// The wheel of `name` (normalised) and `version`.
    pub fn get(&self, name: &str, version: &str) -> &Wheel {
        self.wheels
            .iter()
            .find(|w| w.name == name && w.version == version)
            .unwrap_or_else(|| panic!("no wheel {name} {version} in the fixture set"))
    }

    /// Copy every wheel into `dir` (created); returns `dir`.
    pub fn copy_to(&self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        for w in &self.wheels {
            fs::write(dir.join(&w.file), &w.bytes).unwrap();
        }
        dir.to_path_buf()
    }
}

/// PEP 503 normalisation: lowercase, runs of `-_.` become `-`.
pub fn normalize(name: &str) -> String {
    squash_separators(name, "-").to_ascii_lowercase()
}

fn load(path: &Path, spec: &WheelSpec) -> Wheel {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Wheel {
        name: normalize(spec.name),
        version: spec.version.to_string(),
        file: spec.file_name(),
        path: path.to_path_buf(),
        sha256: sha256_hex(&bytes),
        bytes,
    }
}

/// Build (or reuse) the fixture wheels.
pub fn wheel_set() -> &'static WheelSet {
    static SET: OnceLock<WheelSet> = OnceLock::new();
    SET.get_or_init(|| {
        let all: Vec<&WheelSpec> = WHEELS.iter().chain([&TAMPERED]).collect();
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&base).unwrap();
        let final_dir = base.join(format!("pyindex-wheels-{}", wheel::fingerprint(&all)));
        if !final_dir.join(".complete").is_file() {
            let tmp = tempfile::Builder::new()
                .prefix(".pyindex-build-")
                .tempdir_in(&base)
                .unwrap();
            let main = tmp.path().join("wheels");
            let alt = tmp.path().join("tampered");
            fs::create_dir_all(&main).unwrap();
            fs::create_dir_all(&alt).unwrap();
            let mut specs: Vec<(&WheelSpec, &Path)> = WHEELS.iter().map(|s| (s, &*main)).collect();
            specs.push((&TAMPERED, &alt));
            wheel::build(&specs);
            fs::write(tmp.path().join(".complete"), b"").unwrap();
            // Another process may have won the race: then its (identical) folder is used.
            if fs::rename(tmp.path(), &final_dir).is_ok() {
                let _ = tmp.keep();
            }
        }
        let main = final_dir.join("wheels");
        let wheels = WHEELS
            .iter()
            .map(|s| load(&main.join(s.file_name()), s))
            .collect();
        let tampered = load(
            &final_dir.join("tampered").join(TAMPERED.file_name()),
            &TAMPERED,
        );
        WheelSet {
            dir: main,
            wheels,
            tampered,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Running python, pip and uv without the machine's configuration.

/// Prefixes of the variables that configure Python, pip, uv, virtualenvs or git: removed from
/// every child process of these tests (this machine sets PIP_FIND_LINKS,
/// PYTHONDONTWRITEBYTECODE, ...).
pub const SCRUB_PREFIXES: &[&str] = &[
    "PYTHON",
    "PIP_",
    "UV_",
    "VIRTUAL_ENV",
    "CONDA_",
    "__PYVENV_LAUNCHER__",
    "GIT_",
    "COMFYSTORE_",
];

/// Names of the inherited variables starting with one of [`SCRUB_PREFIXES`].
pub fn scrubbed_vars() -> Vec<String> {
    std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .filter(|k| SCRUB_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect()
}

/// A command running `exe` with none of [`SCRUB_PREFIXES`] inherited, no pip or uv
/// configuration file, no proxies, and stdin closed. Byte-code writing is left at Python's
/// default (on); set PYTHONDONTWRITEBYTECODE on the command to turn it off.
pub fn python_cmd(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    for k in scrubbed_vars() {
        cmd.env_remove(k);
    }
    for k in super::NETWORK_ENV {
        cmd.env_remove(k);
    }
    cmd.env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

/// The real interpreter behind `python3` on PATH.
pub fn python3() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = python_cmd(Path::new("python3"))
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("run python3");
        let exe = check("python3 -c 'print(sys.executable)'", &out);
        assert!(!exe.is_empty(), "python3 reports no sys.executable");
        PathBuf::from(exe)
    })
}

/// What a lock's / pins file's `python` section says about `python3`.
#[derive(Debug, Clone)]
pub struct PyInfo {
    /// `platform.python_version()`, e.g. 3.11.7
    pub version: String,
    /// `sys.implementation.name`, e.g. cpython
    pub implementation: String,
    /// `X.Y`
    pub short: String,
}

pub fn python_info() -> &'static PyInfo {
    static INFO: OnceLock<PyInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        let out = python_cmd(python3())
            .args([
                "-c",
                "import platform, sys; print(platform.python_version()); \
                 print(sys.implementation.name); print('%d.%d' % sys.version_info[:2])",
            ])
            .output()
            .unwrap();
        let text = check("python3 info", &out);
        let mut l = text.lines();
        PyInfo {
            version: l.next().unwrap().to_string(),
            implementation: l.next().unwrap().to_string(),
            short: l.next().unwrap().to_string(),
        }
    })
}

/// `python3 -m pip ARGS...`, clean.
pub fn pip(args: &[&str]) -> Output {
    python_cmd(python3())
        .args(["-m", "pip"])
        .args(args)
        .output()
        .expect("run python3 -m pip")
}

/// Whether `uv --version` runs (uv is optional on test machines).
pub fn uv_available() -> bool {
    static UV: OnceLock<bool> = OnceLock::new();
    *UV.get_or_init(|| {
        python_cmd(Path::new("uv"))
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// `uv ARGS...`, clean, with its cache in `cache`.
pub fn uv(args: &[&str], cache: &Path) -> Output {
    python_cmd(Path::new("uv"))
        .env("UV_CACHE_DIR", cache)
        .args(args)
        .output()
        .expect("run uv")
}

/// `<venv>/lib/pythonX.Y/site-packages` (exactly one must exist).
pub fn site_packages(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("read {}: {e}", lib.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("python"))
        })
        .map(|p| p.join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one site-packages under {}: {found:?}",
        lib.display()
    );
    found.pop().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The index server.

/// How the index serves pages and files: whole bodies, without `Accept-Ranges`, so pip and uv
/// fetch every wheel in one GET (uv would otherwise read wheel metadata through Range requests)
/// and the tests' request counts stay simple.
const WHOLE: Behavior = Behavior::IgnoreRange {
    drop_first_after: None,
};

/// A [`TestServer`] whose routes are a PEP 503 index (see the module docs); everything else of
/// the server (`url`, `requests`, `requests_for`, `add`...) through `Deref`.
pub struct IndexServer(TestServer);

impl Deref for IndexServer {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.0
    }
}

impl IndexServer {
    /// A server with a PEP 503 index of `wheels` (see the module docs).
    pub fn with_index(wheels: &[Wheel]) -> IndexServer {
        let srv = IndexServer(TestServer::start());
        let mut projects: BTreeMap<&str, Vec<&Wheel>> = BTreeMap::new();
        for w in wheels {
            projects.entry(&w.name).or_default().push(w);
            srv.serve_bytes(w, w.bytes.clone());
        }
        let mut root = String::from(
            "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"><title>Simple index</title></head><body>\n",
        );
        for (name, ws) in &projects {
            root.push_str(&format!("<a href=\"{name}/\">{name}</a><br/>\n"));
            let mut page = format!(
                "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"><title>Links for {name}</title></head><body>\n<h1>Links for {name}</h1>\n"
            );
            for w in ws {
                page.push_str(&format!(
                    "<a href=\"../../files/{f}#sha256={h}\">{f}</a><br/>\n",
                    f = w.file,
                    h = w.sha256
                ));
            }
            page.push_str("</body></html>\n");
            srv.page(&format!("/simple/{name}/"), page);
        }
        root.push_str("</body></html>\n");
        srv.page("/simple/", root);
        srv
    }

    /// A server with the index of every fixture wheel.
    pub fn fixture() -> IndexServer {
        IndexServer::with_index(&wheel_set().wheels)
    }

    /// An index page: `text/html`, the only type (besides PEP 691's JSON) pip reads pages of.
    fn page(&self, path: &str, html: String) {
        self.add_typed(path, html.into_bytes(), WHOLE, "text/html");
    }

    /// Serve `bytes` as the file of `wheel`, while the index keeps announcing the wheel's real
    /// sha256.
    pub fn serve_bytes(&self, wheel: &Wheel, bytes: Vec<u8>) {
        self.add_typed(
            &format!("/files/{}", wheel.file),
            bytes,
            WHOLE,
            OCTET_STREAM,
        );
    }

    /// The index URL: `http://127.0.0.1:{port}/simple/`
    pub fn index_url(&self) -> String {
        self.url("/simple/")
    }

    /// The URL the index gives `wheel` (without the fragment).
    pub fn file_url(&self, wheel: &Wheel) -> String {
        self.url(&format!("/files/{}", wheel.file))
    }
}
