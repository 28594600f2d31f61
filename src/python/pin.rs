//! `pin`: a `requirements.txt` to an exact set of wheels (version, file, URL, sha256) for one
//! interpreter and platform, with every wheel in the store.
//!
//! Resolution is uv's (`uv pip compile --format pylock.toml`) or pip's (`pip install --dry-run
//! --report`); comfystore never resolves on its own. Only wheels are pinned
//! (`--only-binary :all:`): an environment is installed with no network and no compiler.

use super::resolve::{resolve_pip, resolve_uv, Location, Request, Resolved, Target};
use super::spec::{EnvSpec, Package};
use super::{tool, wheel};
use crate::http::{Download, Expect, Fetcher, HttpOptions};
use crate::ident::normalize_package_name;
use crate::python::error::{Error, IoContext, Result};
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
    /// Find each requirement's wheel without resolving dependencies: the requirements are
    /// already a complete set (an installed environment's `name==version` lines), which
    /// may not satisfy a resolver (real environments often carry conflicts).
    pub no_deps: bool,
    /// Record URL and sha256 of a wheel the index publishes a sha256 for, without
    /// downloading it (`lock`: torch is GBs); the rest are still downloaded to hash them.
    pub record_only: bool,
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

/// Resolve `requirements` and put every pinned wheel into the store.
pub fn pin(store: &Store, requirements: &Path, opts: &PinOptions) -> Result<PinReport> {
    if !requirements.is_file() {
        return Err(Error::bad_input(requirements, "no such requirements file"));
    }
    let requirements = requirements.canonicalize().ctx("open", requirements)?;
    let target = Target::new(store, opts.python.as_ref(), opts.platform.as_ref())?;
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
    let explicit = store_explicit_wheels(store, opts, &house)?;
    let reqs = write_requirements(work.path(), &requirements, &explicit)?;
    let mut find_links: Vec<PathBuf> = opts
        .wheels_dirs
        .iter()
        .map(|d| d.canonicalize().ctx("open wheels folder", d))
        .collect::<Result<_>>()?;
    find_links.push(house.clone());
    let request = Request {
        reqs: &reqs,
        target: &target,
        find_links: &find_links,
        index_url: opts.index_url.as_deref(),
        extra_index_urls: &opts.extra_index_urls,
        offline: opts.offline,
        no_deps: opts.no_deps,
        work: work.path(),
    };
    let resolver = opts.resolver.pick();
    let resolved = match resolver {
        Resolver::Uv => resolve_uv(&request)?,
        _ => resolve_pip(&request)?,
    };
    let mut stored = store_resolved(store, &resolved, &explicit, opts.record_only)?;
    let downloaded = stored.downloads.len();
    download_wheels(store, opts, &mut stored)?;
    let mut packages = stored.packages;
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
        cached: stored.cached,
    })
}

/// The `--wheel-url` wheels, once in the store.
#[derive(Default)]
struct ExplicitWheels {
    /// (URL, sha256) by package name.
    by_name: BTreeMap<String, (String, Sha256)>,
    /// `name==version` lines, in the order given: what makes the resolver take them.
    requirements: String,
}

/// Explicit wheels: into the store first, then offered to the resolver in `house` as pinned
/// files.
fn store_explicit_wheels(store: &Store, opts: &PinOptions, house: &Path) -> Result<ExplicitWheels> {
    let mut explicit = ExplicitWheels::default();
    if opts.wheel_urls.is_empty() {
        return Ok(explicit);
    }
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
        explicit
            .requirements
            .push_str(&format!("{}=={}\n", w.name, w.version));
        let sha = Sha256::from_hex(&d.sha256)
            .ok_or_else(|| Error::bad_input(&item.label, "download gave no sha256"))?;
        explicit
            .by_name
            .insert(normalize_package_name(&w.name), (item.label.clone(), sha));
    }
    Ok(explicit)
}

/// The resolver's requirements file: the user's, plus the explicit wheels' pins.
fn write_requirements(
    work: &Path,
    requirements: &Path,
    explicit: &ExplicitWheels,
) -> Result<PathBuf> {
    let reqs = work.join("requirements.txt");
    let body = format!("-r {}\n{}", requirements.display(), explicit.requirements);
    fs::write(&reqs, body).ctx("write", &reqs)?;
    Ok(reqs)
}

/// The pinned packages, with the downloads still to make for them.
#[derive(Default)]
struct Stored {
    packages: Vec<Package>,
    /// (index into `packages`, what to download).
    downloads: Vec<(usize, Download)>,
    /// Wheels the store already had (or got from a local file).
    cached: usize,
}

/// Every resolved wheel into the store: local files are copied in (checked against the
/// sha256 the resolver reported), remote ones the store lacks are listed for download
/// (with `record_only`, only those the index gave no sha256 for).
fn store_resolved(
    store: &Store,
    resolved: &[Resolved],
    explicit: &ExplicitWheels,
    record_only: bool,
) -> Result<Stored> {
    let mut out = Stored::default();
    for r in resolved {
        let name = normalize_package_name(&r.name);
        let mut pkg = Package {
            name: name.clone(),
            version: r.version.clone(),
            wheel: Some(r.file.clone()),
            ..Default::default()
        };
        let given = explicit
            .by_name
            .get(&name)
            .filter(|(url, _)| wheel::file_name_of_url(url).as_deref() == Some(r.file.as_str()));
        if let Some((url, sha)) = given {
            pkg.url = Some(url.clone());
            pkg.sha256 = Some(*sha);
            out.cached += 1;
        } else {
            match &r.location {
                Location::Path(p) => {
                    store_local_wheel(store, p, r.sha256, &mut pkg)?;
                    out.cached += 1;
                }
                Location::Url(url) => {
                    // An index's credential is the environment's, never the lock's.
                    pkg.url = Some(crate::secret::redact_url(url));
                    pkg.sha256 = r.sha256;
                    if (record_only && r.sha256.is_some()) || have_wheel(store, r.sha256)? {
                        out.cached += 1;
                    } else {
                        out.downloads
                            .push((out.packages.len(), wheel_download(r, url)));
                    }
                }
            }
        }
        out.packages.push(pkg);
    }
    Ok(out)
}

/// A local wheel (find-links, the store's own) into the store; `pkg` gets its sha256 and URL.
fn store_local_wheel(
    store: &Store,
    p: &Path,
    expected: Option<Sha256>,
    pkg: &mut Package,
) -> Result<()> {
    let put = store.put_file(p, false, true)?;
    let sha = put
        .digests
        .sha256
        .ok_or_else(|| Error::bad_input(p, "no sha256 computed for a wheel"))?;
    if let Some(want) = expected.filter(|w| *w != sha) {
        return Err(crate::store::Error::Mismatch {
            what: p.display().to_string(),
            expected: want.to_string(),
            actual: sha.to_string(),
        }
        .into());
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
    Ok(())
}

/// Whether the store holds the wheel with this sha256.
fn have_wheel(store: &Store, sha: Option<Sha256>) -> Result<bool> {
    Ok(match sha {
        Some(sha) => store
            .lookup_sha256(&sha)?
            .is_some_and(|b3| store.has_object(&b3)),
        None => false,
    })
}

fn wheel_download(r: &Resolved, url: &str) -> Download {
    Download {
        label: r.file.clone(),
        sources: vec![url.to_string()],
        expect: Expect {
            sha256: r.sha256,
            ..Default::default()
        },
    }
}

/// The listed downloads, in parallel, each checked against the sha256 the index published.
fn download_wheels(store: &Store, opts: &PinOptions, stored: &mut Stored) -> Result<()> {
    if stored.downloads.is_empty() {
        return Ok(());
    }
    let fetcher = Fetcher::new(opts.http.clone())?;
    let items: Vec<Download> = stored.downloads.iter().map(|(_, d)| d.clone()).collect();
    for ((i, item), r) in stored
        .downloads
        .iter()
        .zip(fetcher.download_all(store, &items))
    {
        let d = r.map_err(|e| crate::http::Error::Download {
            what: item.label.clone(),
            reason: e.to_string(),
        })?;
        stored.packages[*i].sha256 = Sha256::from_hex(&d.sha256);
    }
    Ok(())
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
    // Checked: an installer must not read a changed wheel.
    let src = store.checked_object(id, false)?;
    symlink_object(&src, at)
}

/// A symlink at `at` to the object file `src` (one there already is kept).
pub(crate) fn symlink_object(src: &Path, at: &Path) -> Result<()> {
    match std::os::unix::fs::symlink(src, at) {
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
