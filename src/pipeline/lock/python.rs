//! What a venv holds: the interpreter's version and wheel tags, and every installed
//! distribution, read from its `.dist-info` (and legacy `.egg-info`) metadata.

use crate::lockfile::{normalize_package_name, Package, Python};
use crate::pipeline::error::{Error, IoContext, Result};
use crate::python::Interpreter;
use crate::store::Sha256;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The venv `lock` uses: `--venv`, else `COMFY_DIR/venv` or `COMFY_DIR/.venv`, else
/// `$VIRTUAL_ENV`.
pub fn find_venv(comfy: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(v) = explicit {
        return Some(v.to_path_buf());
    }
    ["venv", ".venv"]
        .iter()
        .map(|n| comfy.join(n))
        .find(|p| p.join("pyvenv.cfg").is_file())
        .or_else(|| std::env::var_os("VIRTUAL_ENV").map(PathBuf::from))
}

fn interpreter(venv: &Path) -> Result<PathBuf> {
    ["bin/python3", "bin/python"]
        .iter()
        .map(|p| venv.join(p))
        .find(|p| p.exists())
        .ok_or_else(|| Error::bad_input(venv, "not a venv: no bin/python"))
}

/// The `site-packages` folders of a venv (`lib/pythonX.Y/site-packages`).
pub fn site_packages(venv: &Path) -> Result<Vec<PathBuf>> {
    let lib = venv.join("lib");
    let mut out = Vec::new();
    for e in fs::read_dir(&lib).ctx("list", &lib)? {
        let p = e.ctx("list", &lib)?.path().join("site-packages");
        if p.is_dir() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Inspect a venv: interpreter facts and packages (the `tree` is filled in by the caller).
pub fn inspect(venv: &Path) -> Result<(Python, Interpreter)> {
    let python = interpreter(venv)?;
    let probe = Interpreter::probe(&python).map_err(|e| {
        let cfg = fs::read_to_string(venv.join("pyvenv.cfg")).unwrap_or_default();
        let home = cfg
            .lines()
            .find_map(|l| {
                l.strip_prefix("home")
                    .map(|h| h.trim_start_matches([' ', '=']).trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        Error::bad_input(
            &python,
            format!("the venv's python does not run (its base interpreter under {home} may be missing): {e}"),
        )
    })?;
    let mut packages: BTreeMap<String, (Package, PathBuf)> = BTreeMap::new();
    for sp in site_packages(venv)? {
        for e in fs::read_dir(&sp).ctx("list", &sp)? {
            let path = e.ctx("list", &sp)?.path();
            let Some(pkg) = read_distribution(&path)? else {
                continue;
            };
            if let Some((_, other)) = packages.get(&pkg.name) {
                return Err(Error::bad_input(
                    &path,
                    format!(
                        "package {} is installed twice (also {}); repair the venv first",
                        pkg.name,
                        other.display()
                    ),
                ));
            }
            packages.insert(pkg.name.clone(), (pkg, path));
        }
    }
    let py = Python {
        packages: packages.into_values().map(|(p, _)| p).collect(),
        ..probe.section().into()
    };
    Ok((py, probe))
}

/// One `*.dist-info` or `*.egg-info` entry as a package; `None` for anything else.
fn read_distribution(path: &Path) -> Result<Option<Package>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let metadata = if name.ends_with(".dist-info") {
        path.join("METADATA")
    } else if name.ends_with(".egg-info") {
        if path.is_dir() {
            path.join("PKG-INFO")
        } else {
            path.to_path_buf()
        }
    } else {
        return Ok(None);
    };
    let text = match fs::read(&metadata) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("{}: no metadata; skipped", path.display());
            return Ok(None);
        }
        Err(e) => return Err(e).ctx("read", &metadata),
    };
    let header = |key: &str| {
        text.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    let (Some(dist), Some(version)) = (header("Name"), header("Version")) else {
        return Err(Error::bad_input(&metadata, "no Name or Version header"));
    };
    let mut pkg = Package {
        name: normalize_package_name(&dist),
        version,
        ..Default::default()
    };
    let direct = path.join("direct_url.json");
    if direct.is_file() {
        apply_direct_url(&mut pkg, &fs::read(&direct).ctx("read", &direct)?, &direct)?;
    }
    Ok(Some(pkg))
}

#[derive(Deserialize)]
struct DirectUrl {
    url: String,
    #[serde(default)]
    vcs_info: Option<VcsInfo>,
    #[serde(default)]
    archive_info: Option<ArchiveInfo>,
    #[serde(default)]
    dir_info: Option<DirInfo>,
    #[serde(default)]
    subdirectory: Option<String>,
}

#[derive(Deserialize)]
struct VcsInfo {
    vcs: String,
    commit_id: String,
}

#[derive(Deserialize)]
struct ArchiveInfo {
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    hashes: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct DirInfo {
    #[serde(default)]
    editable: bool,
}

/// Record how a package was installed from a URL (PEP 610 `direct_url.json`), as the PEP 508
/// reference that reinstalls exactly it.
fn apply_direct_url(pkg: &mut Package, bytes: &[u8], path: &Path) -> Result<()> {
    let d: DirectUrl = serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_input(path, format!("invalid direct_url.json: {e}")))?;
    let base = crate::secret::redact_url(&d.url);
    let mut url = match &d.vcs_info {
        Some(v) => format!("{}+{}@{}", v.vcs, base, v.commit_id),
        None => base,
    };
    if let Some(sub) = &d.subdirectory {
        url.push_str(&format!("#subdirectory={sub}"));
    }
    if let Some(a) = &d.archive_info {
        let sha = a
            .hashes
            .as_ref()
            .and_then(|h| h.get("sha256").cloned())
            .or_else(|| {
                a.hash
                    .as_ref()
                    .and_then(|h| h.strip_prefix("sha256=").map(String::from))
            });
        pkg.sha256 = sha.as_deref().and_then(Sha256::from_hex);
        if url.ends_with(".whl") {
            pkg.wheel = url.rsplit('/').next().map(String::from);
        }
    }
    pkg.editable = d.dir_info.is_some_and(|i| i.editable);
    pkg.url = Some(url);
    Ok(())
}
