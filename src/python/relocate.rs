//! Environments as path-independent trees.
//!
//! A venv names absolute paths in a few files: `pyvenv.cfg` (the base interpreter's folder),
//! the `bin/python*` links (the base interpreter), pip's console scripts and `activate`
//! (the venv's own folder, in the `#!` line or a variable) and `.pth`/`.egg-link` files of
//! editable installs. When an environment is stored, those files are stored as *templates*,
//! with the paths replaced by tokens, and listed in [`ENV_META`]. Every other file is linked
//! as it is. When an environment is placed, [`render`] writes the templates anew for that
//! folder and that machine's interpreter, so two versions can share every other inode.

use super::interpreter::Interpreter;
use super::spec::{EnvSpec, Package};
use crate::python::error::{Error, IoContext, Result};
use crate::store::CACHE_NAMES;
use crate::store::{AddOptions, AddReport, Entry, Manifest, Node, ObjectId, Prehash, Store};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The file at the top of a stored environment that lists its templates.
pub const ENV_META: &str = ".comfystore-env.json";
const META_SCHEMA: &str = "comfystore.env/1";

/// Stands for the environment's own folder.
const VENV_TOKEN: &str = "@@COMFYSTORE_VENV@@";
/// Stands for the base interpreter binary.
const PYTHON_TOKEN: &str = "@@COMFYSTORE_PYTHON@@";
/// Stands for the base interpreter's folder (`home` in `pyvenv.cfg`).
const HOME_TOKEN: &str = "@@COMFYSTORE_PYTHON_HOME@@";

/// What [`ENV_META`] holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvMeta {
    pub schema: String,
    /// The interpreter the environment is for (no packages, no tree).
    pub python: EnvSpec,
    /// Paths (files and symlinks) whose content or target is written per destination.
    pub templates: Vec<String>,
    /// The wheels it was installed from (name, version, file, URL, sha256), when comfystore
    /// installed it: `lock` reads them back, so a lock of an `init`ed install pins wheels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<Package>,
    /// `uv` or `pip`, when comfystore installed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<String>,
}

/// Store the venv at `venv` as a path-independent environment tree, file for file as it is
/// (so `verify` of an install locked in place finds its own bytes). `base` is the venv's base
/// interpreter; `packages` the wheels it was installed from, if known (else those of the
/// metadata the venv already carries, when comfystore placed it).
/// Byte-code caches (`__pycache__`) are left out; loose `.pyc` files are kept, since a
/// sourceless distribution is made of them.
pub fn ingest(
    store: &Store,
    venv: &Path,
    base: &Interpreter,
    packages: Option<&[Package]>,
) -> Result<(ObjectId, AddReport)> {
    let (mut manifest, add) = add_venv(store, venv, None)?;
    let templates = templatize(store, venv, &Substitutions::of(venv, base), &mut manifest)?;
    let made = match packages {
        Some(p) => Made {
            packages: p.to_vec(),
            installer: None,
        },
        None => read_meta_file(venv)?.map_or_else(Made::default, |m| Made {
            packages: m.packages,
            installer: m.installer,
        }),
    };
    finish(store, venv, base, made, templates, manifest).map(|id| (id, add))
}

/// How an environment was made, as its metadata records it.
#[derive(Default)]
struct Made {
    /// The wheels it was installed from, if known.
    packages: Vec<Package>,
    /// `uv` or `pip`, when comfystore installed it.
    installer: Option<String>,
}

/// Store a venv comfystore installed from `packages` in a staging folder, with what the
/// installer wrote about its run normalised, so the same wheels and interpreter give the
/// same tree on every machine and at every time.
pub fn ingest_installed(
    store: &Store,
    venv: &Path,
    base: &Interpreter,
    packages: &[Package],
    installer: &str,
    pre: &Prehash,
) -> Result<ObjectId> {
    let phase = Phases::start();
    let (mut manifest, _) = add_venv(store, venv, Some(pre))?;
    phase.done("add_tree (adopting the venv's files)");
    let dropped = drop_run_files(&mut manifest);
    let templates = templatize(store, venv, &Substitutions::of(venv, base), &mut manifest)?;
    phase.done("templatize");
    normalize_records(store, venv, &templates, &dropped, &mut manifest)?;
    phase.done("normalize RECORDs");
    let made = Made {
        packages: packages.to_vec(),
        installer: Some(installer.to_string()),
    };
    let id = finish(store, venv, base, made, templates, manifest)?;
    phase.done("put_tree");
    Ok(id)
}

/// Times the phases of a build for `RUST_LOG=comfystore=info` (the cold-build profile).
pub(super) struct Phases(std::cell::Cell<std::time::Instant>);

impl Phases {
    pub(super) fn start() -> Phases {
        Phases(std::cell::Cell::new(std::time::Instant::now()))
    }

    pub(super) fn done(&self, what: &str) {
        let now = std::time::Instant::now();
        tracing::info!("environment: {what} took {:.2?}", now - self.0.get());
        self.0.set(now);
    }

    /// Start timing anew (what ran since was timed by its own phases).
    pub(super) fn start_next(&self) {
        self.0.set(std::time::Instant::now());
    }
}

/// The venv's files in the store, without byte-code caches and comfystore's own files.
/// `adopt`: the venv is comfystore's own staging venv in the store's `tmp/`, whose files
/// become the objects themselves ([`Store::adopt_tree`]) instead of being copied, with the
/// hashes taken while it was installed.
fn add_venv(store: &Store, venv: &Path, adopt: Option<&Prehash>) -> Result<(Manifest, AddReport)> {
    let opts = AddOptions {
        exclude_names: CACHE_NAMES.iter().map(|s| s.to_string()).collect(),
        exclude: vec![ENV_META.to_string(), crate::store::MARKER_NAME.to_string()],
        ..Default::default()
    };
    let add = if let Some(pre) = adopt {
        store.adopt_tree(venv, &opts, Some(pre))?
    } else {
        store.add_tree(venv, &opts)?
    };
    Ok((store.read_tree(&add.id)?, add))
}

/// Add [`ENV_META`] to the templatized manifest and store it.
fn finish(
    store: &Store,
    venv: &Path,
    base: &Interpreter,
    made: Made,
    templates: Vec<String>,
    mut manifest: Manifest,
) -> Result<ObjectId> {
    let meta = EnvMeta {
        schema: META_SCHEMA.into(),
        python: base.section(),
        templates,
        packages: made.packages,
        installer: made.installer,
    };
    let bytes = serde_json::to_vec_pretty(&meta)
        .map_err(|e| Error::bad_input(venv, format!("environment metadata: {e}")))?;
    let put = store.put_bytes(&bytes, false, false)?;
    manifest.entries.push(Entry {
        path: ENV_META.into(),
        node: Node::File {
            exec: false,
            size: put.digests.size,
            id: put.digests.b3,
        },
    });
    manifest.sort();
    Ok(store.put_tree(&manifest)?.0)
}

/// Replace the venv's own paths in symlinks and text files by tokens (new file contents go
/// into the store); the paths of the entries that became templates.
fn templatize(
    store: &Store,
    venv: &Path,
    subst: &Substitutions,
    manifest: &mut Manifest,
) -> Result<Vec<String>> {
    let mut templates = Vec::new();
    for e in manifest.entries.iter_mut() {
        match &mut e.node {
            Node::Symlink { target } => {
                let mut t = subst.to_tokens(target);
                // `bin/python` names the base interpreter, by whatever path the venv tool
                // resolved; any absolute link out of bin/ is that interpreter.
                if e.path.starts_with("bin/") && t.starts_with('/') {
                    t = PYTHON_TOKEN.to_string();
                }
                if t != *target {
                    *target = t;
                    templates.push(e.path.clone());
                }
            }
            Node::File { exec, size, id } if may_name_paths(&e.path) => {
                let path = venv.join(&e.path);
                let bytes = fs::read(&path).ctx("read", &path)?;
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    continue;
                };
                let mut t = subst.to_tokens(text);
                if e.path == "pyvenv.cfg" {
                    t = tokenize_cfg(&t);
                }
                if t != text {
                    let put = store.put_bytes(t.as_bytes(), *exec, false)?;
                    *id = put.digests.b3;
                    *size = put.digests.size;
                    templates.push(e.path.clone());
                }
            }
            _ => {}
        }
    }
    Ok(templates)
}

/// Files an installer writes about its own run, not about the package: uv's cache info holds
/// the time of the install. They are left out of the tree (and out of `RECORD`).
const RUN_FILES: &[&str] = &["uv_cache.json"];

/// Leave out every [`RUN_FILES`] file of a `.dist-info` folder; their paths.
fn drop_run_files(manifest: &mut Manifest) -> Vec<String> {
    let (dropped, kept) = std::mem::take(&mut manifest.entries)
        .into_iter()
        .partition(|e| {
            e.path
                .rsplit_once('/')
                .is_some_and(|(dir, name)| dir.ends_with(".dist-info") && RUN_FILES.contains(&name))
        });
    manifest.entries = kept;
    dropped.into_iter().map(|e: Entry| e.path).collect()
}

/// Make `RECORD` files the same for every staging folder and every run: lines of dropped
/// files go, and templates lose their hash and size. The installer hashed the file it wrote
/// for the staging folder (a console script's `#!` line names it); the rendered file differs
/// anyway.
fn normalize_records(
    store: &Store,
    venv: &Path,
    templates: &[String],
    dropped: &[String],
    manifest: &mut Manifest,
) -> Result<()> {
    for e in manifest.entries.iter_mut() {
        let Some(dir) = record_base(&e.path) else {
            continue;
        };
        let Node::File { exec, size, id } = &mut e.node else {
            continue;
        };
        let path = venv.join(&e.path);
        let bytes = fs::read(&path).ctx("read", &path)?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let out = record_lines(text, dir, |p| {
            if dropped.iter().any(|d| d == p) {
                Line::Drop
            } else if templates.binary_search_by(|t| t.as_str().cmp(p)).is_ok() {
                Line::Unhash
            } else {
                Line::Keep
            }
        });
        if out != text {
            let put = store.put_bytes(out.as_bytes(), *exec, false)?;
            *id = put.digests.b3;
            *size = put.digests.size;
        }
    }
    Ok(())
}

/// What becomes of one `RECORD` line.
#[derive(PartialEq)]
enum Line {
    Keep,
    Unhash,
    Drop,
}

/// The folder `RECORD`'s paths are relative to (the one holding `X.dist-info/`), if `path`
/// is a wheel's `RECORD`.
fn record_base(path: &str) -> Option<&str> {
    let dist_info = path.strip_suffix("/RECORD")?;
    if !dist_info.ends_with(".dist-info") {
        return None;
    }
    Some(dist_info.rsplit_once('/').map_or("", |(base, _)| base))
}

/// `RECORD` lines (`path,hash,size`; only the path may be quoted and hold commas), each
/// kept, dropped or left without hash and size as `what` says of the venv path it names.
fn record_lines(text: &str, base: &str, what: impl Fn(&str) -> Line) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let path = body.rsplitn(3, ',').nth(2).unwrap_or("");
        let target = normalize(&format!("{base}/{}", path.trim_matches('"')));
        match what(&target) {
            _ if path.is_empty() => out.push_str(line),
            Line::Keep => out.push_str(line),
            Line::Drop => {}
            Line::Unhash => {
                out.push_str(path);
                out.push_str(",,");
                out.push_str(&line[body.len()..]);
            }
        }
    }
    out
}

/// `a/b/../c` as `a/c` (no leading `/`); `..` above the top is dropped.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(p),
        }
    }
    parts.join("/")
}

/// `pyvenv.cfg` keys that name the base interpreter, whatever path the venv tool wrote.
fn tokenize_cfg(cfg: &str) -> String {
    let mut out = String::new();
    for line in cfg.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "home" => out.push_str(&format!("home = {HOME_TOKEN}")),
            "executable" | "base-executable" => out.push_str(&format!("{key} = {PYTHON_TOKEN}")),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Files that may hold absolute paths: `pyvenv.cfg`, anything directly in `bin/`, and path
/// files in site-packages. Other files are never read again.
fn may_name_paths(path: &str) -> bool {
    path == "pyvenv.cfg"
        || path
            .strip_prefix("bin/")
            .is_some_and(|rest| !rest.contains('/'))
        || path.ends_with(".pth")
        || path.ends_with(".egg-link")
}

/// The metadata of an environment tree, if it is one (trees locked before templates existed
/// are placed as they are).
pub fn read_meta(store: &Store, env: &Manifest) -> Result<Option<EnvMeta>> {
    let Some(Node::File { id, .. }) = env
        .entries
        .iter()
        .find(|e| e.path == ENV_META)
        .map(|e| &e.node)
    else {
        return Ok(None);
    };
    let bytes = read_object(store, id)?;
    let meta = parse_meta(&bytes, &store.object_path(id, false))?;
    Ok(Some(meta))
}

/// The metadata a placed environment carries (`None` if it has none, or an unreadable one).
pub fn read_meta_file(venv: &Path) -> Result<Option<EnvMeta>> {
    let path = venv.join(ENV_META);
    match fs::read(&path) {
        Ok(b) => Ok(parse_meta(&b, &path).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("read", &path),
    }
}

fn parse_meta(bytes: &[u8], path: &Path) -> Result<EnvMeta> {
    let meta: EnvMeta = serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_input(path, format!("invalid environment metadata: {e}")))?;
    if meta.schema != META_SCHEMA {
        return Err(Error::bad_input(
            path,
            format!("environment schema {:?} is not supported", meta.schema),
        ));
    }
    Ok(meta)
}

fn read_object(store: &Store, id: &ObjectId) -> Result<Vec<u8>> {
    let mut f = store.open_object(id)?;
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v).ctx("read", &store.object_path(id, false))?;
    Ok(v)
}

/// The environment tree written for a venv at `venv` (absolute) on `base`: templates are
/// filled in and stored as small objects of their own.
pub fn render(store: &Store, env: &Manifest, venv: &Path, base: &Interpreter) -> Result<Manifest> {
    let Some(meta) = read_meta(store, env)? else {
        return Ok(env.clone());
    };
    let subst = Substitutions::of(venv, base);
    let mut out = env.clone();
    for e in out.entries.iter_mut() {
        if meta.templates.binary_search(&e.path).is_err() {
            continue;
        }
        match &mut e.node {
            Node::Symlink { target } => *target = subst.fill_tokens(target),
            Node::File { exec, size, id } => {
                let bytes = read_object(store, id)?;
                let text = String::from_utf8_lossy(&bytes);
                let put = store.put_bytes(subst.fill_tokens(&text).as_bytes(), *exec, false)?;
                *id = put.digests.b3;
                *size = put.digests.size;
            }
            Node::Dir => {}
        }
    }
    Ok(out)
}

/// The pairs of (absolute path, token) a venv's files are rewritten with, longest path first
/// so a venv inside the interpreter's folder (or the reverse) is replaced whole.
struct Substitutions {
    pairs: Vec<(String, &'static str)>,
    venv: String,
    python: String,
    home: String,
}

impl Substitutions {
    fn of(venv: &Path, base: &Interpreter) -> Substitutions {
        let s = |p: &Path| p.to_string_lossy().trim_end_matches('/').to_string();
        let home = base
            .executable
            .parent()
            .map(s)
            .unwrap_or_else(|| "/".into());
        let mut pairs = vec![
            (s(venv), VENV_TOKEN),
            (s(&base.executable), PYTHON_TOKEN),
            (home.clone(), HOME_TOKEN),
        ];
        if let Ok(c) = venv.canonicalize() {
            pairs.push((s(&c), VENV_TOKEN));
        }
        pairs.retain(|(p, _)| p.len() > 1);
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        pairs.dedup();
        Substitutions {
            pairs,
            venv: s(venv),
            python: s(&base.executable),
            home,
        }
    }

    /// Replace the paths by tokens. A path only counts where it ends at a path boundary, so
    /// `/opt/py` does not eat into `/opt/python3`.
    fn to_tokens(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (path, token) in &self.pairs {
            out = replace_bounded(&out, path, token);
        }
        out
    }

    fn fill_tokens(&self, text: &str) -> String {
        text.replace(VENV_TOKEN, &self.venv)
            .replace(PYTHON_TOKEN, &self.python)
            .replace(HOME_TOKEN, &self.home)
    }
}

/// Replace `needle` in `hay` where the next character is not part of a longer name.
fn replace_bounded(hay: &str, needle: &str, with: &str) -> String {
    let mut out = String::with_capacity(hay.len());
    let mut rest = hay;
    while let Some(i) = rest.find(needle) {
        let after = &rest[i + needle.len()..];
        let bounded = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'));
        out.push_str(&rest[..i]);
        out.push_str(if bounded { with } else { needle });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The path of a venv's `site-packages` inside an environment tree, e.g.
/// `lib/python3.11/site-packages`.
pub fn site_packages_of(env: &Manifest) -> Option<PathBuf> {
    env.entries.iter().find_map(|e| {
        let mut parts = e.path.splitn(4, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("lib"), Some(py), Some("site-packages")) => {
                Some(PathBuf::from(format!("lib/{py}/site-packages")))
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Interpreter {
        Interpreter {
            version: "3.11.7".into(),
            implementation: "cpython".into(),
            abi: "cp311".into(),
            platform: "linux_x86_64".into(),
            libc: None,
            executable: "/opt/py/bin/python3.11".into(),
        }
    }

    #[test]
    fn round_trip_and_boundaries() {
        let s = Substitutions::of(Path::new("/tmp/stage/venv"), &base());
        let script = "#!/tmp/stage/venv/bin/python\n# /tmp/stage/venv2 stays\n";
        let t = s.to_tokens(script);
        assert_eq!(
            t,
            "#!@@COMFYSTORE_VENV@@/bin/python\n# /tmp/stage/venv2 stays\n"
        );
        let cfg = "home = /opt/py/bin\nexecutable = /opt/py/bin/python3.11\n";
        assert_eq!(
            s.to_tokens(cfg),
            "home = @@COMFYSTORE_PYTHON_HOME@@\nexecutable = @@COMFYSTORE_PYTHON@@\n"
        );
        let d = Substitutions::of(Path::new("/w/v1/venv"), &base());
        assert_eq!(
            d.fill_tokens(&t),
            "#!/w/v1/venv/bin/python\n# /tmp/stage/venv2 stays\n"
        );
    }

    #[test]
    fn records_lose_the_hashes_of_templates() {
        let base = record_base("lib/python3.11/site-packages/x-1.dist-info/RECORD").unwrap();
        assert_eq!(base, "lib/python3.11/site-packages");
        assert_eq!(record_base("lib/x/RECORD"), None);
        let text = "../../../bin/x,sha256=abc,245\r\nx/__init__.py,sha256=def,3\n\
                    x-1.dist-info/uv_cache.json,sha256=t,9\n\"x,y.py\",sha256=g,1";
        let out = record_lines(text, base, |p| match p {
            "bin/x" | "lib/python3.11/site-packages/x,y.py" => Line::Unhash,
            "lib/python3.11/site-packages/x-1.dist-info/uv_cache.json" => Line::Drop,
            _ => Line::Keep,
        });
        assert_eq!(
            out,
            "../../../bin/x,,\r\nx/__init__.py,sha256=def,3\n\"x,y.py\",,"
        );
    }

    #[test]
    fn which_files_are_scanned() {
        assert!(may_name_paths("pyvenv.cfg"));
        assert!(may_name_paths("bin/tinycli"));
        assert!(!may_name_paths("bin/sub/x"));
        assert!(may_name_paths("lib/python3.11/site-packages/_x.pth"));
        assert!(!may_name_paths(
            "lib/python3.11/site-packages/x/__init__.py"
        ));
    }
}
