//! HTTP(S) downloads into the store: resumable, retried, checksummed while streaming.
//!
//! Each download feeds one pipeline thread that writes a private temp file in the store's
//! `tmp/` and hashes it (BLAKE3 with the write, SHA-256 on a second thread: the same code as
//! `add`). Nothing is published unless the digests match what the caller expects, so wrong
//! bytes never enter the store. A dropped connection is resumed with `Range` + `If-Range` into
//! the same pipeline; a server that ignores ranges is read again from zero and the bytes we
//! already have are skipped. Transient failures (connection errors, stalls, 5xx, 429) are
//! retried with exponential backoff and jitter, honouring `Retry-After`; 4xx are final.
//! Redirects are followed by hand so that a token is only ever sent to its own host.
//!
//! Everything the engine needs (tokens, backoff, range size) comes in [`HttpOptions`]; it
//! reads no environment.

mod attempt;
mod credentials;
mod download;
pub mod error;
mod fetcher;
mod file;
mod options;
mod pipe;
mod segmented;
mod source;
mod state;

pub use credentials::Credentials;
pub use download::{Download, Downloaded, Expect};
pub use error::{Error, Result};
pub use fetcher::Fetcher;
pub use options::{HttpOptions, DEFAULT_BACKOFF, DEFAULT_SEGMENT_SIZE};
/// The store's hashing thread reads a download through it (`pull` uses it too).
pub(crate) use pipe::{ChannelReader, ChannelWriter, Chunk};

/// Sources with this prefix are local files (an offline mirror), read without the network.
pub const FILE_SCHEME: &str = "file://";
