//! Whether a lock can be rebuilt on a machine that never saw the original install, from the
//! sources the lock itself names: every tree from git at a clean commit, every model from a
//! URL, every package from a pinned wheel. What cannot is named, so the user can fix it
//! (`--sources`, `--index-url`, a commit) or ship a bundle or mirror instead.

use super::{Lockfile, Package};

impl Lockfile {
    /// Everything the lock cannot rebuild from its own sources, one line each; empty when it
    /// is portable.
    pub fn not_portable(&self) -> Vec<String> {
        let mut v = Vec::new();
        let c = &self.comfyui;
        if let Some(why) = source_gap(c.repo.as_deref(), c.commit.as_deref(), c.dirty) {
            v.push(format!("comfyui: {why}"));
        }
        for n in &self.custom_nodes {
            let why = match n.file {
                Some(_) => Some("a single-file node has no source".to_string()),
                None => source_gap(n.repo.as_deref(), n.commit.as_deref(), n.dirty).map(|why| {
                    n.registry
                        .as_ref()
                        .filter(|_| n.repo.is_none())
                        .map_or(why.to_string(), |r| registry_gap(&r.id, &r.version))
                }),
            };
            if let Some(why) = why {
                v.push(format!("custom_nodes/{}: {why}", n.name));
            }
        }
        if let Some(py) = &self.python {
            v.extend(py.packages.iter().filter_map(package_gap));
        }
        v.extend(
            self.models
                .iter()
                .filter(|m| m.sources.is_empty())
                .map(|m| format!("{}: no known source (pass --sources)", m.path)),
        );
        v
    }
}

/// Why a Comfy Registry node with no repository cannot be fetched.
pub fn registry_gap(id: &str, version: &str) -> String {
    format!(
        "a Comfy Registry node ({id} {version}) with no repository and commit: comfystore \
         fetches nodes from git, not from the registry's archives; lock an install that has it \
         (its git checkout gives repo and commit), or import a bundle or mirror"
    )
}

/// Why a source tree cannot come from git, if it cannot.
fn source_gap(repo: Option<&str>, commit: Option<&str>, dirty: bool) -> Option<&'static str> {
    match (repo, commit) {
        _ if dirty => Some("uncommitted changes: only its stored tree reproduces it"),
        (Some(_), Some(_)) => None,
        _ => Some("no repo and commit to fetch it from"),
    }
}

/// Why a package cannot be installed from a pinned wheel, if it cannot.
fn package_gap(p: &Package) -> Option<String> {
    let why = if p.editable {
        "editable install"
    } else if p.wheel.is_some() && p.url.is_some() && p.sha256.is_some() {
        return None;
    } else if p.url.is_some() && p.wheel.is_none() {
        "installed from a direct reference, not a wheel"
    } else {
        "not pinned to a wheel (no index named to lock offered it: --index-url, --extra-index-url)"
    };
    Some(format!("python package {}: {why}", p.name))
}
