//! Base interpreters: what a Python reports about itself (the facts wheels are selected by),
//! and finding one on this machine that fits a lock.
//!
//! A stored environment is only usable with a base interpreter of the same implementation,
//! minor version, ABI and platform. Its path may differ between machines (pyenv on a laptop,
//! `/usr/bin/python3.11` in a RunPod image), so it is looked up at materialize time, never
//! taken from the lock.

use super::spec::EnvSpec;
use super::tool;
use crate::process::Process;
use crate::python::error::{Error, Result};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Probe results, in the store: starting an interpreter (through a pyenv shim, say) costs
/// 50–150 ms, more than linking a whole environment, so a program whose file has not changed
/// is not started again. Keyed by path and stat; deleting the file only costs time.
const PROBE_CACHE: &str = "cache/interpreters.json";

/// Asks an interpreter for what wheels are selected by. `-I -S`: no site, no user code.
const PROBE: &str = r#"
import json, platform, sys, sysconfig
impl = sys.implementation.name
short = {"cpython": "cp", "pypy": "pp"}.get(impl, impl)
abi = "%s%d%d" % (short, sys.version_info[0], sys.version_info[1])
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    abi += "t"
lib, ver = platform.libc_ver()
print(json.dumps({
    "version": platform.python_version(),
    "implementation": impl,
    "abi": abi,
    "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
    "libc": ("%s %s" % (lib, ver)) if lib else None,
    "base_executable": getattr(sys, "_base_executable", None) or sys.executable,
}))
"#;

/// A Python interpreter and the facts that decide which wheels it can use.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interpreter {
    /// e.g. `3.11.7`.
    pub version: String,
    /// `cpython`, `pypy`, …
    pub implementation: String,
    /// e.g. `cp311`.
    pub abi: String,
    /// e.g. `linux_x86_64`.
    pub platform: String,
    /// e.g. `glibc 2.36`.
    pub libc: Option<String>,
    /// The real interpreter binary (not a venv's link, not a pyenv shim): what a venv's
    /// `bin/python` must point at.
    #[serde(rename = "base_executable")]
    pub executable: PathBuf,
}

impl Interpreter {
    /// Run `python` and read its facts. Fails with the interpreter's own stderr.
    pub fn probe(python: &Path) -> Result<Interpreter> {
        let out = tool::output(
            Process::new(python).args(["-I", "-S", "-c", PROBE]),
            &python.display().to_string(),
        )?;
        let not_python = |why: String| {
            Error::python(
                python.display().to_string(),
                format!("is not a working Python interpreter ({why})"),
            )
        };
        if !out.status.success() {
            return Err(not_python(if out.stderr.is_empty() {
                format!("it exited with {}", out.status)
            } else {
                out.stderr
            }));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| not_python(format!("unexpected answer to the probe: {e}")))
    }

    /// `3.11` of `3.11.7`.
    pub fn minor(&self) -> String {
        minor_of(&self.version)
    }

    /// The lock's `python` section for this interpreter (no packages, no tree).
    pub fn section(&self) -> EnvSpec {
        EnvSpec {
            version: Some(self.version.clone()),
            implementation: Some(self.implementation.clone()),
            abi: Some(self.abi.clone()),
            platform: Some(self.platform.clone()),
            libc: self.libc.clone(),
            tree: None,
            built_with: None,
            packages: Vec::new(),
        }
    }

    /// Whether an environment made for `py` works on this interpreter: same implementation,
    /// minor version, ABI and platform (patch releases of one minor version are compatible).
    pub fn fits(&self, py: &EnvSpec) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        same(&py.implementation, &self.implementation)
            && py
                .version
                .as_deref()
                .is_none_or(|v| minor_of(v) == self.minor())
            && same(&py.abi, &self.abi)
            && same(&py.platform, &self.platform)
    }
}

/// `3.11` of `3.11.7` (and of `3.11`).
pub fn minor_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// What a lock's environment needs, for messages: `cpython 3.11 (cp311, linux_x86_64)`.
pub fn describe(py: &EnvSpec) -> String {
    format!(
        "{} {} ({}, {})",
        py.implementation.as_deref().unwrap_or("python"),
        py.version.as_deref().map(minor_of).unwrap_or_default(),
        py.abi.as_deref().unwrap_or("any ABI"),
        py.platform.as_deref().unwrap_or("any platform"),
    )
}

/// Whether `spec` names a version (`3.11`, `3.11.7`) rather than a program.
fn is_version(spec: &str) -> bool {
    !spec.is_empty() && spec.chars().all(|c| c.is_ascii_digit() || c == '.')
}

fn uv_python_find(version: &str) -> Option<PathBuf> {
    let out = Process::new("uv")
        .args(["python", "find", "--no-project", version])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then(|| PathBuf::from(s))
}

/// A program as the shell would run it: a path, or the first match on PATH.
fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// What identifies a program file's version on this machine.
fn signature(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}:{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

#[derive(Default, Serialize, Deserialize)]
struct ProbeCache {
    #[serde(default)]
    programs: BTreeMap<PathBuf, (String, Interpreter)>,
}

/// [`Interpreter::probe`], answered from the store's cache when neither the program nor the
/// interpreter it found has changed.
pub fn probe_cached(store: &Store, program: &Path) -> Result<Interpreter> {
    let Some(path) = which(program) else {
        return Err(Error::python(
            program.display().to_string(),
            "not found on PATH",
        ));
    };
    let sig = signature(&path);
    let file = store.root().join(PROBE_CACHE);
    let mut cache: ProbeCache = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let (Some(sig), Some((had, i))) = (&sig, cache.programs.get(&path)) {
        if had == sig && i.executable.is_file() {
            return Ok(i.clone());
        }
    }
    let i = Interpreter::probe(&path)?;
    if let Some(sig) = sig {
        cache.programs.insert(path, (sig, i.clone()));
        if let (Some(dir), Ok(bytes)) = (file.parent(), serde_json::to_vec_pretty(&cache)) {
            // Best effort: a lost race or a read-only store only costs a probe next time.
            let _ = std::fs::create_dir_all(dir)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    crate::store::write_file_atomic(&file, &bytes, 0o644).map_err(|e| e.to_string())
                });
        }
    }
    Ok(i)
}

/// The interpreter `spec` names: a path or program (`/usr/bin/python3.11`, `python3`), or a
/// version (`3.11`: `python3.11` on PATH, else one uv manages). Without a spec, `python3`.
pub fn find(store: &Store, spec: Option<&str>) -> Result<Interpreter> {
    let spec = spec.unwrap_or("python3");
    if !is_version(spec) {
        return probe_cached(store, Path::new(spec));
    }
    let mut errors = Vec::new();
    let program = PathBuf::from(format!("python{}", minor_of(spec)));
    let tries = [Some(program), None];
    for c in tries {
        // uv is asked only when pythonX.Y is not on PATH.
        let Some(c) = c.or_else(|| uv_python_find(spec)) else {
            continue;
        };
        match probe_cached(store, &c) {
            Ok(i) if version_matches(spec, &i.version) => return Ok(i),
            Ok(i) => errors.push(format!("{} is {}", c.display(), i.version)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(Error::python(
        spec,
        format!("no such interpreter ({})", errors.join("; ")),
    ))
}

/// `3.11` matches `3.11.7`; `3.11.7` only itself.
fn version_matches(spec: &str, version: &str) -> bool {
    version == spec || version.starts_with(&format!("{spec}."))
}

/// A base interpreter on this machine that fits the lock's environment: `spec` if given (it
/// must fit), else `pythonX.Y` on PATH, an interpreter uv manages, or `python3`.
pub fn find_for(store: &Store, py: &EnvSpec, spec: Option<&str>) -> Result<Interpreter> {
    let need = describe(py);
    if let Some(spec) = spec {
        let i = find(store, Some(spec))?;
        if !i.fits(py) {
            return Err(Error::python(
                spec,
                format!(
                    "is {} {} ({}, {}), the environment needs {need}",
                    i.implementation, i.version, i.abi, i.platform
                ),
            ));
        }
        return Ok(i);
    }
    let mut tried = Vec::new();
    let minor = py.version.as_deref().map(minor_of);
    let mut specs: Vec<String> = minor.iter().cloned().collect();
    specs.push("python3".into());
    for s in specs {
        match find(store, Some(&s)) {
            Ok(i) if i.fits(py) => return Ok(i),
            Ok(i) => tried.push(format!("{s} is {} {}", i.implementation, i.version)),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(Error::python(
        "interpreter",
        format!(
            "the environment needs {need}, and none was found ({}); install it (e.g. `uv python install {}`) or pass --python",
            tried.join("; "),
            minor.unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(minor_of("3.11.7"), "3.11");
        assert!(version_matches("3.11", "3.11.7"));
        assert!(!version_matches("3.1", "3.11.7"));
        assert!(is_version("3.11") && !is_version("python3"));
    }
}
