//! The one wheel builder of the tests: tiny pure-Python `py3-none-any` wheels (METADATA 2.1,
//! WHEEL, top_level.txt, entry_points.txt when there are scripts, RECORD) written by
//! `python3`'s zipfile, byte for byte the same on every run (fixed zip timestamps and modes,
//! payload sorted, dist-info last), because tests and pinned sha256s compare their bytes.
//! The fixture index (tests/common/pyindex.rs) and the ComfyUI fixture's venv
//! (tests/common/comfy.rs) both build through [`build`].
#![allow(dead_code)]

use super::pyindex::{python3, python_cmd};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// One wheel to build.
#[derive(Clone, Copy, Debug)]
pub struct WheelSpec<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// `Requires-Dist:` lines.
    pub requires: &'a [&'a str],
    /// `[console_scripts]` entries, `name = module:func`.
    pub scripts: &'a [&'a str],
    /// (path in the wheel, content).
    pub files: &'a [(&'a str, &'a str)],
}

impl<'a> WheelSpec<'a> {
    /// A wheel of just these files (no requirements, no scripts).
    pub const fn plain(name: &'a str, version: &'a str, files: &'a [(&'a str, &'a str)]) -> Self {
        WheelSpec {
            name,
            version,
            requires: &[],
            scripts: &[],
            files,
        }
    }

    /// The wheel's file name, `{name}-{version}-py3-none-any.whl` with runs of `-_.` in the
    /// name turned into `_`, case kept (as [`BUILD_WHEELS_PY`] names it).
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-py3-none-any.whl",
            squash_separators(self.name, "_"),
            self.version
        )
    }

    /// The spec as [`BUILD_WHEELS_PY`] reads it.
    fn json(&self, out_dir: &Path) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "version": self.version,
            "requires": self.requires,
            "scripts": self.scripts,
            "files": self.files,
            "out_dir": out_dir.to_str().expect("utf-8 path"),
        })
    }
}

/// `re.sub(r"[-_.]+", with, name)`: the wheel file name's escaping (`_`) and, lowercased, PEP
/// 503's normalised project name (`-`).
pub fn squash_separators(name: &str, with: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push_str(with);
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

/// Builds every wheel of a JSON list on stdin into its `out_dir`; prints their paths.
pub const BUILD_WHEELS_PY: &str = r#"
import base64, hashlib, json, re, sys, zipfile
for spec in json.load(sys.stdin):
    name, version = spec["name"], spec["version"]
    dist = re.sub(r"[-_.]+", "_", name)          # wheel file/dist-info escaping; case kept
    info = f"{dist}-{version}.dist-info"
    files = sorted((p, c.encode()) for p, c in spec["files"])
    top = sorted({p.split("/")[0][:-3] if "/" not in p and p.endswith(".py") else p.split("/")[0]
                  for p, _ in files})
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += f"Summary: comfystore test fixture package {name}\n"
    for r in spec["requires"]:
        meta += f"Requires-Dist: {r}\n"
    meta += "\n"
    extra = [
        (f"{info}/METADATA", meta.encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: comfystore-test-fixture\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/top_level.txt", "".join(t + "\n" for t in top).encode()),
    ]
    if spec["scripts"]:
        ep = "[console_scripts]\n" + "".join(s + "\n" for s in spec["scripts"])
        extra.append((f"{info}/entry_points.txt", ep.encode()))
    entries = files + sorted(extra)
    record = ""
    for p, data in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{p},sha256={digest},{len(data)}\n"
    record += f"{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    path = f"{spec['out_dir']}/{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, data in entries:
            zi = zipfile.ZipInfo(p, date_time=(1980, 1, 1, 0, 0, 0))
            zi.create_system = 3
            zi.external_attr = 0o100644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    print(path)
"#;

/// Build each `(spec, out_dir)` (the folders must exist) in one `python3` run; returns the
/// wheels' paths, in order.
pub fn build(specs: &[(&WheelSpec, &Path)]) -> Vec<PathBuf> {
    let list: Vec<serde_json::Value> = specs.iter().map(|(s, dir)| s.json(dir)).collect();
    let mut child = python_cmd(python3())
        .args(["-c", BUILD_WHEELS_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::Value::from(list).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let paths: Vec<PathBuf> = super::check("build wheels", &out)
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(paths.len(), specs.len(), "built {paths:?}");
    for p in &paths {
        assert!(p.is_file(), "no wheel at {}", p.display());
    }
    paths
}

/// A name for the folder of `specs`' wheels that changes whenever anything that decides their
/// bytes does (the specs or the script), so a folder left by an earlier run is reused only
/// when it holds exactly these wheels.
pub fn fingerprint(specs: &[&WheelSpec]) -> String {
    let mut key = String::from(BUILD_WHEELS_PY);
    for s in specs {
        key.push_str(&s.json(Path::new("/")).to_string());
    }
    super::sha256_hex(key.as_bytes())[..16].to_string()
}
