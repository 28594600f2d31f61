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

    /// Where a file `/history` lists is on disk.
    pub fn path_of(&self, f: &Produced) -> PathBuf {
        let root = match f.kind.as_str() {
            "temp" => &self.temp,
            "input" => &self.input,
            _ => &self.output,
        };
        root.join(&f.subfolder).join(&f.filename)
    }

    /// Whether `dir` is one of the three folders themselves (never deleted).
    pub fn is_root(&self, dir: &Path) -> bool {
        [&self.input, &self.output, &self.temp]
            .iter()
            .any(|r| dir == r.as_path())
    }
}
