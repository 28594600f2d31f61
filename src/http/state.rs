//! Where a download stands across attempts, and what the server's headers say about resuming
//! it: the offset, the total, the validator `If-Range` carries, and when to try again.

use reqwest::header::{HeaderMap, CONTENT_RANGE, ETAG, LAST_MODIFIED, RETRY_AFTER};
use std::time::Duration;

/// Why an attempt failed: worth another try, or not with this source.
pub(super) enum Fail {
    Retry(String, Option<Duration>),
    Final(String),
}

/// Where a transfer stands, across attempts.
#[derive(Default)]
pub(super) struct Transfer {
    pub(super) offset: u64,
    pub(super) total: Option<u64>,
    pub(super) validator: Option<String>,
    pub(super) attempts: u32,
    pub(super) resumed: u64,
    /// Parallel ranges failed once: one stream from here on.
    pub(super) single: bool,
}

impl Transfer {
    /// The total size a response announces must agree with what we know.
    pub(super) fn check_total(&mut self, total: u64) -> Result<(), Fail> {
        match self.total {
            Some(t) if t != total => Err(Fail::Final(format!(
                "the server has {total} bytes, expected {t}"
            ))),
            _ => {
                self.total = Some(total);
                Ok(())
            }
        }
    }
}

/// A reqwest error with its causes, without the URL (it may carry a token).
pub(super) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL).
pub(super) fn content_range(h: &HeaderMap) -> Option<(u64, u64)> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// A strong ETag, else Last-Modified: what `If-Range` may carry.
pub(super) fn validator(h: &HeaderMap) -> Option<String> {
    let etag = h.get(ETAG).and_then(|v| v.to_str().ok());
    match etag {
        Some(e) if !e.starts_with("W/") => Some(e.to_string()),
        _ => h
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at 5 minutes.
pub(super) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    crate::backoff::retry_after(h.get(RETRY_AFTER)?.to_str().ok()?, Duration::from_secs(300))
}

/// Exponential backoff with jitter, capped at 30 s ([`crate::backoff::jittered`]).
pub(super) fn backoff(base: Duration, n: u32) -> Duration {
    crate::backoff::jittered(base, n, Duration::from_secs(30))
}
