//! comfystore: a content-addressed store for ComfyUI installs.
//!
//! The data flows lock → store → materialize → run. This crate so far holds the store
//! ([`store`]): objects named by BLAKE3, tree manifests, the redb index, GC roots, fsck, gc
//! and bundles. The command line lives in [`cli`]; `main.rs` only calls it.

pub mod cli;
pub mod error;
pub mod progress;
pub mod store;

pub use error::{Error, Result};
pub use store::{ObjectId, Sha256, Store};
