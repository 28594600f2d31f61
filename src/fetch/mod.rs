//! Getting what the store lacks: HTTP downloads (models, wheels). Git sources, `fetch LOCK`,
//! `verify` and mirrors build on this.

pub mod http;
mod lockfile;

pub use http::{Download, Downloaded, Expect, Fetcher, HttpOptions};
pub use lockfile::{fetch_lock, FetchReport, Part};
