//! Where ComfyUI keeps files: its own `input`, `output` and `temp` folders, or those
//! `--input-directory`, `--output-directory` and `--temp-directory` name.

use super::api::Produced;
use std::path::{Path, PathBuf};

/// ComfyUI's input, output and temp folders.
#[derive(Clone, Debug)]
pub struct Folders {
    pub input: PathBuf,
    pub output: PathBuf,
    pub temp: PathBuf,
}

impl Folders {
    /// The folders of a ComfyUI in `dest` started with the extra arguments `args`.
    pub fn of(dest: &Path, args: &[String]) -> Folders {
        let flag = |name: &str, default: &str| {
            let mut it = args.iter();
            while let Some(a) = it.next() {
                if let Some(v) = a.strip_prefix(&format!("{name}=")) {
                    return dest.join(v);
                }
                if a == name {
                    if let Some(v) = it.next() {
                        return dest.join(v);
                    }
                }
            }
            dest.join(default)
        };
        Folders {
            input: flag("--input-directory", "input"),
            output: flag("--output-directory", "output"),
            temp: flag("--temp-directory", "temp"),
        }
    }

    /// Where a file `/history` lists is on disk, confined to the folder its `type` names:
    /// `subfolder` and `filename` are what a custom node reported, so they are untrusted.
    /// Refused: an unknown `type`, an absolute path, `..`, `.`, an empty part, a NUL, a
    /// `filename` with a separator, and any part below the folder that is a symlink now (a
    /// part that does not exist yet is fine: nothing is there to read or delete).
    pub fn path_of(&self, f: &Produced) -> Result<PathBuf, Refused> {
        let refused = |why: &'static str| Refused {
            kind: f.kind.clone(),
            subfolder: f.subfolder.clone(),
            filename: f.filename.clone(),
            why,
        };
        let root = match f.kind.as_str() {
            "temp" => &self.temp,
            "input" => &self.input,
            "output" => &self.output,
            _ => return Err(refused("its type is not output, temp or input")),
        };
        if f.filename.is_empty() || f.filename.contains(['/', '\\']) {
            return Err(refused("its filename is not one plain name"));
        }
        let mut parts: Vec<&str> = Vec::new();
        if !f.subfolder.is_empty() {
            if f.subfolder.starts_with(['/', '\\']) {
                return Err(refused("its subfolder is an absolute path"));
            }
            parts.extend(f.subfolder.split(['/', '\\']).filter(|p| !p.is_empty()));
        }
        parts.push(&f.filename);
        let mut path = root.clone();
        for part in parts {
            if part == ".." || part == "." || part.contains('\0') {
                return Err(refused("it leaves ComfyUI's folder"));
            }
            path.push(part);
        }
        if !self.beneath(&path) {
            return Err(refused("it goes through a symlink"));
        }
        Ok(path)
    }

    /// Whether `path` is beneath one of the three folders with no symlink on the way there
    /// (checked again just before a file is deleted: the folders may have changed since).
    pub fn beneath(&self, path: &Path) -> bool {
        let Some(root) = [&self.input, &self.output, &self.temp]
            .into_iter()
            .find(|r| path.starts_with(r) && path != r.as_path())
        else {
            return false;
        };
        let Ok(rest) = path.strip_prefix(root) else {
            return false;
        };
        let mut at = root.clone();
        for c in rest.components() {
            let std::path::Component::Normal(name) = c else {
                return false;
            };
            at.push(name);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => return false,
                Ok(_) => {}
                // Not there (yet): nothing beneath it can be a symlink either.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Whether `dir` is one of the three folders themselves (never deleted).
    pub fn is_root(&self, dir: &Path) -> bool {
        [&self.input, &self.output, &self.temp]
            .iter()
            .any(|r| dir == r.as_path())
    }
}

/// A file `/history` listed at a place the worker does not touch: outside ComfyUI's input,
/// output and temp folders, or through a symlink. It is neither read nor deleted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused output (type {kind:?}, subfolder {subfolder:?}, filename {filename:?}): {why}; it is neither read nor deleted")]
pub struct Refused {
    pub kind: String,
    pub subfolder: String,
    pub filename: String,
    pub why: &'static str,
}
