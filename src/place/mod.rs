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

pub use apply::MaterializeReport;
pub use check::EntryState;
pub use link::{LinkMode, LinkPolicy, Method, PrefixRule};
pub use marker::{read_marker, Layout, Marked, Marker, MARKER_NAME};
pub use materialize::{materialize, materialize_laid_out, repair_in_place};
pub use plan::{
    dropped, plan, prunable, tree_dirs, Dropped, MarkerPlan, Plan, PlanInput, Removal, Write,
};
pub use remove::{remove, RemoveReport};
pub use scan::{Kind, Scan, Seen};
pub use status::{status, status_against, StatusReport};

pub use error::{Error, Result};

use crate::store::{ObjectId, Store};
use error::IoContext;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Put one stored object at `dest` (a new file; its folder is created), linked the way `mode`
/// allows. For `add-url --path`: a single model placed into an install.
pub fn place_object(store: &Store, id: &ObjectId, dest: &Path, mode: LinkMode) -> Result<Method> {
    let src = store.checked_object(id, false)?;
    let parent = dest
        .parent()
        .ok_or_else(|| Error::bad_input(dest, "no parent folder"))?;
    fs::create_dir_all(parent).ctx("create", parent)?;
    let devs = (
        fs::metadata(&src).ctx("stat", &src)?.dev(),
        fs::metadata(parent).ctx("stat", parent)?.dev(),
    );
    link::place(
        &link::Probe::default(),
        devs,
        mode,
        &src,
        dest,
        false,
        false,
    )
}
