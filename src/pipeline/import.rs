//! `import-snapshot --resolve-refs`: the git sources an imported file names by tag or branch
//! (a build definition's `baseComfyVersion: v0.3.43`, a node's `gitRef: main`) pinned to the
//! commit their remote gives now, with `git ls-remote`. The format readers stay offline
//! (`lockfile::detect`); this is the one step that asks the network.

use crate::lockfile::detect::Imported;
use crate::lockfile::{CustomNode, Error as LockError};
use crate::pipeline::error::Result;

/// Pin every ref of `imported` its remote knows: its warning is replaced by a note of the
/// commit it was pinned to. A ref the remote lacks keeps its warning, with why; a remote that
/// cannot be reached is an error (nothing is half-pinned).
pub fn resolve_refs(imported: &mut Imported) -> Result<()> {
    let refs = std::mem::take(&mut imported.refs);
    for r in refs {
        let Some(commit) = crate::git::ls_remote(&r.repo, &r.reference)? else {
            let note = format!(
                "{} (the repository {} has no tag or branch {:?})",
                r.warning, r.repo, r.reference
            );
            replace(&mut imported.warnings, &r.warning, note);
            continue;
        };
        let what = match &r.node {
            None => {
                imported.lock.comfyui.repo = Some(r.repo.clone());
                imported.lock.comfyui.commit = Some(commit.clone());
                "ComfyUI".to_string()
            }
            Some(name) if imported.lock.custom_nodes.iter().any(|n| &n.name == name) => {
                let note = format!("{}; already in the lock from another entry", r.warning);
                replace(&mut imported.warnings, &r.warning, note);
                continue;
            }
            Some(name) => {
                imported.lock.custom_nodes.push(CustomNode {
                    name: name.clone(),
                    repo: Some(r.repo.clone()),
                    commit: Some(commit.clone()),
                    ..Default::default()
                });
                format!("custom node {name}")
            }
        };
        let note = format!(
            "{what}: {:?} pinned to {commit}, what {} gives for it now",
            r.reference, r.repo
        );
        replace(&mut imported.warnings, &r.warning, note);
    }
    imported.lock.canonicalize();
    imported
        .lock
        .validate()
        .map_err(|e| LockError::bad_input("the imported lock", e))?;
    Ok(())
}

fn replace(warnings: &mut [String], old: &str, new: String) {
    if let Some(w) = warnings.iter_mut().find(|w| *w == old) {
        *w = new;
    }
}
