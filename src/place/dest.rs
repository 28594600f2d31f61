//! DEST itself: the places it may not be, and the name of the GC root that keeps its tree.

use crate::place::error::{Error, IoContext, Result};
use crate::store::Store;
use std::fs;
use std::path::{Path, PathBuf};

/// Canonical DEST, refusing places whose removal or overwrite would be a disaster.
pub(super) fn check_dest(store: &Store, dest: &Path, create: bool) -> Result<PathBuf> {
    if create {
        fs::create_dir_all(dest).ctx("create", dest)?;
    }
    let dest = dest.canonicalize().ctx("resolve", dest)?;
    let bad = |reason: &str| Err(Error::bad_input(&dest, reason.to_string()));
    if dest.parent().is_none() {
        return bad("refusing to use / as a destination");
    }
    if dest.starts_with(store.root()) {
        return bad("refusing a destination inside the store");
    }
    if store.root().starts_with(&dest) {
        return bad("refusing a destination that contains the store");
    }
    Ok(dest)
}

/// The GC root a newly materialized DEST gets: named by its canonical path.
pub(super) fn root_name(dest: &Path) -> String {
    let h = blake3::hash(dest.as_os_str().as_encoded_bytes()).to_hex();
    format!("materialized/{}", &h[..32])
}
