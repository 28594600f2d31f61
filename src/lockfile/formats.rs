//! What the format readers share: the formats, parsing JSON or YAML, `pip freeze` lines, a
//! model held by sha256 (or the warning saying why not), and Hugging Face's pinned URLs.

use super::{normalize_package_name, redact_url, Lockfile, Model, Package};
use crate::lockfile::error::{Error, Result};
use crate::store::Sha256;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// A format `import-snapshot` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ComfyUI-Manager's snapshot, JSON or YAML (`snapshot.rs`).
    ManagerSnapshot,
    /// A comfy-pack `.cpack.zip` (`cpack.rs`).
    CpackZip,
    /// A comfy-pack `snapshot.json` on its own (`cpack.rs`).
    CpackSnapshot,
    /// comfy-cli's `comfy.lock.yaml` (`comfy_cli.rs`).
    ComfyCliLock,
    /// comfy-cli's build definition, `distribution-definition/0` (`comfy_build.rs`).
    ComfyBuild,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::ManagerSnapshot => "ComfyUI-Manager snapshot",
            Format::CpackZip => "comfy-pack package (.cpack.zip)",
            Format::CpackSnapshot => "comfy-pack snapshot.json",
            Format::ComfyCliLock => "comfy-cli lock (comfy.lock.yaml)",
            Format::ComfyBuild => "comfy-cli build definition (distribution-definition/0)",
        })
    }
}

/// What an import gives: the lock, and a warning for every item it could not hold.
#[derive(Debug)]
pub struct Imported {
    pub format: Format,
    pub lock: Lockfile,
    pub warnings: Vec<String>,
    /// Sources named by a tag or branch, not a commit: not in the lock (each has its warning
    /// in `warnings`); `pipeline::import::resolve_refs` asks their remotes for the commit.
    pub refs: Vec<GitRef>,
}

/// A git source the file names by a tag or branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRef {
    /// The custom node's name; `None` for ComfyUI.
    pub node: Option<String>,
    /// The remote (already checked as a lock's repo would be).
    pub repo: String,
    /// The tag or branch (letters, digits, `. _ - + /`).
    pub reference: String,
    /// Its warning in [`Imported::warnings`], removed once resolved.
    pub warning: String,
}

/// A tag or branch name safe to hand to `git ls-remote`.
/// `null` read as the empty collection: the other tools write `"pips": null` and the like.
pub(super) fn null_as_empty<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(super) fn is_plain_ref(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && !r.starts_with(['-', '/'])
        && !r.contains("..")
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+/".contains(&b))
}

/// Parse text as JSON (when it opens with `{`) or YAML, into `T`; errors name `path` and
/// `what` the file was taken to be.
pub(super) fn parse_text<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
    what: Format,
) -> Result<T> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| Error::bad_input(path, format!("{what}: {e}")))
    } else {
        serde_saphyr::from_str(text).map_err(|e| Error::bad_input(path, format!("{what}: {e}")))
    }
}

/// Packages from `pip freeze` text (requirements.txt, `pipDependencies`): `name==version` and
/// `name @ url` lines; anything else (options, editables, ranges) is named in a warning.
/// `what` names the source in warnings.
pub(super) fn freeze_packages(text: &str, what: &str, warnings: &mut Vec<String>) -> Vec<Package> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (spec, marker) = match line.split_once(';') {
            Some((s, m)) => (s.trim(), Some(m.trim())),
            None => (line, None),
        };
        let pkg = if let Some((name, version)) = spec.split_once("==") {
            let (name, version) = (name.trim(), version.trim());
            valid_name(name)
                .filter(|_| !version.is_empty() && !version.contains([' ', ',', '<', '>', '=']))
                .map(|name| Package {
                    name,
                    version: version.to_string(),
                    ..Default::default()
                })
        } else if let Some((name, url)) = spec.split_once(" @ ") {
            valid_name(name.trim())
                .filter(|_| super::check_url(url.trim()).is_ok())
                .map(|name| Package {
                    name,
                    url: Some(redact_url(url.trim())),
                    ..Default::default()
                })
        } else {
            None
        };
        match pkg {
            Some(p) => {
                if let Some(m) = marker {
                    warnings.push(format!(
                        "{what}: {}: environment marker {m:?} dropped (a lock is for one platform)",
                        p.name
                    ));
                }
                if seen.insert(p.name.clone()) {
                    out.push(p);
                } else {
                    warnings.push(format!(
                        "{what}: {} listed twice; the first is kept",
                        p.name
                    ));
                }
            }
            None => warnings.push(format!(
                "{what}: {line:?} is not `name==version` or `name @ url`; not imported"
            )),
        }
    }
    out
}

/// A distribution name as the lock holds it (PEP 503), if `name` is one.
fn valid_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| normalize_package_name(name))
}

/// A model as an imported lock holds it: by path, size, sha256 and sources, its blake3 left
/// for `fetch --update-lock`. What the lock cannot hold (no sha256 or size, an unsafe path, a
/// path already taken) is named in a warning instead.
pub(super) fn push_model(
    lock: &mut Lockfile,
    path: &str,
    size: Option<u64>,
    sha256: Option<&str>,
    sources: Vec<String>,
    warnings: &mut Vec<String>,
) {
    let from = if sources.is_empty() {
        "no download source".to_string()
    } else {
        format!("source {}", sources.join(", "))
    };
    let sha = sha256.and_then(sha256_hex);
    let why = if let Err(e) = crate::store::check_rel_path(path) {
        Some(format!("not a safe path in the ComfyUI folder ({e})"))
    } else if sha.is_none() {
        Some("sha256 unknown".to_string())
    } else if lock.models.iter().any(|m| m.path == path) {
        Some("listed twice; the first entry is kept".to_string())
    } else {
        None
    };
    let (Some(sha), None) = (sha.as_deref().and_then(Sha256::from_hex), &why) else {
        let sha = sha.map_or_else(String::new, |s| format!("sha256 {s}, "));
        warnings.push(format!(
            "model {path:?}: {} ({sha}{from}); not imported",
            why.unwrap_or_default()
        ));
        return;
    };
    if sources.is_empty() {
        warnings.push(format!(
            "model {path:?}: no download source; `fetch` finds it only in the store or a mirror"
        ));
    }
    lock.models.push(Model {
        path: path.to_string(),
        size,
        sha256: sha,
        blake3: None,
        sources,
    });
}

/// A lowercase 64-hex sha256, if `s` is one (any case accepted).
pub(super) fn sha256_hex(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// The `https://huggingface.co/<repo>/resolve/<commit>/<path>` URL of a file pinned to a
/// commit of a Hugging Face repo; `None` unless `commit` is a commit id and the parts are sane.
pub fn huggingface_url(repo: &str, commit: &str, path: &str) -> Option<String> {
    let parts_ok = |s: &str| {
        !s.is_empty()
            && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            && !s.chars().any(|c| c.is_control() || c == '?' || c == '#')
    };
    if !super::is_commit(commit) || !parts_ok(repo) || !parts_ok(path) {
        return None;
    }
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let enc = |s: &str| {
        s.split('/')
            .map(|c| percent_encoding::utf8_percent_encode(c, SEGMENT).to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    Some(format!(
        "https://huggingface.co/{}/resolve/{commit}/{}",
        enc(repo),
        enc(path)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_lines() {
        let mut w = Vec::new();
        let p = freeze_packages(
            "# header\nTorch==2.1.0+cu121\nfoo @ https://x.invalid/foo-1-py3-none-any.whl\n-e git+https://g/x\nbar>=1\nnumpy==1.26.4 ; python_version<'3.12'\n",
            "requirements.txt",
            &mut w,
        );
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["torch", "foo", "numpy"]);
        assert_eq!(w.len(), 3, "{w:?}");
    }

    #[test]
    fn hf_url() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            huggingface_url("org/repo", c, "sub/a b.safetensors").as_deref(),
            Some(
                "https://huggingface.co/org/repo/resolve/0123456789abcdef0123456789abcdef01234567/sub/a%20b.safetensors"
            )
        );
        assert_eq!(huggingface_url("org/repo", "main", "a"), None);
        assert_eq!(huggingface_url("org/../x", c, "a"), None);
    }
}
