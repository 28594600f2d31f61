//! What a resolver answers: the wheels uv (`uv pip compile --format pylock.toml`) or pip (`pip
//! install --dry-run --report`) chooses for requirements on a target interpreter and platform.
//! comfystore never resolves on its own.

use super::interpreter::{self, Interpreter};
use super::spec::EnvSpec;
use super::{tool, wheel};
use crate::process::Process;
use crate::python::error::{Error, IoContext, Result};
use crate::store::{Sha256, Store};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// A wheel the resolver chose.
#[derive(Clone, Debug)]
pub(super) struct Resolved {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) file: String,
    /// `https://…`, or a local file (find-links, `--wheel-url` downloads).
    pub(super) location: Location,
    pub(super) sha256: Option<Sha256>,
}

#[derive(Clone, Debug)]
pub(super) enum Location {
    Url(String),
    Path(PathBuf),
}

/// The interpreter and platform pinned for.
pub(super) struct Target {
    /// The lock's `python` section without packages.
    pub(super) section: EnvSpec,
    /// The interpreter itself, when it is on this machine.
    interpreter: Option<Interpreter>,
    /// Whether the target differs from the interpreter that runs pip (`--platform`).
    cross: bool,
}

impl Target {
    /// The interpreter `python` names (default `python3`), pinned for `platform` if given.
    pub(super) fn new(
        store: &Store,
        python: Option<&String>,
        platform: Option<&String>,
    ) -> Result<Target> {
        let found = interpreter::find(store, python.map(String::as_str));
        let (mut section, interpreter) = match (found, python) {
            (Ok(i), _) => (i.section(), Some(i)),
            // Pinning for a platform this machine does not run needs no interpreter.
            (Err(_), Some(v))
                if platform.is_some() && v.chars().all(|c| c.is_ascii_digit() || c == '.') =>
            {
                let minor = interpreter::minor_of(v);
                (
                    EnvSpec {
                        version: Some(v.clone()),
                        implementation: Some("cpython".into()),
                        abi: Some(format!("cp{}", minor.replace('.', ""))),
                        ..Default::default()
                    },
                    None,
                )
            }
            (Err(e), _) => return Err(e),
        };
        let cross = platform.is_some_and(|p| section.platform.as_deref() != Some(p.as_str()));
        if let Some(p) = platform {
            section.platform = Some(p.clone());
            if cross {
                section.libc = None;
            }
        }
        Ok(Target {
            section,
            interpreter,
            cross,
        })
    }

    fn minor(&self) -> String {
        interpreter::minor_of(self.section.version.as_deref().unwrap_or("3"))
    }

    fn tags(&self) -> wheel::Tags {
        wheel::Tags::new(
            &self.section.abi.clone().unwrap_or_default(),
            self.section.platform.as_deref().unwrap_or("any"),
            self.section.libc.as_deref(),
        )
    }
}

/// One resolution: the requirements, for what, and where wheels may come from.
pub(super) struct Request<'a> {
    /// The requirements file.
    pub(super) reqs: &'a Path,
    pub(super) target: &'a Target,
    /// Folders of local wheels.
    pub(super) find_links: &'a [PathBuf],
    pub(super) index_url: Option<&'a str>,
    pub(super) extra_index_urls: &'a [String],
    /// Resolve from `find_links` alone.
    pub(super) offline: bool,
    /// Each requirement alone, without its dependencies.
    pub(super) no_deps: bool,
    /// A scratch folder for the resolver's output.
    pub(super) work: &'a Path,
}

/// Environment variables that would make uv or pip read configuration other than ours.
const FOREIGN_CONFIG: &[&str] = &["PIP_REQUIRE_VIRTUALENV", "PIP_TARGET", "PIP_PREFIX"];

/// Run a resolver; a failure shows the last 25 lines it printed.
fn run(mut cmd: Process, what: &str) -> Result<()> {
    let out = tool::output(&mut cmd, what)?;
    if !out.status.success() {
        let err: Vec<&str> = out
            .stderr_lines
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        return Err(Error::python(
            what,
            format!(
                "resolution failed:\n  {}",
                err[err.len().saturating_sub(25)..].join("\n  ")
            ),
        ));
    }
    Ok(())
}

/// Where the resolver may look: the index (unless offline) and the local wheel folders;
/// and whether it follows dependencies.
fn index_args(cmd: &mut Process, r: &Request) {
    if r.no_deps {
        cmd.arg("--no-deps");
    }
    if r.offline {
        cmd.arg("--no-index");
    } else {
        if let Some(u) = r.index_url {
            cmd.args(["--index-url", u]);
        }
        for u in r.extra_index_urls {
            cmd.args(["--extra-index-url", u]);
        }
    }
    for d in r.find_links {
        cmd.arg("--find-links").arg(d);
    }
}

/// `uv pip compile --format pylock.toml`: per package, the wheels that fit the target; the best
/// one is chosen by tag.
pub(super) fn resolve_uv(r: &Request) -> Result<Vec<Resolved>> {
    let out = r.work.join("pylock.toml");
    run(uv_compile(r, &out)?, "uv pip compile")?;
    let text = fs::read_to_string(&out).ctx("read", &out)?;
    let lock: PyLock = toml::from_str(&text)
        .map_err(|e| Error::bad_input(&out, format!("unexpected pylock.toml from uv: {e}")))?;
    let tags = r.target.tags();
    let mut resolved = Vec::new();
    for p in lock.packages {
        match best_wheel(&p, &tags, &out, r.work)? {
            Some(w) => resolved.push(w),
            None => {
                let s = &r.target.section;
                return Err(Error::python(
                    "uv pip compile",
                    format!(
                        "{} {} has no wheel for {} {}; build one (`pip wheel {}=={} -w DIR`) and pass --wheels-dir DIR",
                        p.name, p.version,
                        s.abi.as_deref().unwrap_or(""),
                        s.platform.as_deref().unwrap_or(""),
                        p.name, p.version
                    ),
                ));
            }
        }
    }
    Ok(resolved)
}

/// The `uv pip compile` command that writes `out`.
fn uv_compile(r: &Request, out: &Path) -> Result<Process> {
    let mut cmd = tool::command("uv", FOREIGN_CONFIG);
    cmd.args(["pip", "compile", "--quiet", "--no-header", "--no-config"])
        .args(["--format", "pylock.toml", "--only-binary", ":all:"])
        .args(["--python-version", &r.target.minor()])
        .args(["--python-platform", &wheel::uv_platform(&r.target.tags())?]);
    if r.offline {
        cmd.arg("--offline");
    }
    index_args(&mut cmd, r);
    cmd.arg("-o").arg(out).arg(r.reqs);
    Ok(cmd)
}

/// The wheel of `p` that scores best for `tags`, if any fits.
fn best_wheel(
    p: &PyLockPackage,
    tags: &wheel::Tags,
    out: &Path,
    work: &Path,
) -> Result<Option<Resolved>> {
    let mut best: Option<(wheel::Score, Resolved)> = None;
    for w in &p.wheels {
        let (file, location) = match (&w.url, &w.path) {
            (Some(u), _) => location_of(u, out)?,
            (None, Some(path)) => {
                let path = out.parent().unwrap_or(work).join(path);
                (file_name(&path), Location::Path(path))
            }
            _ => continue,
        };
        let Some(score) = wheel::WheelName::parse(&file).and_then(|n| tags.score(&n)) else {
            continue;
        };
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((
                score,
                Resolved {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    file,
                    location,
                    sha256: w.hashes.get("sha256").and_then(|h| Sha256::from_hex(h)),
                },
            ));
        }
    }
    Ok(best.map(|(_, r)| r))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The parts of PEP 751's `pylock.toml` that pinning reads.
#[derive(Deserialize)]
struct PyLock {
    #[serde(default)]
    packages: Vec<PyLockPackage>,
}

#[derive(Deserialize)]
struct PyLockPackage {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    wheels: Vec<PyLockWheel>,
}

#[derive(Deserialize)]
struct PyLockWheel {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

/// `pip install --dry-run --report`: exactly the wheel pip would install, with its URL and
/// hash. Run by the target interpreter, or with `--platform …` for another platform.
pub(super) fn resolve_pip(r: &Request) -> Result<Vec<Resolved>> {
    let report = r.work.join("report.json");
    run(pip_dry_run(r, &report), "pip install --dry-run")?;
    let bytes = fs::read(&report).ctx("read", &report)?;
    let answer: PipReport = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_input(&report, format!("unexpected pip report: {e}")))?;
    answer
        .install
        .into_iter()
        .map(|i| pip_wheel(i, &report))
        .collect()
}

/// The `pip install --dry-run` command that writes `report`.
fn pip_dry_run(r: &Request, report: &Path) -> Process {
    let python = match &r.target.interpreter {
        Some(i) => i.executable.clone(),
        None => PathBuf::from("python3"),
    };
    let mut cmd = tool::command(&python, FOREIGN_CONFIG);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
    ])
    .args([
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
    ])
    .arg("--report")
    .arg(report);
    if r.target.cross || r.target.interpreter.is_none() {
        let s = &r.target.section;
        cmd.args(["--platform", s.platform.as_deref().unwrap_or("any")])
            .args(["--python-version", &r.target.minor()])
            .args(["--implementation", "cp"])
            .args(["--abi", s.abi.as_deref().unwrap_or("none")])
            .arg("--target")
            .arg(r.work.join("unused-target"));
    }
    index_args(&mut cmd, r);
    cmd.arg("-r").arg(r.reqs);
    cmd
}

/// One package of pip's report, which must be a wheel.
fn pip_wheel(i: PipInstall, report: &Path) -> Result<Resolved> {
    let url = i.download_info.url;
    let (file, location) = location_of(&url, report)?;
    if !file.ends_with(".whl") {
        return Err(Error::python(
            "pip install --dry-run",
            format!(
                "{} {} resolved to {file}, not a wheel",
                i.metadata.name, i.metadata.version
            ),
        ));
    }
    let sha256 = i.download_info.archive_info.and_then(|a| {
        a.hashes
            .and_then(|h| h.get("sha256").cloned())
            .or_else(|| {
                a.hash
                    .and_then(|h| h.strip_prefix("sha256=").map(String::from))
            })
            .and_then(|h| Sha256::from_hex(&h))
    });
    Ok(Resolved {
        name: i.metadata.name,
        version: i.metadata.version,
        file,
        location,
        sha256,
    })
}

#[derive(Deserialize)]
struct PipReport {
    #[serde(default)]
    install: Vec<PipInstall>,
}

#[derive(Deserialize)]
struct PipInstall {
    download_info: PipDownloadInfo,
    metadata: PipMetadata,
}

#[derive(Deserialize)]
struct PipDownloadInfo {
    url: String,
    #[serde(default)]
    archive_info: Option<PipArchiveInfo>,
}

#[derive(Deserialize)]
struct PipArchiveInfo {
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    hashes: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct PipMetadata {
    name: String,
    version: String,
}

/// Where a resolver's URL points: a local file (find-links, explicit wheels) or the network.
fn location_of(url: &str, what: &Path) -> Result<(String, Location)> {
    if url.starts_with("file:") {
        let path = url::Url::parse(url)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| Error::bad_input(what, format!("bad file URL {url}")))?;
        Ok((file_name(&path), Location::Path(path)))
    } else {
        Ok((
            wheel::file_name_of_url(url).unwrap_or_default(),
            Location::Url(url.to_string()),
        ))
    }
}
