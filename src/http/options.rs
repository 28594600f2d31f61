//! How downloads behave: retries, timeouts, parallelism, ranges and credentials, all chosen
//! by the caller (the engine reads no environment).

use super::credentials::Credentials;
use std::path::PathBuf;
use std::time::Duration;

/// The first backoff delay unless the caller picks another.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// The range size of parallel downloads unless the caller picks another.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;
/// No range is smaller: more requests would cost more than they gain.
const MIN_SEGMENT_SIZE: u64 = 1 << 20;

/// How downloads behave.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Retries per source after the first try.
    pub retries: u32,
    /// An attempt that receives no body bytes for this long is abandoned (and retried).
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// First backoff delay; doubles per retry (with jitter), capped at 30 s.
    pub backoff: Duration,
    /// Downloads at once.
    pub jobs: usize,
    /// Never open a connection: every download fails, naming what it would fetch.
    pub offline: bool,
    /// Connections per large file: ranges fetched in parallel from a server that supports
    /// them (1 = one stream).
    pub connections: usize,
    /// Files at least this large are split into ranges of `segment_size` bytes.
    pub segment_threshold: u64,
    pub segment_size: u64,
    /// Bearer tokens by host.
    pub credentials: Credentials,
    /// Where `file://` sources may be read: `Some(folders)` only files beneath them (after
    /// resolving symlinks), `None` any file. A lock's sources are untrusted (`file:///etc/shadow`
    /// would be read with comfystore's rights, and its size told), so the default is
    /// `Some(vec![])` (no local file); `fetch` allows its `--mirror` and `--allow-file` folders,
    /// and a file the user named on the command line (`add-url`, `pin`) is read as given.
    pub file_roots: Option<Vec<PathBuf>>,
}

impl HttpOptions {
    /// Ranges of `size` bytes (at least 1 MiB) for parallel downloads; files of 4 ranges or
    /// more are split.
    pub fn with_segment_size(self, size: u64) -> HttpOptions {
        let segment_size = size.max(MIN_SEGMENT_SIZE);
        HttpOptions {
            segment_threshold: 4 * segment_size,
            segment_size,
            ..self
        }
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            retries: 5,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            backoff: DEFAULT_BACKOFF,
            jobs: 4,
            offline: false,
            connections: 1,
            segment_threshold: 0,
            segment_size: 0,
            credentials: Credentials::default(),
            file_roots: Some(Vec::new()),
        }
        .with_segment_size(DEFAULT_SEGMENT_SIZE)
    }
}
