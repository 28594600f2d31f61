//! Finding model files and where they can be downloaded from.
//!
//! Models live under `models/` (or `--models-dir`) and in the folders an
//! `extra_model_paths.yaml` names; each gets the path ComfyUI would see it under,
//! `models/<folder>/<file>`. Sources come from `--sources`, from the store's records and from
//! Hugging Face caches (whose blobs are named by SHA-256 and whose snapshots name repo and
//! revision).

use crate::pipeline::error::{Error, IoContext, Result};
use crate::store::Sha256;
use crate::store::CACHE_NAMES;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A model file found on disk.
#[derive(Clone, Debug)]
pub struct FoundModel {
    /// Path in the lock, relative to the ComfyUI root (`models/loras/x.safetensors`).
    pub path: String,
    /// Where it is now.
    pub abs: PathBuf,
}

/// What an `extra_model_paths.yaml` adds.
#[derive(Clone, Debug, Default)]
pub struct ExtraPaths {
    /// (ComfyUI folder name, directory), in file order.
    pub models: Vec<(String, PathBuf)>,
    /// Extra `custom_nodes` folders.
    pub custom_nodes: Vec<PathBuf>,
}

/// Keys of an extra-paths section that are settings, not model folders.
const SETTINGS: &[&str] = &["base_path", "is_default", "download_model_base"];

fn expand(s: &str, file: &Path) -> Result<PathBuf> {
    shellexpand::full(s)
        .map(|c| PathBuf::from(c.as_ref()))
        .map_err(|e| Error::bad_input(file, format!("cannot expand {s:?}: {e}")))
}

/// Read an `extra_model_paths.yaml` the way ComfyUI does (`utils/extra_config.py`): a relative
/// `base_path` is relative to the file's folder; folder values may list several paths, one per
/// line; `~` and `$VARS` are expanded.
pub fn read_extra_paths(yaml: &Path) -> Result<ExtraPaths> {
    let text = fs::read_to_string(yaml).ctx("read", yaml)?;
    let doc: Option<BTreeMap<String, Option<BTreeMap<String, serde_json::Value>>>> =
        serde_saphyr::from_str(&text)
            .map_err(|e| Error::bad_input(yaml, format!("invalid YAML: {e}")))?;
    // Sections and keys are read in name order, not file order: it only matters when two
    // sections name the same folder and hold the same file, and then the choice is at least
    // deterministic (and reported by `discover`).
    let yaml_dir = yaml
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut out = ExtraPaths::default();
    for (_section, conf) in doc.unwrap_or_default() {
        let Some(conf) = conf else { continue };
        let base = match conf.get("base_path").and_then(|v| v.as_str()) {
            Some(b) => {
                let b = expand(b, yaml)?;
                Some(if b.is_absolute() { b } else { yaml_dir.join(b) })
            }
            None => None,
        };
        for (key, value) in &conf {
            if SETTINGS.contains(&key.as_str()) {
                continue;
            }
            let Some(list) = value.as_str() else {
                return Err(Error::bad_input(
                    yaml,
                    format!("{key}: expected a path or a block of paths, got {value}"),
                ));
            };
            for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let p = expand(line, yaml)?;
                let full = match &base {
                    Some(b) => b.join(p),
                    None if p.is_absolute() => p,
                    None => yaml_dir.join(p),
                };
                if key == "custom_nodes" {
                    out.custom_nodes.push(full);
                } else {
                    out.models.push((key.clone(), full));
                }
            }
        }
    }
    Ok(out)
}

/// Files that are part of the models folder but not models (hidden files, caches, ComfyUI's
/// `put_*_here` placeholders): never locked, never reported as extra by `verify`.
pub fn skip_name(name: &str) -> bool {
    name.starts_with('.')
        || CACHE_NAMES.contains(&name)
        || (name.starts_with("put_") && name.ends_with("_here"))
}

/// Every model under `dir`, with lock paths `prefix/<relative path>`. Symlinks are followed
/// (model folders are often links to a volume or a Hugging Face cache).
fn walk_models(dir: &Path, prefix: &str, out: &mut Vec<FoundModel>) -> Result<()> {
    let mut walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry
            .map_err(|e| Error::io("walk", e.path().unwrap_or(dir).to_path_buf(), e.into()))?;
        let name = entry.file_name().to_string_lossy();
        if skip_name(&name) {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let rel = rel
            .to_str()
            .ok_or_else(|| Error::bad_input(entry.path(), "file name is not valid UTF-8"))?;
        out.push(FoundModel {
            path: format!("{prefix}/{rel}"),
            abs: entry.path().to_path_buf(),
        });
    }
    Ok(())
}

/// All models: the models folder first, then the extra paths. A path seen twice keeps its
/// first file, as ComfyUI would load it (and the duplicate is reported).
pub fn discover(
    models_dir: &Path,
    extra: &ExtraPaths,
    warnings: &mut Vec<String>,
) -> Result<Vec<FoundModel>> {
    let mut all = Vec::new();
    if models_dir.is_dir() {
        walk_models(models_dir, "models", &mut all)?;
    }
    for (folder, dir) in &extra.models {
        if !dir.is_dir() {
            warnings.push(format!(
                "extra_model_paths.yaml: {folder}: {} does not exist",
                dir.display()
            ));
            continue;
        }
        walk_models(dir, &format!("models/{folder}"), &mut all)?;
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(all.len());
    for m in all {
        if seen.insert(m.path.clone()) {
            out.push(m);
        } else {
            warnings.push(format!(
                "{}: also found at {}; the first one is locked",
                m.path,
                m.abs.display()
            ));
        }
    }
    Ok(out)
}

/// URLs given by the user: keys are lock paths or SHA-256 hex.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    by_path: HashMap<String, Vec<String>>,
    by_sha: HashMap<Sha256, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl SourceMap {
    /// Read a `--sources` file, JSON or YAML: `{ "<path or sha256>": "<url>" | ["<url>", …] }`.
    pub fn read(path: &Path) -> Result<SourceMap> {
        let text = fs::read_to_string(path).ctx("read", path)?;
        let map: BTreeMap<String, OneOrMany> = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text)
                .map_err(|e| Error::bad_input(path, format!("invalid JSON: {e}")))?
        } else {
            serde_saphyr::from_str(&text)
                .map_err(|e| Error::bad_input(path, format!("invalid YAML: {e}")))?
        };
        let mut out = SourceMap::default();
        for (key, urls) in map {
            let urls = match urls {
                OneOrMany::One(u) => vec![u],
                OneOrMany::Many(v) => v,
            };
            for u in &urls {
                if !u.contains("://") {
                    return Err(Error::bad_input(path, format!("{key}: {u:?} is not a URL")));
                }
            }
            match Sha256::from_hex(&key.to_ascii_lowercase()) {
                Some(sha) => out.by_sha.entry(sha).or_default().extend(urls),
                None => out.by_path.entry(key).or_default().extend(urls),
            }
        }
        Ok(out)
    }

    /// URLs for a model, path entries first.
    pub fn lookup(&self, path: &str, sha: &Sha256) -> Vec<String> {
        let mut v = self.by_path.get(path).cloned().unwrap_or_default();
        v.extend(self.by_sha.get(sha).cloned().unwrap_or_default());
        v
    }
}

/// Hugging Face hub caches worth looking in: `$HF_HUB_CACHE`, `$HF_HOME/hub`,
/// `~/.cache/huggingface/hub`, RunPod's cached-models folder, plus any given.
pub fn default_hf_caches() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        v.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        v.push(PathBuf::from(p).join("hub"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".cache/huggingface/hub"));
    }
    v.push(PathBuf::from("/runpod-volume/huggingface-cache/hub"));
    v
}

/// The hub folder a file in a Hugging Face cache belongs to: `<hub>/models--org--name/blobs/x`.
pub fn hub_of(file: &Path) -> Option<PathBuf> {
    let real = file.canonicalize().ok()?;
    let repo_dir = real.ancestors().find(|a| {
        a.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("models--") || n.starts_with("datasets--"))
    })?;
    repo_dir.parent().map(Path::to_path_buf)
}

/// SHA-256 → pinned download URL for every LFS file in the given hub caches. Blobs of LFS files
/// are named by their SHA-256; snapshot entries link to them and give repo, revision and path.
pub fn scan_hf_caches(hubs: &[PathBuf]) -> HashMap<Sha256, String> {
    let mut out = HashMap::new();
    let mut seen = HashSet::new();
    for hub in hubs {
        let Ok(canon) = hub.canonicalize() else {
            continue;
        };
        if !seen.insert(canon.clone()) {
            continue;
        }
        let Ok(repos) = fs::read_dir(&canon) else {
            continue;
        };
        for repo in repos.flatten() {
            let dir_name = repo.file_name().to_string_lossy().into_owned();
            let (kind, rest) = if let Some(r) = dir_name.strip_prefix("models--") {
                ("", r)
            } else if let Some(r) = dir_name.strip_prefix("datasets--") {
                ("datasets/", r)
            } else {
                continue;
            };
            let repo_id = rest.replacen("--", "/", 1);
            let snapshots = repo.path().join("snapshots");
            let Ok(revs) = fs::read_dir(&snapshots) else {
                continue;
            };
            for rev in revs.flatten() {
                let rev_name = rev.file_name().to_string_lossy().into_owned();
                for e in walkdir::WalkDir::new(rev.path())
                    .min_depth(1)
                    .into_iter()
                    .flatten()
                {
                    if !e.path_is_symlink() {
                        continue;
                    }
                    let Ok(target) = fs::read_link(e.path()) else {
                        continue;
                    };
                    let blob = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let (Some(sha), Ok(rel)) =
                        (Sha256::from_hex(blob), e.path().strip_prefix(rev.path()))
                    else {
                        continue;
                    };
                    let url = format!(
                        "https://huggingface.co/{kind}{repo_id}/resolve/{rev_name}/{}",
                        rel.to_string_lossy()
                    );
                    // Deterministic when several snapshots hold the same blob: smallest URL.
                    out.entry(sha)
                        .and_modify(|u: &mut String| {
                            if url < *u {
                                *u = url.clone()
                            }
                        })
                        .or_insert(url);
                }
            }
        }
    }
    out
}
