//! Which tree a repo and commit gave: `fetch` rebuilds a source from git once and records the
//! tree here, so a lock that names only repo + commit (one imported from a ComfyUI-Manager
//! snapshot) finds it again without cloning, and its version can be composed.
//!
//! The record is a GC root `git-tree/<key>` listing the tree, like `env/<key>`: it lives in the
//! store's files, keeps the tree through gc, and `root rm` lets gc take it.

use super::id::ObjectId;
use super::roots::Root;
use super::Store;
use crate::store::error::Result;

/// The root name for the tree of `repo` at `commit` with the top-level names `excludes` left
/// out: `git-tree/` and the first 32 hex of BLAKE3 over
/// `comfystore.git-tree/1\n<repo>\n<commit>\n` and the sorted excludes, one per line.
pub fn git_tree_root(repo: &str, commit: &str, excludes: &[String]) -> String {
    let mut ex: Vec<&str> = excludes.iter().map(String::as_str).collect();
    ex.sort_unstable();
    let mut text = format!("comfystore.git-tree/1\n{repo}\n{commit}\n");
    for e in ex {
        text.push_str(e);
        text.push('\n');
    }
    format!("git-tree/{}", &blake3::hash(text.as_bytes()).to_hex()[..32])
}

impl Store {
    /// The tree recorded for `repo` at `commit` (see [`git_tree_root`]), if the store still
    /// holds it.
    pub fn git_tree(
        &self,
        repo: &str,
        commit: &str,
        excludes: &[String],
    ) -> Result<Option<ObjectId>> {
        let root = self.read_root(&git_tree_root(repo, commit, excludes))?;
        Ok(root
            .and_then(|r| r.ids.first().copied())
            .filter(|t| self.has_tree(t)))
    }

    /// Record that `repo` at `commit` gave `tree`.
    pub fn record_git_tree(
        &self,
        repo: &str,
        commit: &str,
        excludes: &[String],
        tree: ObjectId,
    ) -> Result<()> {
        self.add_root(
            &git_tree_root(repo, commit, excludes),
            &Root {
                ids: vec![tree],
                path: None,
                ..Default::default()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_repo_commit_and_excludes_but_not_their_order() {
        let c = "0".repeat(40);
        let ex = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = git_tree_root("/r.git", &c, &ex(&["models", "venv"]));
        assert!(a.starts_with("git-tree/") && a.len() == "git-tree/".len() + 32);
        assert_eq!(a, git_tree_root("/r.git", &c, &ex(&["venv", "models"])));
        assert_ne!(a, git_tree_root("/s.git", &c, &ex(&["models", "venv"])));
        assert_ne!(
            a,
            git_tree_root("/r.git", &"1".repeat(40), &ex(&["models", "venv"]))
        );
        assert_ne!(a, git_tree_root("/r.git", &c, &[]));
    }
}
