//! What `lock` must not take for a custom node or a model: files ComfyUI's own repo tracks
//! (they are in the `comfyui` tree, and git can rebuild them) and `lock`'s own outputs (a lock
//! that locks itself differs every time it is made).

use crate::store::MARKER_NAME;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where `lock` writes its lockfiles by default (relative to where it runs).
pub const LOCKFILES_DIR: &str = "lockfiles";

/// Paths inside an install that are ComfyUI's or comfystore's, not the user's nodes and models.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// The install, canonical.
    comfy: PathBuf,
    /// What the `comfyui` tree holds (relative, `/`-separated), when ComfyUI is a git checkout.
    tree: BTreeSet<String>,
    /// `lock`'s outputs: `lockfiles/`, the lockfile written, comfystore's marker files.
    outputs: Vec<PathBuf>,
}

impl Claimed {
    /// `lock`'s outputs for the install at `comfy` (canonical), writing its lock to `output`.
    pub fn new(comfy: &Path, output: Option<&Path>) -> Claimed {
        let mut outputs: Vec<PathBuf> = [LOCKFILES_DIR, MARKER_NAME, crate::python::ENV_META]
            .iter()
            .map(|n| comfy.join(n))
            .collect();
        outputs.extend(output.map(resolve));
        Claimed {
            comfy: comfy.to_path_buf(),
            tree: BTreeSet::new(),
            outputs,
        }
    }

    /// The outputs inside the install, relative: what the `comfyui` tree leaves out.
    pub fn output_excludes(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter_map(|o| o.strip_prefix(&self.comfy).ok())
            .filter(|r| !r.as_os_str().is_empty())
            .map(|r| r.to_string_lossy().into_owned())
            .collect()
    }

    /// Record what the `comfyui` tree holds (git's list of the checkout).
    pub fn set_tree(&mut self, files: &[String]) {
        self.tree = files.iter().cloned().collect();
    }

    /// Whether the file or folder at `abs` is `lock`'s output or part of the `comfyui` tree.
    pub fn owns(&self, abs: &Path) -> bool {
        self.outputs.iter().any(|o| abs.starts_with(o))
            || abs
                .strip_prefix(&self.comfy)
                .ok()
                .and_then(Path::to_str)
                .is_some_and(|rel| self.in_tree(rel))
    }

    /// Whether the `comfyui` tree holds `rel`, or files beneath it: a node or model placed
    /// there would clash with ComfyUI's own.
    pub fn in_tree(&self, rel: &str) -> bool {
        let folder = format!("{rel}/");
        self.tree.contains(rel)
            || self
                .tree
                .range(folder.clone()..)
                .next()
                .is_some_and(|p| p.starts_with(&folder))
    }
}

/// `path` made absolute with its existing part canonical (the lockfile need not exist yet), so
/// it compares with the canonical install.
fn resolve(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for dir in abs.ancestors() {
        if let Ok(real) = dir.canonicalize() {
            return match abs.strip_prefix(dir) {
                Ok(rest) if !rest.as_os_str().is_empty() => real.join(rest),
                _ => real,
            };
        }
    }
    abs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_paths_cover_their_folders_only() {
        let mut c = Claimed::new(Path::new("/c"), Some(Path::new("/c/locks/v1.lock.json")));
        c.set_tree(&["custom_nodes/ws.py".into(), "models/configs/a.yaml".into()]);
        assert!(c.in_tree("models/configs"));
        assert!(c.in_tree("custom_nodes/ws.py"));
        assert!(!c.in_tree("models/config"));
        assert!(!c.in_tree("custom_nodes/ws"));
        assert!(c.owns(Path::new("/c/models/configs/a.yaml")));
        assert!(c.owns(Path::new("/c/lockfiles/x.lock.json")));
        assert!(c.owns(Path::new("/c/locks/v1.lock.json")));
        assert!(!c.owns(Path::new("/c/models/configs/b.yaml")));
        assert!(c
            .output_excludes()
            .contains(&"locks/v1.lock.json".to_string()));
    }
}
