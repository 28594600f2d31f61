//! What to download and what a download gave: the caller's side of the engine.

use crate::store::{Digests, Error, ObjectId, PutResult, Result, Sha256, Store};
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

impl Expect {
    /// The fetch lock of a file of known hash: its SHA-256, as every lock names one, else its
    /// BLAKE3.
    pub(super) fn lock_key(&self) -> Option<String> {
        match (self.sha256, self.blake3) {
            (Some(sha), _) => Some(format!("sha256-{}", sha.hex())),
            (None, Some(b3)) => Some(format!("b3-{}", b3.hex())),
            (None, None) => None,
        }
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

/// What a finished download gave.
#[derive(Clone, Debug, Serialize)]
pub struct Downloaded {
    pub label: String,
    pub id: ObjectId,
    /// Bare hex, as hubs print it.
    pub sha256: String,
    pub size: u64,
    /// The source that delivered it (credentials removed); empty when another process
    /// sharing the store downloaded it while this one waited.
    pub url: String,
    /// Requests made for it, over all sources.
    pub attempts: u32,
    /// Bytes fetched by range requests after an interruption.
    pub resumed_bytes: u64,
    /// False when the store already had the content.
    pub new: bool,
}

impl Download {
    /// The file, if the store has it by now (another process downloaded it while this one
    /// waited for its fetch lock).
    pub(super) fn stored_meanwhile(&self, store: &Store) -> Result<Option<Downloaded>> {
        let id = match (self.expect.blake3, self.expect.sha256) {
            (Some(b3), _) => Some(b3),
            (None, Some(sha)) => store.lookup_sha256(&sha)?,
            (None, None) => None,
        };
        let Some(id) = id.filter(|id| store.has_object(id)) else {
            return Ok(None);
        };
        if let Some(sha) = self.expect.sha256 {
            store.ensure_alias(&sha, &id)?;
        }
        let size = store
            .find_object(&id, false)
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        Ok(Some(Downloaded {
            label: self.label.clone(),
            id,
            sha256: self.expect.sha256.map(|s| s.hex()).unwrap_or_default(),
            size,
            url: String::new(),
            attempts: 0,
            resumed_bytes: 0,
            new: false,
        }))
    }
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
