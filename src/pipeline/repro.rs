//! `repro env A B`: do two versions hold the same bytes? Each side is a lockfile or a folder
//! (a ComfyUI install, or a materialized DEST); a folder is scanned as `lock` scans it, into
//! the store, and nothing is written beside it.
//!
//! The comparison is [`diff`] on what decides the bytes: commits where both sides know one
//! (a materialized DEST has no `.git`, so only its trees say what it holds), tree ids,
//! environment ids, package versions and model hashes. Where a model can be downloaded from,
//! which remote a repo names, and a package's wheel or URL when only one side recorded it,
//! change no byte and are left out.

use super::error::Result;
use super::lock::{self, LockOptions};
use crate::lockfile::diff::{self, Change};
use crate::lockfile::{CustomNode, Lockfile, Package};
use crate::place::read_marker;
use crate::store::{ObjectId, Store};
use serde::Serialize;
use std::path::Path;

/// What one side of a comparison was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Lock,
    Install,
}

/// The version at `path`, as a lockfile: a lock file is read; a folder is scanned as `lock`
/// scans it into the store `store` opens (only called for a folder), honouring a DEST
/// marker's venv placed elsewhere.
pub fn version_of(path: &Path, store: impl FnOnce() -> Result<Store>) -> Result<(Kind, Lockfile)> {
    if !path.is_dir() {
        return Ok((Kind::Lock, Lockfile::read(path)?));
    }
    let store = store()?;
    let marked = read_marker(&store, path)?;
    let opts = LockOptions {
        comfy_dir: path.to_path_buf(),
        tag: "repro".into(),
        venv: marked.layout.venv,
        ..Default::default()
    };
    let (lock, report) = lock::lock(&store, &opts)?;
    for w in &report.warnings {
        tracing::debug!("{}: {w}", path.display());
    }
    Ok((Kind::Install, lock))
}

/// Every difference between `a` and `b` that changes a byte of the version: [`diff`]'s
/// changes, with the tree and environment ids where they differ.
pub fn compare(a: &Lockfile, b: &Lockfile) -> Vec<Change> {
    let (mut a, mut b) = (a.clone(), b.clone());
    normalize(&mut a, &mut b);
    let mut out = diff::diff(&a, &b);
    ids(&a, &b, &mut out);
    out
}

/// Clear on both sides what changes no byte, or what only one side knows.
fn normalize(a: &mut Lockfile, b: &mut Lockfile) {
    b.tag.clone_from(&a.tag);
    for c in [&mut a.comfyui, &mut b.comfyui] {
        c.repo = None;
    }
    if a.comfyui.commit.is_none() || b.comfyui.commit.is_none() {
        a.comfyui.commit = None;
        b.comfyui.commit = None;
    }
    pairs(&mut a.custom_nodes, &mut b.custom_nodes, node_facts);
    let (pa, pb) = (a.python.as_mut(), b.python.as_mut());
    if let (Some(pa), Some(pb)) = (pa, pb) {
        pairs(&mut pa.packages, &mut pb.packages, package_facts);
    }
    for m in a.models.iter_mut().chain(b.models.iter_mut()) {
        m.sources.clear();
    }
    // An imported lock names a model by sha256 alone: its blake3 is a one-sided fact.
    for x in a.models.iter_mut() {
        if let Some(y) = b.models.iter_mut().find(|y| y.path == x.path) {
            if x.blake3.is_none() || y.blake3.is_none() {
                (x.blake3, y.blake3) = (None, None);
            }
        }
    }
}

/// A named item of each side, paired by name, given to `f`.
fn pairs<T: Named>(a: &mut [T], b: &mut [T], f: fn(&mut T, &mut T)) {
    for x in a.iter_mut() {
        if let Some(y) = b.iter_mut().find(|y| y.name() == x.name()) {
            f(x, y);
        }
    }
}

trait Named {
    fn name(&self) -> &str;
}

impl Named for CustomNode {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for Package {
    fn name(&self) -> &str {
        &self.name
    }
}

/// A node's remote is no byte; its commit counts when both sides know it.
fn node_facts(x: &mut CustomNode, y: &mut CustomNode) {
    x.repo = None;
    y.repo = None;
    if x.commit.is_none() || y.commit.is_none() {
        x.commit = None;
        y.commit = None;
    }
}

/// A package's wheel, URL and sha256 count when both sides recorded them.
fn package_facts(x: &mut Package, y: &mut Package) {
    if x.wheel.is_none() || y.wheel.is_none() {
        (x.wheel, y.wheel) = (None, None);
    }
    if x.url.is_none() || y.url.is_none() {
        (x.url, y.url) = (None, None);
    }
    if x.sha256.is_none() || y.sha256.is_none() {
        (x.sha256, y.sha256) = (None, None);
    }
}

/// The tree ids behind a moved commit, and the environment's id when the packages changed
/// (`diff` names it only when they did not).
fn ids(a: &Lockfile, b: &Lockfile, out: &mut Vec<Change>) {
    if a.comfyui.commit != b.comfyui.commit {
        tree_change("comfyui", "comfyui", a.comfyui.tree, b.comfyui.tree, out);
    }
    for x in &a.custom_nodes {
        if let Some(y) = b.custom_nodes.iter().find(|y| y.name == x.name) {
            if x.commit != y.commit {
                tree_change("node", &x.name, x.tree, y.tree, out);
            }
        }
    }
    let tree = |l: &Lockfile| l.python.as_ref().and_then(|p| p.tree);
    let named = out
        .iter()
        .any(|c| c.part == "python" && c.name == "environment");
    if !named && tree(a) != tree(b) {
        out.push(Change {
            part: "python",
            name: "environment".into(),
            change: "changed",
            from: Some(id_text(tree(a))),
            to: Some(id_text(tree(b))),
        });
    }
}

/// A `tree` change of `name`, when its trees differ.
fn tree_change(
    part: &'static str,
    name: &str,
    a: Option<ObjectId>,
    b: Option<ObjectId>,
    out: &mut Vec<Change>,
) {
    if a != b {
        out.push(Change {
            part,
            name: name.into(),
            change: "tree",
            from: Some(id_text(a)),
            to: Some(id_text(b)),
        });
    }
}

fn id_text(id: Option<ObjectId>) -> String {
    id.map_or("-".into(), |i| i.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockfile::Model;

    fn node(name: &str, repo: &str, commit: Option<&str>, tree: u8) -> CustomNode {
        CustomNode {
            name: name.into(),
            repo: Some(repo.into()),
            commit: commit.map(String::from),
            tree: Some(ObjectId([tree; 32])),
            ..Default::default()
        }
    }

    #[test]
    fn remotes_sources_and_one_sided_facts_are_no_difference() {
        let mut a = Lockfile::new("a");
        a.custom_nodes = vec![node("n", "https://x/n", Some(&"1".repeat(40)), 1)];
        a.models = vec![Model {
            path: "models/m.bin".into(),
            size: Some(1),
            sha256: crate::store::Sha256([2; 32]),
            blake3: Some(ObjectId([3; 32])),
            sources: vec!["https://x/m.bin".into()],
        }];
        let mut b = a.clone();
        b.tag = "b".into();
        b.custom_nodes = vec![node("n", "https://y/n.git", None, 1)];
        b.models[0].sources.clear();
        b.models[0].blake3 = None;
        assert_eq!(compare(&a, &b), vec![]);
        b.custom_nodes[0].tree = Some(ObjectId([9; 32]));
        let c = compare(&a, &b);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].part, c[0].change), ("node", "changed"));
    }

    #[test]
    fn a_moved_commit_names_its_trees() {
        let mut a = Lockfile::new("a");
        a.custom_nodes = vec![node("n", "r", Some(&"1".repeat(40)), 1)];
        let mut b = a.clone();
        b.custom_nodes = vec![node("n", "r", Some(&"2".repeat(40)), 2)];
        let c = compare(&a, &b);
        let kinds: Vec<_> = c.iter().map(|c| c.change).collect();
        assert_eq!(kinds, ["moved", "tree"], "{c:?}");
        assert_eq!(c[1].to, Some(ObjectId([2; 32]).to_string()));
    }
}
