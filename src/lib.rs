//! comfystore: a content-addressed store for ComfyUI installs.
//!
//! The data flows lock → store → materialize → run: [`lock`] (lockfiles), [`store`] (objects
//! named by BLAKE3, tree manifests, the redb index, GC roots, fsck, gc, bundles), [`fetch`]
//! (git, HTTP, mirrors), [`python`] (pinning and stored environments), [`materialize`]
//! (versions into real directories, status, verify, remove) and [`run`] (ComfyUI jobs, the
//! RunPod worker). The command line lives in [`cli`]; `main.rs` only calls it.

pub mod cli;
pub mod error;
pub mod fetch;
pub mod init;
pub mod lock;
pub mod materialize;
pub mod progress;
pub mod python;
pub mod run;
pub mod store;

pub use error::{Error, Result};
pub use store::{ObjectId, Sha256, Store};
