//! Getting what the store lacks: HTTP downloads (models, wheels), trees rebuilt from git, and
//! offline mirrors; `fetch LOCK` puts them together.

mod git;
pub mod http;
mod lockfile;
mod mirror;

pub use git::{fetch_tree, GitSource};
pub use http::{Download, Downloaded, Expect, Fetcher, HttpOptions};
pub use lockfile::{fetch_lock, FetchOptions, FetchReport, FetchedTree, Part};
pub use mirror::{write_mirror, MirrorFile, MirrorManifest, MirrorReport, MIRROR_SCHEMA};
