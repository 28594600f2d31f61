//! comfystore: a content-addressed store for ComfyUI installs.
//!
//! The data flows lock → store → materialize → run, and the modules are layered the same way
//! (`docs/tech.md` has the table, and `tests/layers.rs` enforces it):
//!
//! - **Foundations:** [`error`], [`secret`] (what a credential looks like and how it is
//!   hidden), [`ident`] (commit ids, package names), [`process`] (running git, uv and pip) and
//!   [`report`] (how long operations tell a caller about their progress).
//! - **Engines** know nothing of lockfiles, clap or terminals: [`store`] (objects, trees, the
//!   index, roots, gc, fsck, bundles), [`place`] (a tree placed at a path: link modes, scan,
//!   check, plan, apply, remove), [`git`], [`http`] (downloads), [`python`] (interpreters,
//!   pinning, environments), [`comfy`] (a ComfyUI process and its HTTP API) and [`gcs`]
//!   (Google Cloud Storage for job outputs).
//! - **The lockfile format** ([`lockfile`]) is a leaf: it knows store ids and nothing above.
//! - **Pipelines** ([`pipeline`]) are the verbs over a lockfile: lock, fetch, materialize,
//!   verify, mirror, init. Each is a short sequence of engine calls.
//! - **The worker** ([`worker`]) runs jobs on a materialized version: the worker-comfyui job
//!   contract, output sinks, RunPod's protocol and the local API.
//!
//! The command line (`src/cli/`, in the binary) is the edge: clap, progress bars, exit codes.

pub mod backoff;
pub mod comfy;
pub mod error;
pub mod gcs;
pub mod git;
pub mod http;
pub mod ident;
pub mod lockfile;
pub mod pipeline;
pub mod place;
pub mod process;
pub mod python;
pub mod report;
pub mod secret;
pub mod store;
pub mod worker;

pub use pipeline::error::{Error, Result};
pub use store::{ObjectId, Sha256, Store};
