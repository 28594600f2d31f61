//! The lockfile format (`comfystore.lock/1`): types, validation and canonical bytes.
//!
//! A lockfile is the unit users commit, diff and ship, so its bytes depend only on what it pins:
//! fields in a fixed order, arrays sorted, no timestamps, two-space indentation and a trailing
//! newline. Reading is strict: unknown fields, other schema versions and unsafe paths are refused
//! before any command acts on a lock. `docs/lockfile.md` is the specification; keep it in step.

pub mod error;

pub use error::{Error, Result};
pub mod comfy_build;
pub mod comfy_cli;
pub mod cpack;
pub mod detect;
pub mod diff;
mod formats;
mod layout;
mod portable;
pub use portable::registry_gap;
pub mod snapshot;

pub use crate::ident::{is_commit, normalize_package_name};
pub use crate::secret::redact_url;
pub use layout::{comfyui_excludes, Part, COMFY_DATA_DIRS, DISABLED_DIR};

use crate::secret::{has_credentials, scheme_of};
use crate::store::{check_rel_path, ObjectId, Sha256};
use error::IoContext;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// The schema line this version reads and writes.
pub const SCHEMA: &str = "comfystore.lock/1";

fn is_false(b: &bool) -> bool {
    !*b
}

/// A pinned ComfyUI setup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub schema: String,
    pub tag: String,
    pub comfyui: ComfyUi,
    #[serde(default)]
    pub custom_nodes: Vec<CustomNode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<Python>,
    #[serde(default)]
    pub models: Vec<Model>,
}

/// ComfyUI itself: where its source comes from and the store tree of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyUi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The working tree differed from `commit` when locked: only `tree` reproduces it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dirty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<ObjectId>,
}

/// A custom node: a folder (git repo or plain) or a single `.py` file in `custom_nodes/`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomNode {
    /// Folder (or file) name under `custom_nodes/`, without any `.disabled` marker.
    pub name: String,
    /// Disabled the ComfyUI-Manager way; materialized under `custom_nodes/.disabled/`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dirty: bool,
    /// A Comfy Registry pack, as ComfyUI-Manager identifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Registry>,
    /// Store tree of a folder node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<ObjectId>,
    /// Store object of a single-file node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<ObjectId>,
}

/// A Comfy Registry (CNR) pack id and version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub id: String,
    pub version: String,
}

/// The Python environment, for one interpreter and platform. Everything but `packages` is
/// optional only because an imported ComfyUI-Manager snapshot does not know it; `lock` always
/// fills it in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Python {
    /// Interpreter version, e.g. `3.11.7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `cpython`, `pypy`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<String>,
    /// Wheel ABI tag of the interpreter, e.g. `cp311`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// Wheel platform tag, e.g. `linux_x86_64` or `macosx_14_0_arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// C library, e.g. `glibc 2.36` (manylinux wheels depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libc: Option<String>,
    /// Store tree of the installed environment (the venv folder) for this platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<ObjectId>,
    /// `uv` or `pip` when `tree` is comfystore's own install of `packages` from their wheels
    /// with that installer (an environment `materialize` built): a rebuild on another machine
    /// must then hash to `tree`. Absent for a venv made outside comfystore, whose installer
    /// left bytes of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_with: Option<String>,
    /// The package index the wheels were pinned from (`--index-url`; none: the resolver's
    /// default, PyPI). Never with credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_url: Option<String>,
    /// Further indexes pinned from (`--extra-index-url`, e.g. PyTorch's for CUDA builds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_index_urls: Vec<String>,
    #[serde(default)]
    pub packages: Vec<Package>,
}

/// One installed distribution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Normalised name (PEP 503: lowercase, runs of `-_.` become `-`).
    pub name: String,
    /// Empty only for a direct-URL package whose version is not known (imported snapshots).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The wheel's file name, when pinned to a wheel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheel: Option<String>,
    /// Where it came from: a wheel URL, or the PEP 508 direct reference
    /// (`git+https://…@<commit>`, `file:///…`) that installed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::store::hex64::opt"
    )]
    pub sha256: Option<Sha256>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub editable: bool,
}

/// A model file at a path relative to the ComfyUI root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub path: String,
    /// Bytes. Absent only with `blake3` (a tool that records a URL and SHA-256 alone, like
    /// comfy-cli): `fetch --update-lock` writes both in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(with = "crate::store::hex64")]
    pub sha256: Sha256,
    /// The store object id, as bare hex (what `b3sum` prints). Absent only in a lock imported
    /// from a tool that records SHA-256 alone: `fetch` finds the file by `sha256` and
    /// `fetch --update-lock` writes its blake3 in.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::store::hex64::opt"
    )]
    pub blake3: Option<ObjectId>,
    #[serde(default)]
    pub sources: Vec<String>,
}

impl Model {
    /// The store id, or why it is not known: the lock names the file by sha256 only.
    pub fn id(&self) -> std::result::Result<ObjectId, String> {
        self.blake3.ok_or_else(|| {
            format!(
                "its blake3 is not in the lock and the store has no file with sha256 {}: \
                 run `comfystore fetch --update-lock` on the lock",
                self.sha256.hex()
            )
        })
    }

    /// The size, or why it is not known (as [`Model::id`]).
    pub fn bytes(&self) -> std::result::Result<u64, String> {
        self.size.ok_or_else(|| {
            format!(
                "its size is not in the lock (sha256 {}): run `comfystore fetch --update-lock` on the lock",
                self.sha256.hex()
            )
        })
    }
}

/// Only the schema line, read first so that a lock from a newer comfystore gets a version
/// error rather than a confusing unknown-field one.
#[derive(Deserialize)]
struct SchemaProbe {
    schema: Option<serde_json::Value>,
}

/// A tag becomes part of a file name (`comfy-<tag>.lock.json`).
pub fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with('.')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: use letters, digits and . _ - + (it names the lockfile)"
        ))
    }
}

/// Refuse URLs that would leak a secret into a file people commit and share.
fn check_url(url: &str) -> std::result::Result<(), String> {
    let Some(scheme) = scheme_of(url) else {
        return Err(format!("{url:?} is not a URL"));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(format!("{url:?} has an invalid scheme"));
    }
    if has_credentials(url) {
        return Err(format!(
            "{} carries credentials; remove them (tokens come from the environment)",
            redact_url(url)
        ));
    }
    Ok(())
}

/// The URL schemes a lock's repo may use (git's own transports; `file` for a local repo).
pub const REPO_SCHEMES: &[&str] = &["https", "http", "ssh", "git", "git+ssh", "ssh+git", "file"];

/// A git remote: a URL of [`REPO_SCHEMES`], an scp-like `git@host:path`, or a local path.
/// Refused: git's remote-helper form `<transport>::<address>` (`fd::3` hangs git on a file
/// descriptor, `ext::sh -c …` runs a command), other schemes, control characters, and a
/// leading `-` (an option to git).
fn check_repo(repo: &str) -> std::result::Result<(), String> {
    if repo.is_empty() || repo.starts_with('-') {
        return Err(format!("{repo:?} is not a git remote"));
    }
    if repo.chars().any(char::is_control) {
        return Err(format!("{repo:?} holds control characters"));
    }
    if let Some((transport, _)) = repo.split_once("::") {
        if !transport.is_empty()
            && transport
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b))
        {
            return Err(format!(
                "{repo:?} uses git's remote helper {transport:?} (`{transport}::`); only {} URLs, \
                 git@host:path and local paths are allowed",
                REPO_SCHEMES.join(", ")
            ));
        }
    }
    if repo.contains("://") {
        check_url(repo)?;
        let scheme = scheme_of(repo).unwrap_or_default().to_ascii_lowercase();
        if !REPO_SCHEMES.contains(&scheme.as_str()) {
            return Err(format!(
                "{repo:?}: scheme {scheme:?} is not a git transport comfystore uses ({})",
                REPO_SCHEMES.join(", ")
            ));
        }
    }
    Ok(())
}

/// A custom node name must be one plain path component.
fn check_node_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.ends_with(".disabled")
    {
        return Err(format!(
            "invalid custom node name {name:?}: one folder or file name, not hidden, without .disabled"
        ));
    }
    Ok(())
}

impl Lockfile {
    /// An empty lock for `tag`.
    pub fn new(tag: &str) -> Lockfile {
        Lockfile {
            schema: SCHEMA.to_string(),
            tag: tag.to_string(),
            comfyui: ComfyUi::default(),
            custom_nodes: Vec::new(),
            python: None,
            models: Vec::new(),
        }
    }

    /// Parse and validate lockfile bytes; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Lockfile> {
        let bad = |reason: String| Error::bad_input(path, reason);
        let probe: SchemaProbe = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not valid lockfile JSON: {e}")))?;
        match probe.schema {
            Some(serde_json::Value::String(s)) if s == SCHEMA => {}
            Some(serde_json::Value::String(s)) if s.starts_with("comfystore.lock/") => {
                return Err(bad(format!(
                    "unsupported lockfile schema {s:?}: this comfystore reads {SCHEMA:?}; upgrade comfystore"
                )))
            }
            Some(other) => {
                return Err(bad(format!(
                    "not a comfystore lockfile: schema is {other}, expected {SCHEMA:?}"
                )))
            }
            None => {
                return Err(bad(format!(
                    "not a comfystore lockfile: no \"schema\" field (expected {SCHEMA:?})"
                )))
            }
        }
        let lock: Lockfile =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid lockfile: {e}")))?;
        lock.validate().map_err(bad)?;
        Ok(lock)
    }

    /// Read and validate a lockfile.
    pub fn read(path: &Path) -> Result<Lockfile> {
        let bytes = std::fs::read(path).ctx("read", path)?;
        Lockfile::parse(&bytes, path)
    }

    /// Every rule a lock must keep, checked before any command acts on it. The message names
    /// the field (`models[2].path`) and the problem.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.schema != SCHEMA {
            return Err(format!("schema {:?}, expected {SCHEMA:?}", self.schema));
        }
        check_tag(&self.tag).map_err(|e| format!("tag: {e}"))?;
        let c = &self.comfyui;
        check_source(
            "comfyui",
            c.repo.as_deref(),
            c.commit.as_deref(),
            c.tree.is_some(),
        )?;

        let mut names = HashSet::new();
        for (i, n) in self.custom_nodes.iter().enumerate() {
            let at = format!("custom_nodes[{i}]");
            check_node_name(&n.name).map_err(|e| format!("{at}.name: {e}"))?;
            if !names.insert(n.name.as_str()) {
                return Err(format!("{at}.name: duplicate custom node {:?}", n.name));
            }
            if n.tree.is_some() && n.file.is_some() {
                return Err(format!(
                    "{at}: has both \"tree\" and \"file\"; a node is one or the other"
                ));
            }
            let content = n.tree.is_some() || n.file.is_some();
            if !content && n.repo.is_none() && n.registry.is_none() {
                return Err(format!(
                    "{at} ({}): nothing to install it from (no tree, file, repo or registry)",
                    n.name
                ));
            }
            if n.repo.is_some() || n.commit.is_some() {
                check_source(&at, n.repo.as_deref(), n.commit.as_deref(), content)?;
            }
            if let Some(r) = &n.registry {
                if r.id.is_empty() || r.version.is_empty() {
                    return Err(format!("{at}.registry: id and version must not be empty"));
                }
            }
        }

        if let Some(py) = &self.python {
            for (f, v) in [
                ("version", &py.version),
                ("implementation", &py.implementation),
                ("abi", &py.abi),
                ("platform", &py.platform),
                ("libc", &py.libc),
            ] {
                if v.as_deref().is_some_and(str::is_empty) {
                    return Err(format!("python.{f}: must not be empty"));
                }
            }
            if let Some(b) = py
                .built_with
                .as_deref()
                .filter(|b| !["uv", "pip"].contains(b))
            {
                return Err(format!("python.built_with: {b:?} is not \"uv\" or \"pip\""));
            }
            if let Some(u) = &py.index_url {
                check_url(u).map_err(|e| format!("python.index_url: {e}"))?;
            }
            for (i, u) in py.extra_index_urls.iter().enumerate() {
                check_url(u).map_err(|e| format!("python.extra_index_urls[{i}]: {e}"))?;
            }
            let mut seen = HashSet::new();
            for (i, p) in py.packages.iter().enumerate() {
                let at = format!("python.packages[{i}]");
                if p.name.is_empty() || normalize_package_name(&p.name) != p.name {
                    return Err(format!(
                        "{at}.name: {:?} is not a normalised name (expected {:?})",
                        p.name,
                        normalize_package_name(&p.name)
                    ));
                }
                if !seen.insert(p.name.as_str()) {
                    return Err(format!("{at}.name: duplicate package {:?}", p.name));
                }
                if p.version.is_empty() && p.url.is_none() {
                    return Err(format!("{at}.version: must not be empty (or give a url)"));
                }
                if let Some(u) = &p.url {
                    check_url(u).map_err(|e| format!("{at}.url: {e}"))?;
                }
                if let Some(w) = &p.wheel {
                    if !w.ends_with(".whl") || w.contains(['/', '\\']) {
                        return Err(format!("{at}.wheel: {w:?} is not a wheel file name"));
                    }
                }
            }
        }

        let mut paths = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let at = format!("models[{i}]");
            check_rel_path(&m.path).map_err(|e| format!("{at}.path: {e}"))?;
            if !paths.insert(m.path.as_str()) {
                return Err(format!("{at}.path: duplicate model path {:?}", m.path));
            }
            if m.blake3.is_some() && m.size.is_none() {
                return Err(format!("{at}.size: required when blake3 is given"));
            }
            for (j, u) in m.sources.iter().enumerate() {
                check_url(u).map_err(|e| format!("{at}.sources[{j}]: {e}"))?;
            }
        }
        Ok(())
    }

    /// Wheels the lock pins (file name and sha256) with their URL, if any.
    pub fn pinned_wheels(&self) -> Vec<(String, Sha256, Option<String>)> {
        let Some(py) = &self.python else {
            return Vec::new();
        };
        py.packages
            .iter()
            .filter_map(|p| Some((p.wheel.clone()?, p.sha256?, p.url.clone())))
            .collect()
    }

    /// Every store id the lock names (trees, file nodes, models): what its GC root keeps.
    pub fn store_ids(&self) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> = self.comfyui.tree.into_iter().collect();
        for n in &self.custom_nodes {
            ids.extend(n.tree.or(n.file));
        }
        ids.extend(self.python.as_ref().and_then(|p| p.tree));
        ids.extend(self.models.iter().filter_map(|m| m.blake3));
        ids.sort();
        ids.dedup();
        ids
    }

    /// Sort every array into its canonical order.
    pub fn canonicalize(&mut self) {
        self.custom_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(py) = &mut self.python {
            py.packages.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.models.sort_by(|a, b| a.path.cmp(&b.path));
        for m in &mut self.models {
            let mut seen = HashSet::new();
            m.sources.retain(|u| seen.insert(u.clone()));
        }
    }

    /// The canonical bytes: sorted, two-space indented, one trailing newline.
    pub fn to_canonical(&self) -> Vec<u8> {
        let mut lock = self.clone();
        lock.canonicalize();
        // Serialising plain structs of strings and numbers cannot fail.
        let mut out = serde_json::to_vec_pretty(&lock).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Validate, then write the canonical bytes atomically (temp file + rename), unless the
    /// file already holds them. Returns whether it wrote.
    pub fn write(&self, path: &Path) -> Result<bool> {
        self.validate().map_err(|e| {
            Error::bad_input(path, format!("refusing to write an invalid lock: {e}"))
        })?;
        let bytes = self.to_canonical();
        if std::fs::read(path).is_ok_and(|old| old == bytes) {
            return Ok(false);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).ctx("create", dir)?;
        }
        crate::store::write_file_atomic(path, &bytes, 0o644)?;
        Ok(true)
    }
}

/// Repo and commit go together, the commit is hex, and the repo URL carries no secret.
fn check_source(
    at: &str,
    repo: Option<&str>,
    commit: Option<&str>,
    has_content: bool,
) -> std::result::Result<(), String> {
    if let Some(r) = repo {
        check_repo(r).map_err(|e| format!("{at}.repo: {e}"))?;
    }
    if let Some(c) = commit {
        if !is_commit(c) {
            return Err(format!(
                "{at}.commit: {c:?} is not a commit id (40 or 64 lowercase hex digits)"
            ));
        }
    }
    if repo.is_some() != commit.is_some() && !has_content {
        return Err(format!("{at}: \"repo\" and \"commit\" go together"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lockfile {
        let mut l = Lockfile::new("v1");
        l.comfyui.tree = Some(ObjectId([1; 32]));
        for name in ["zeta", "Alpha", "mid"] {
            l.custom_nodes.push(CustomNode {
                name: name.into(),
                tree: Some(ObjectId([2; 32])),
                ..Default::default()
            });
        }
        for path in ["models/b.bin", "models/a.bin"] {
            l.models.push(Model {
                path: path.into(),
                size: Some(3),
                sha256: Sha256([3; 32]),
                blake3: Some(ObjectId([4; 32])),
                sources: vec!["https://h/x".into(), "https://h/x".into()],
            });
        }
        l
    }

    #[test]
    fn canonical_bytes_are_sorted_stable_and_parse_back() {
        let l = sample();
        let bytes = l.to_canonical();
        assert!(bytes.ends_with(b"}\n") && !bytes.ends_with(b"\n\n"));
        let back = Lockfile::parse(&bytes, Path::new("x")).unwrap();
        let names: Vec<&str> = back.custom_nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["Alpha", "mid", "zeta"]);
        assert_eq!(back.models[0].path, "models/a.bin");
        assert_eq!(back.models[0].sources, ["https://h/x"]);
        assert_eq!(back.to_canonical(), bytes);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\n  \"schema\": \"comfystore.lock/1\""));
        assert!(text.contains(&format!("\"blake3\": \"{}\"", ObjectId([4; 32]).hex())));
    }

    #[test]
    fn validation_names_the_field() {
        let mut l = sample();
        l.models[1].path = "models/../../etc/passwd".into();
        assert!(l.validate().unwrap_err().starts_with("models[1].path"));
        let mut l = sample();
        l.custom_nodes[0].name = "x.disabled".into();
        assert!(l
            .validate()
            .unwrap_err()
            .starts_with("custom_nodes[0].name"));
        let mut l = sample();
        l.comfyui.commit = Some("ABCDEF".into());
        assert!(l.validate().unwrap_err().contains("comfyui.commit"));
        let mut l = sample();
        l.models.push(l.models[0].clone());
        assert!(l.validate().unwrap_err().contains("duplicate model path"));
        let err = Lockfile::parse(br#"{"schema":"comfystore.lock/9"}"#, Path::new("f.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.json") && err.contains("comfystore.lock/9"),
            "{err}"
        );
    }

    #[test]
    fn names_normalise() {
        assert_eq!(normalize_package_name("Tiny_Bar"), "tiny-bar");
        assert_eq!(normalize_package_name("zope.interface"), "zope-interface");
        assert_eq!(normalize_package_name("A__B--c"), "a-b-c");
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("https://u:tok@github.com/a/b"),
            "https://github.com/a/b"
        );
        assert_eq!(
            redact_url("https://github.com/a@b"),
            "https://github.com/a@b"
        );
        assert!(check_url("https://u:tok@github.com/a/b").is_err());
        assert!(check_url("https://github.com/a/b").is_ok());
        assert!(check_url("ssh://git@github.com/a/b").is_ok());
        assert!(check_repo("git@github.com:a/b.git").is_ok());
        assert!(check_repo("/srv/repos/a.git").is_ok());
        assert!(check_repo("file:///srv/repos/a.git").is_ok());
        for bad in [
            "fd::3",
            "ext::sh -c touch% /tmp/pwned",
            "ext::git-upload-pack",
            "http::https://example.com/a",
            "ftp://example.com/a.git",
            "-uhelp",
            "https://example.com/a\nb",
        ] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
        assert_eq!(redact_url("ssh://git@h/a"), "ssh://git@h/a");
    }
}
