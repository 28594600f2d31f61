//! What to download and what a download gave: the caller's side of the engine.

use crate::store::{Digests, Error, ObjectId, PutResult, Result, Sha256};
use serde::Serialize;

/// What the downloaded bytes must hash to. With neither hash given, any bytes are accepted
/// (and named by their BLAKE3).
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub sha256: Option<Sha256>,
    pub blake3: Option<ObjectId>,
    pub size: Option<u64>,
}

impl Expect {
    /// Checked by the store as the bytes are published, so a mismatch is the store's error.
    pub(super) fn check(&self, d: &Digests, what: &str) -> Result<()> {
        let mismatch = |expected: String, actual: String| Error::Mismatch {
            what: what.to_string(),
            expected,
            actual,
        };
        if let Some(size) = self.size.filter(|s| *s != d.size) {
            return Err(mismatch(
                format!("{size} bytes"),
                format!("{} bytes", d.size),
            ));
        }
        if let (Some(want), Some(got)) = (self.sha256, d.sha256) {
            if want != got {
                return Err(mismatch(want.to_string(), got.to_string()));
            }
        }
        if let Some(want) = self.blake3.filter(|w| *w != d.b3) {
            return Err(mismatch(want.to_string(), d.b3.to_string()));
        }
        Ok(())
    }
}

/// One file to download.
#[derive(Clone, Debug)]
pub struct Download {
    /// What to call it in messages and progress (a lock path, or the URL).
    pub label: String,
    /// URLs, tried in order.
    pub sources: Vec<String>,
    pub expect: Expect,
}

impl Download {
    /// The name of its download lock: the hash it must have (none when any bytes will do).
    pub(crate) fn lock_key(&self) -> Option<String> {
        match (self.expect.blake3, self.expect.sha256) {
            (Some(b3), _) => Some(format!("download-b3-{}", b3.hex())),
            (None, Some(sha)) => Some(format!("download-sha256-{}", sha.hex())),
            (None, None) => None,
        }
    }
}

/// What a finished download gave.
#[derive(Clone, Debug, Serialize)]
pub struct Downloaded {
    pub label: String,
    pub id: ObjectId,
    /// Bare hex, as hubs print it.
    pub sha256: String,
    pub size: u64,
    /// The source that delivered it (credentials removed).
    pub url: String,
    /// Requests made for it, over all sources.
    pub attempts: u32,
    /// Bytes fetched by range requests after an interruption.
    pub resumed_bytes: u64,
    /// False when the store already had the content.
    pub new: bool,
}

impl Downloaded {
    pub(super) fn of(
        d: &Download,
        put: &PutResult,
        url: String,
        attempts: u32,
        resumed: u64,
    ) -> Downloaded {
        Downloaded {
            label: d.label.clone(),
            id: put.digests.b3,
            sha256: put.digests.sha256.map(|s| s.hex()).unwrap_or_default(),
            size: put.digests.size,
            url,
            attempts,
            resumed_bytes: resumed,
            new: put.new,
        }
    }
}
