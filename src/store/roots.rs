//! GC roots: `roots/<name>` files naming what gc must keep. A root lists one or more ids (a
//! lockfile pins several trees), and may say which directory it stands for (a materialized
//! version), so stale roots can be found.

use super::durable;
use super::id::ObjectId;
use super::Store;
use crate::store::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The content of a root file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Root {
    pub ids: Vec<ObjectId>,
    /// The directory this root keeps alive, for roots made by `materialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// For a materialized directory: the paths outside it that its version placed or names
    /// (an environment placed elsewhere, the shared models folder, the base interpreter).
    /// DEST's marker is user-writable; a path it names outside DEST is only trusted when the
    /// store registered it here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside: Vec<PathBuf>,
}

/// Root names: letters, digits and `. _ - + @ =`, parts separated by `/`; no part starts with a
/// dot, so a name can never leave `roots/` or hide a temp file.
pub fn check_root_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+@=".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::RootName(name.to_string()))
    }
}

impl Store {
    fn root_path(&self, name: &str) -> Result<PathBuf> {
        check_root_name(name)?;
        Ok(self.root().join("roots").join(name))
    }

    /// Create or replace a root. Every id must be in the store (as a tree or an object).
    ///
    /// Takes the writers' lock, so gc (which lists roots under its exclusive lock) never sees
    /// the content without the root. A caller that has just published the content must hold
    /// [`Store::lock_shared`] from before publishing until this returns; otherwise gc with a
    /// zero grace period may delete the content in between, and this returns `NotFound`.
    ///
    /// A root that already says exactly this is left alone (nothing written), so a worker
    /// that may only read the store can still materialize a version another has registered.
    pub fn add_root(&self, name: &str, root: &Root) -> Result<()> {
        let path = self.root_path(name)?;
        if self.read_root(name).ok().flatten().as_ref() == Some(root) {
            return Ok(());
        }
        let _lock = self.lock_shared()?;
        self.flush_pending(false)?;
        for id in &root.ids {
            if !self.has_tree(id) && !self.has_object(id) {
                return Err(Error::NotFound(id.to_string()));
            }
        }
        let mut body =
            serde_json::to_vec_pretty(root).map_err(|e| Error::bad_input(&path, e.to_string()))?;
        body.push(b'\n');
        durable::write_file_atomic(&path, &body, 0o644)
    }

    /// [`Store::add_root`], except in a store this process may only read, where a root not
    /// already there is left unwritten (said at info level): a reader cannot pin what it
    /// uses, and must not fail for it. Whether it was written (or already there).
    pub fn add_root_if_writable(&self, name: &str, root: &Root) -> Result<bool> {
        match self.add_root(name, root) {
            Ok(()) => Ok(true),
            Err(e @ Error::Permission { .. }) => {
                tracing::info!("root {name} not written: {e}");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The root called `name`, if there is one.
    pub fn read_root(&self, name: &str) -> Result<Option<Root>> {
        let path = self.root_path(name)?;
        match read_root(&path) {
            Ok(r) => Ok(Some(r)),
            Err(Error::Io(crate::error::IoError { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Remove a root; false if there was none.
    pub fn remove_root(&self, name: &str) -> Result<bool> {
        let path = self.root_path(name)?;
        self.writable_for(&path)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("remove root", &path),
        }
    }

    /// Every root, sorted by name. A root file that cannot be read is an error: gc must never
    /// run on a partial view of the roots.
    pub fn list_roots(&self) -> Result<Vec<(String, Root)>> {
        let dir = self.root().join("roots");
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).min_depth(1) {
            let entry = entry.map_err(|e| Error::io("list roots", dir.clone(), e.into()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(&dir).unwrap_or(entry.path());
            let name = rel.to_string_lossy().to_string();
            if name.split('/').any(|p| p.starts_with('.')) {
                continue; // an unpublished temp file of write_file_atomic
            }
            out.push((name, read_root(entry.path())?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn read_root(path: &Path) -> Result<Root> {
    let text = fs::read(path).ctx("read root", path)?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::bad_input(path, format!("invalid root file: {e}")))
}
