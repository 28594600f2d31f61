//! The verbs over a lockfile. Each is a readable sequence of engine calls:
//!
//! - [`lock`]: scan a ComfyUI install, store its parts, write a lockfile;
//! - [`fetch`]: make the store complete for a lock (git, HTTP, mirrors);
//! - [`version`]: a lock as one tree, the layout of a runnable version;
//! - [`materialize`]: fetch, build the environment, compose, place;
//! - [`verify`]: check (and repair) an install against its lock;
//! - [`mirror`]: an offline mirror of a lock;
//! - [`init`]: clone ComfyUI and give it a pinned environment;
//! - [`repro`]: are two versions (locks or installs) the same, byte for byte;
//! - [`repro_run`]: does a workflow give the same output files on every fresh run of a lock,
//!   and the ones recorded (the runs themselves are the worker's, handed in);
//! - [`import`]: the tags and branches an imported file names, pinned to commits by their
//!   remotes (`import-snapshot --resolve-refs`);
//! - [`remote`]: push a closure to a GCS bucket in the store's layout, and pull it back;
//! - [`hf_cache`]: a Hugging Face hub cache's files into the store, with their sources;
//! - [`http_env`]: download settings (tokens, backoff, range size) from the environment, for
//!   the command line to pass down.

pub mod error;
pub mod fetch;
pub mod hf_cache;
pub mod http_env;
pub mod import;
pub mod init;
pub mod lock;
pub mod materialize;
pub mod mirror;
pub mod python_section;
pub mod remote;
pub mod repro;
pub mod repro_run;
pub mod verify;
pub mod version;
