//! The placing engine: turn a stored tree into a real directory, check it, repair it, remove
//! it. It knows trees and paths, not lockfiles.
//!
//! Every operation starts from one scan of DEST (never following symlinks) compared with the
//! tree, so the commands agree on what "intact" means. Content is checked through the index's
//! stat cache: a file whose (device, inode, size, mtime, ctime) is unchanged since it was
//! placed or last verified is not read again.
//!
//! Materializing is split the way uv's installer is: `scan` and `check` look, `plan` decides
//! (plain data, no I/O), `apply` does.

mod apply;
pub mod beneath;
mod check;
mod dest;
pub mod error;
pub mod link;
mod marker;
mod materialize;
mod plan;
mod remove;
mod scan;
mod status;

pub use apply::{KeptEdit, MaterializeReport};
pub use check::EntryState;
pub use link::{LinkMode, LinkPolicy, Method, PrefixRule};
pub use marker::{read_marker, Layout, Marked, Marker, MARKER_NAME};
pub use materialize::{materialize, materialize_force, materialize_laid_out, repair_in_place};
pub use plan::{
    dropped, plan, prunable, tree_dirs, Dropped, MarkerPlan, Plan, PlanInput, Removal, Write,
};
pub use remove::{remove, RemoveReport};
pub use scan::{Kind, Scan, Seen};
pub use status::{
    scan_ahead, status, status_against, status_against_scanned, Scanned, StatusReport,
};

pub use error::{Error, Result};

use crate::store::{ObjectId, Store};
use error::IoContext;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Put one stored object at `rel` beneath `root` (a new file; its folders are created), linked
/// the way `mode` allows. Every folder on the way is opened beneath `root` without following a
/// symlink, so a planted `models -> /elsewhere` is refused, never written through. For
/// `add-url --path` (a model placed into an install) and `mirror`.
pub fn place_object(
    store: &Store,
    id: &ObjectId,
    root: &Path,
    rel: &str,
    mode: LinkMode,
) -> Result<Method> {
    crate::store::check_rel_path(rel).map_err(|e| Error::bad_input(root.join(rel), e))?;
    let src = store.checked_object(id, false)?;
    let top = beneath::Beneath::open(root)?;
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir = top.create_dirs(parent)?;
    let meta = fs::metadata(&src).ctx("stat", &src)?;
    let devs = (meta.dev(), dir.dev().ctx("stat", dir.path())?);
    let probe = link::Probe::default();
    let (method, _) = link::place(
        &probe,
        devs,
        mode,
        (&src, store.object_dir(&src), meta.len()),
        &dir,
        name,
        false,
        false,
        &crate::report::Nothing,
    )?;
    Ok(method)
}
