//! Which format a file to import is in, and the pieces every format reader shares.
//!
//! `import-snapshot` (alias `import-from`) reads ComfyUI-Manager snapshots (JSON and YAML),
//! comfy-pack packages (`.cpack.zip` and their bare `snapshot.json`), comfy-cli's
//! `comfy.lock.yaml` and comfy-cli's build definitions (`distribution-definition/0`). The format
//! is told by a zip's magic bytes, then by the top-level keys; each reader then refuses any key
//! it does not know by name. `docs/interop.md` maps every field of every format onto the lock.

pub use super::formats::{Format, GitRef, Imported};
use crate::lockfile::error::{Error, IoContext, Result};
use std::path::Path;

/// Tell the format of `path` (zip magic, then top-level keys).
pub fn detect(path: &Path) -> Result<Format> {
    use std::io::Read;
    let mut magic = Vec::with_capacity(4);
    std::fs::File::open(path)
        .ctx("open", path)?
        .take(4)
        .read_to_end(&mut magic)
        .ctx("read", path)?;
    if magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06") {
        return Ok(Format::CpackZip);
    }
    let bytes = std::fs::read(path).ctx("read", path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::bad_input(path, "not UTF-8 text and not a zip"))?;
    detect_text(text, path)
}

fn detect_text(text: &str, path: &Path) -> Result<Format> {
    let bad = |m: String| Error::bad_input(path, m);
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| bad(format!("not valid JSON or YAML: {e}")))?
    };
    let Some(o) = value.as_object() else {
        return Err(bad(
            "not a format comfystore imports: the top level is not a mapping".into(),
        ));
    };
    let has = |k: &str| o.contains_key(k);
    if let Some(schema) = o.get("schema") {
        return match schema.as_str() {
            Some(super::comfy_build::SCHEMA | super::comfy_build::SCHEMA_ALIAS) => {
                Ok(Format::ComfyBuild)
            }
            Some(s) if s.starts_with("comfystore.lock/") => Err(bad(format!(
                "already a comfystore lock ({s}); nothing to import"
            ))),
            _ => Err(bad(format!(
                "schema {schema}: not a format comfystore imports (known: {:?}, {:?})",
                super::comfy_build::SCHEMA,
                super::comfy_build::SCHEMA_ALIAS
            ))),
        };
    }
    if [
        "customNodes",
        "baseComfyVersion",
        "pipDependencies",
        "baseImage",
    ]
    .iter()
    .any(|k| has(k))
    {
        return Ok(Format::ComfyBuild);
    }
    if has("basics") || has("basic") {
        return Ok(Format::ComfyCliLock);
    }
    match o.get("custom_nodes") {
        Some(serde_json::Value::Array(_)) => return Ok(Format::CpackSnapshot),
        Some(serde_json::Value::Object(_)) if has("models") => return Ok(Format::ComfyCliLock),
        Some(_) => return Ok(Format::ManagerSnapshot),
        None => {}
    }
    if has("models") || has("python") {
        return Ok(Format::CpackSnapshot);
    }
    if [
        "comfyui",
        "git_custom_nodes",
        "cnr_custom_nodes",
        "file_custom_nodes",
        "pips",
    ]
    .iter()
    .any(|k| has(k))
    {
        return Ok(Format::ManagerSnapshot);
    }
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    Err(bad(format!(
        "not a format comfystore imports (a ComfyUI-Manager snapshot, a comfy-pack .cpack.zip or \
         snapshot.json, a comfy-cli comfy.lock.yaml or build definition); top-level keys: {keys:?}"
    )))
}

/// Import `path`, whatever format it is in, as a lock tagged `tag`. `comfyui_repo` is where
/// ComfyUI's commit is when the file does not say (none of them does): upstream if `None`.
pub fn import_file(path: &Path, tag: &str, comfyui_repo: Option<&str>) -> Result<Imported> {
    let format = detect(path)?;
    let mut warnings = Vec::new();
    let mut refs = Vec::new();
    let lock = match format {
        Format::CpackZip => super::cpack::import_zip(path, tag, comfyui_repo, &mut warnings)?,
        _ => {
            let text = std::fs::read_to_string(path).ctx("read", path)?;
            match format {
                Format::ManagerSnapshot => {
                    let snap = super::snapshot::Snapshot::parse(&text, path)?;
                    super::snapshot::import(&snap, tag, comfyui_repo, &mut warnings)
                }
                Format::CpackSnapshot => {
                    let snap = super::formats::parse_text(&text, path, format)?;
                    super::cpack::import(&snap, None, tag, comfyui_repo, &mut warnings)
                }
                Format::ComfyCliLock => {
                    let l = super::formats::parse_text(&text, path, format)?;
                    super::comfy_cli::import(&l, tag, comfyui_repo, &mut warnings)
                        .map_err(|e| Error::bad_input(path, format!("{format}: {e}")))?
                }
                Format::ComfyBuild => {
                    let d = super::formats::parse_text(&text, path, format)?;
                    super::comfy_build::import(&d, tag, comfyui_repo, &mut warnings, &mut refs)
                }
                Format::CpackZip => unreachable!("handled above"),
            }
        }
    };
    lock.validate()
        .map_err(|e| Error::bad_input(path, format!("the imported lock is invalid: {e}")))?;
    let by_sha = lock.models.iter().filter(|m| m.blake3.is_none()).count();
    if by_sha > 0 {
        warnings.push(format!(
            "{by_sha} model(s) named by sha256 without their blake3: `comfystore fetch --update-lock` \
             on the lock downloads them and writes their blake3 in"
        ));
    }
    Ok(Imported {
        format,
        lock,
        warnings,
        refs,
    })
}
