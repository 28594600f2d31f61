//! Where a lock's parts sit in a ComfyUI folder: which top-level names are data rather than
//! ComfyUI's source, where disabled nodes go, and the parts a command can be limited to.

use serde::Serialize;

/// Top-level folders of a ComfyUI install that hold user data, models or nodes: what is
/// untracked in them is not part of the `comfyui` tree (what ComfyUI's repo tracks there is).
pub const COMFY_DATA_DIRS: &[&str] = &["models", "output", "input", "temp", "user", "custom_nodes"];

/// Where ComfyUI-Manager moves disabled nodes.
pub const DISABLED_DIR: &str = ".disabled";

/// The top-level names whose untracked files are left out of the `comfyui` tree (data folders
/// and venvs), besides the venv `lock` finds elsewhere inside the install and `lock`'s outputs.
pub fn comfyui_excludes() -> Vec<String> {
    let mut v: Vec<String> = COMFY_DATA_DIRS.iter().map(|s| s.to_string()).collect();
    v.extend(["venv".to_string(), ".venv".to_string()]);
    v
}

/// A part of a lock that `fetch`, `verify` and `mirror` can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Models,
    Nodes,
    Python,
}
