//! `pin`: a `requirements.txt` to an exact set of wheels (version, file, URL, sha256) for one
//! interpreter and platform, with every wheel in the store.
//!
//! Resolution is uv's (`uv pip compile --format pylock.toml`) or pip's (`pip install --dry-run
//! --report`); comfystore never resolves on its own. Only wheels are pinned
//! (`--only-binary :all:`): an environment is installed with no network and no compiler.

use super::interpreter::{self, Interpreter};
use super::spec::{EnvSpec, Package};
use super::{tool, wheel};
use crate::error::{Error, IoContext, Result};
use crate::http::{Download, Expect, Fetcher, HttpOptions};
use crate::ident::normalize_package_name;
use crate::process::Process;
use crate::store::{Sha256, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Schema line of a pins file (`pin -o FILE`).
pub const PINS_SCHEMA: &str = "comfystore.pins/1";

/// Which resolver to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Resolver {
    /// uv if it is on PATH, else pip.
    #[default]
    Auto,
    Uv,
    Pip,
}

impl Resolver {
    /// The resolver `Auto` stands for here.
    pub fn pick(self) -> Resolver {
        match self {
            Resolver::Auto if uv_available() => Resolver::Uv,
            Resolver::Auto => Resolver::Pip,
            r => r,
        }
    }
}

/// Whether `uv` runs.
pub fn uv_available() -> bool {
    tool::succeeds("uv", &["--version"])
}

/// What to pin for, and where wheels may come from.
#[derive(Clone, Debug, Default)]
pub struct PinOptions {
    /// Interpreter to pin for: a path, a program or a version (`3.11`). Default `python3`.
    pub python: Option<String>,
    /// Wheel platform tag to pin for instead of the interpreter's (e.g. `manylinux_2_28_x86_64`).
    pub platform: Option<String>,
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    /// Folders of local wheels.
    pub wheels_dirs: Vec<PathBuf>,
    /// Explicit wheels (a CUDA build of torch, say) that win over any index.
    pub wheel_urls: Vec<String>,
    /// Resolve from `wheels_dirs` and the store's wheels alone.
    pub offline: bool,
    pub resolver: Resolver,
    pub http: HttpOptions,
}

/// The result of `pin`: the lock's `python` section (no tree).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    pub schema: String,
    pub python: EnvSpec,
}

impl Pins {
    /// Read a pins file, strictly.
    pub fn read(path: &Path) -> Result<Pins> {
        let bytes = fs::read(path).ctx("read", path)?;
        let p: Pins = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_input(path, format!("invalid pins file: {e}")))?;
        if p.schema != PINS_SCHEMA {
            return Err(Error::bad_input(
                path,
                format!("schema {:?} is not {PINS_SCHEMA:?}", p.schema),
            ));
        }
        Ok(p)
    }

    /// Canonical bytes: pretty JSON and a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// What `pin` did, besides the pins.
#[derive(Clone, Debug, Serialize)]
pub struct PinReport {
    pub pins: Pins,
    pub resolver: Resolver,
    /// Wheels that were downloaded into the store now.
    pub downloaded: usize,
    /// Wheels that were already in the store.
    pub cached: usize,
}

/// A wheel the resolver chose.
#[derive(Clone, Debug)]
struct Resolved {
    name: String,
    version: String,
    file: String,
    /// `https://…`, or a local file (find-links, `--wheel-url` downloads).
    location: Location,
    sha256: Option<Sha256>,
}

#[derive(Clone, Debug)]
enum Location {
    Url(String),
    Path(PathBuf),
}

/// Resolve `requirements` and put every pinned wheel into the store.
pub fn pin(store: &Store, requirements: &Path, opts: &PinOptions) -> Result<PinReport> {
    if !requirements.is_file() {
        return Err(Error::bad_input(requirements, "no such requirements file"));
    }
    let requirements = requirements.canonicalize().ctx("open", requirements)?;
    let target = Target::new(store, opts)?;
    let _writer = store.lock_shared()?;
    let work = tempfile::Builder::new()
        .prefix(crate::store::TEMP_PREFIX)
        .tempdir_in(store.tmp_dir())
        .ctx("create a temp folder in", &store.tmp_dir())?;
    let house = work.path().join("wheels");
    fs::create_dir_all(&house).ctx("create", &house)?;
    if opts.offline {
        link_store_wheels(store, &house)?;
    }

    // Explicit wheels: into the store first, then offered to the resolver as pinned files.
    let mut explicit: BTreeMap<String, (String, Sha256)> = BTreeMap::new();
    let mut extra_reqs = String::new();
    if !opts.wheel_urls.is_empty() {
        let fetcher = Fetcher::new(HttpOptions {
            offline: opts.offline,
            ..opts.http.clone()
        })?;
        let items: Vec<Download> = opts
            .wheel_urls
            .iter()
            .map(|u| Download {
                label: u.clone(),
                sources: vec![u.clone()],
                expect: Expect {
                    sha256: sha256_fragment(u),
                    ..Default::default()
                },
            })
            .collect();
        for (item, r) in items.iter().zip(fetcher.download_all(store, &items)) {
            let d = r?;
            let file = wheel::file_name_of_url(&item.label).ok_or_else(|| {
                Error::bad_input(&item.label, "not a wheel URL (…/NAME-VERSION-…-TAG.whl)")
            })?;
            let w = wheel::WheelName::parse(&file)
                .ok_or_else(|| Error::bad_input(&item.label, "not a wheel file name"))?;
            link_object(store, &d.id, &house.join(&file))?;
            extra_reqs.push_str(&format!("{}=={}\n", w.name, w.version));
            let sha = Sha256::from_hex(&d.sha256)
                .ok_or_else(|| Error::bad_input(&item.label, "download gave no sha256"))?;
            explicit.insert(normalize_package_name(&w.name), (item.label.clone(), sha));
        }
    }
    let reqs = work.path().join("requirements.txt");
    let body = format!("-r {}\n{extra_reqs}", requirements.display());
    fs::write(&reqs, body).ctx("write", &reqs)?;
    let mut find_links: Vec<PathBuf> = opts
        .wheels_dirs
        .iter()
        .map(|d| d.canonicalize().ctx("open wheels folder", d))
        .collect::<Result<_>>()?;
    find_links.push(house.clone());

    let resolver = opts.resolver.pick();
    let resolved = match resolver {
        Resolver::Uv => resolve_uv(&reqs, &target, &find_links, opts, work.path())?,
        _ => resolve_pip(&reqs, &target, &find_links, opts, work.path())?,
    };

    // Every wheel into the store: local files are copied in, remote ones downloaded (in
    // parallel), each checked against the sha256 the index published.
    let mut downloads = Vec::new();
    let mut packages = Vec::new();
    let mut cached = 0;
    for r in &resolved {
        let name = normalize_package_name(&r.name);
        let mut pkg = Package {
            name: name.clone(),
            version: r.version.clone(),
            wheel: Some(r.file.clone()),
            ..Default::default()
        };
        if let Some((url, sha)) = explicit.get(&name) {
            if wheel::file_name_of_url(url).as_deref() == Some(r.file.as_str()) {
                pkg.url = Some(url.clone());
                pkg.sha256 = Some(*sha);
                cached += 1;
                packages.push(pkg);
                continue;
            }
        }
        match &r.location {
            Location::Path(p) => {
                let put = store.put_file(p, false, true)?;
                let sha = put
                    .digests
                    .sha256
                    .ok_or_else(|| Error::bad_input(p, "no sha256 computed for a wheel"))?;
                if let Some(want) = r.sha256.filter(|w| *w != sha) {
                    return Err(Error::Mismatch {
                        what: p.display().to_string(),
                        expected: want.to_string(),
                        actual: sha.to_string(),
                    });
                }
                store.record_object(&put)?;
                // A wheel the store got from an index keeps its URL even when pinned offline.
                pkg.url = store
                    .sources_of(&put.digests.b3)?
                    .into_iter()
                    .find(|u| !u.starts_with("file:"));
                if pkg.url.is_none() {
                    store.add_source(&put.digests.b3, &file_url(p))?;
                }
                pkg.sha256 = Some(sha);
                cached += 1;
            }
            Location::Url(url) => {
                pkg.url = Some(url.clone());
                pkg.sha256 = r.sha256;
                let have = match r.sha256 {
                    Some(sha) => store
                        .lookup_sha256(&sha)?
                        .is_some_and(|b3| store.has_object(&b3)),
                    None => false,
                };
                if have {
                    cached += 1;
                } else {
                    downloads.push((
                        packages.len(),
                        Download {
                            label: r.file.clone(),
                            sources: vec![url.clone()],
                            expect: Expect {
                                sha256: r.sha256,
                                ..Default::default()
                            },
                        },
                    ));
                }
            }
        }
        packages.push(pkg);
    }
    let downloaded = downloads.len();
    if !downloads.is_empty() {
        let fetcher = Fetcher::new(opts.http.clone())?;
        let items: Vec<Download> = downloads.iter().map(|(_, d)| d.clone()).collect();
        for ((i, item), r) in downloads.iter().zip(fetcher.download_all(store, &items)) {
            let d = r.map_err(|e| Error::Download {
                what: item.label.clone(),
                reason: e.to_string(),
            })?;
            packages[*i].sha256 = Sha256::from_hex(&d.sha256);
        }
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    let mut python = target.section;
    python.packages = packages;
    Ok(PinReport {
        pins: Pins {
            schema: PINS_SCHEMA.into(),
            python,
        },
        resolver,
        downloaded,
        cached,
    })
}

/// The interpreter and platform pinned for.
struct Target {
    /// The lock's `python` section without packages.
    section: EnvSpec,
    /// The interpreter itself, when it is on this machine.
    interpreter: Option<Interpreter>,
    /// Whether the target differs from the interpreter that runs pip (`--platform`).
    cross: bool,
}

impl Target {
    fn new(store: &Store, opts: &PinOptions) -> Result<Target> {
        let found = interpreter::find(store, opts.python.as_deref());
        let (mut section, interpreter) = match (found, &opts.python) {
            (Ok(i), _) => (i.section(), Some(i)),
            // Pinning for a platform this machine does not run needs no interpreter.
            (Err(_), Some(v))
                if opts.platform.is_some() && v.chars().all(|c| c.is_ascii_digit() || c == '.') =>
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
        let cross = opts
            .platform
            .as_ref()
            .is_some_and(|p| section.platform.as_deref() != Some(p.as_str()));
        if let Some(p) = &opts.platform {
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

fn index_args(cmd: &mut Process, opts: &PinOptions, find_links: &[PathBuf]) {
    if opts.offline {
        cmd.arg("--no-index");
    } else {
        if let Some(u) = &opts.index_url {
            cmd.args(["--index-url", u]);
        }
        for u in &opts.extra_index_urls {
            cmd.args(["--extra-index-url", u]);
        }
    }
    for d in find_links {
        cmd.arg("--find-links").arg(d);
    }
}

/// `uv pip compile --format pylock.toml`: per package, the wheels that fit the target; the best
/// one is chosen by tag.
fn resolve_uv(
    reqs: &Path,
    target: &Target,
    find_links: &[PathBuf],
    opts: &PinOptions,
    work: &Path,
) -> Result<Vec<Resolved>> {
    let out = work.join("pylock.toml");
    let mut cmd = tool::command("uv", FOREIGN_CONFIG);
    cmd.args(["pip", "compile", "--quiet", "--no-header", "--no-config"])
        .args(["--format", "pylock.toml", "--only-binary", ":all:"])
        .args(["--python-version", &target.minor()])
        .args(["--python-platform", &wheel::uv_platform(&target.tags())?]);
    if opts.offline {
        cmd.arg("--offline");
    }
    index_args(&mut cmd, opts, find_links);
    cmd.arg("-o").arg(&out).arg(reqs);
    run(cmd, "uv pip compile")?;
    let text = fs::read_to_string(&out).ctx("read", &out)?;
    let lock: PyLock = toml::from_str(&text)
        .map_err(|e| Error::bad_input(&out, format!("unexpected pylock.toml from uv: {e}")))?;
    let tags = target.tags();
    let mut resolved = Vec::new();
    for p in lock.packages {
        let mut best: Option<(wheel::Score, Resolved)> = None;
        for w in &p.wheels {
            let (file, location) = match (&w.url, &w.path) {
                (Some(u), _) => location_of(u, &out)?,
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
        match best {
            Some((_, r)) => resolved.push(r),
            None => {
                return Err(Error::python(
                    "uv pip compile",
                    format!(
                        "{} {} has no wheel for {} {}; build one (`pip wheel {}=={} -w DIR`) and pass --wheels-dir DIR",
                        p.name, p.version,
                        target.section.abi.as_deref().unwrap_or(""),
                        target.section.platform.as_deref().unwrap_or(""),
                        p.name, p.version
                    ),
                ))
            }
        }
    }
    Ok(resolved)
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
fn resolve_pip(
    reqs: &Path,
    target: &Target,
    find_links: &[PathBuf],
    opts: &PinOptions,
    work: &Path,
) -> Result<Vec<Resolved>> {
    let report = work.join("report.json");
    let python = match &target.interpreter {
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
    .arg(&report);
    if target.cross || target.interpreter.is_none() {
        let s = &target.section;
        cmd.args(["--platform", s.platform.as_deref().unwrap_or("any")])
            .args(["--python-version", &target.minor()])
            .args(["--implementation", "cp"])
            .args(["--abi", s.abi.as_deref().unwrap_or("none")])
            .arg("--target")
            .arg(work.join("unused-target"));
    }
    index_args(&mut cmd, opts, find_links);
    cmd.arg("-r").arg(reqs);
    run(cmd, "pip install --dry-run")?;
    let bytes = fs::read(&report).ctx("read", &report)?;
    let r: PipReport = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_input(&report, format!("unexpected pip report: {e}")))?;
    let mut out = Vec::new();
    for i in r.install {
        let url = i.download_info.url;
        let (file, location) = location_of(&url, &report)?;
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
        out.push(Resolved {
            name: i.metadata.name,
            version: i.metadata.version,
            file,
            location,
            sha256,
        });
    }
    Ok(out)
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

/// The `#sha256=…` fragment indexes put on file links.
fn sha256_fragment(url: &str) -> Option<Sha256> {
    url.split_once("#sha256=")
        .and_then(|(_, h)| Sha256::from_hex(h.split('&').next().unwrap_or(h)))
}

fn file_url(p: &Path) -> String {
    url::Url::from_file_path(p)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| format!("file://{}", p.display()))
}

/// Place a store object in a wheel folder under its wheel file name (a symlink: the folder
/// is read once by the resolver or installer and then deleted).
pub(crate) fn link_object(store: &Store, id: &crate::store::ObjectId, at: &Path) -> Result<()> {
    let src = store
        .find_object(id, false)
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    match std::os::unix::fs::symlink(&src, at) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).ctx("link", at),
    }
}

/// Offer every wheel the store holds (by the file names its sources record) in `dir`.
pub(crate) fn link_store_wheels(store: &Store, dir: &Path) -> Result<usize> {
    let mut n = 0;
    for (id, url) in store.all_sources()? {
        let Some(file) = wheel::file_name_of_url(&url) else {
            continue;
        };
        if wheel::WheelName::parse(&file).is_none() || !store.has_object(&id) {
            continue;
        }
        link_object(store, &id, &dir.join(&file))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments() {
        let h = "a".repeat(64);
        assert!(sha256_fragment(&format!("https://x/y.whl#sha256={h}")).is_some());
        assert!(sha256_fragment("https://x/y.whl").is_none());
    }
}
