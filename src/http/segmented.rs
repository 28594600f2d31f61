//! Segmented transfers: a large file fetched as byte ranges over several connections, fed to
//! the pipeline in order so hashing stays one pass.

use super::fetcher::Fetcher;
use super::pipe::Sink;
use super::state::{content_range, describe, Fail, Transfer};
use crate::secret::redact_url;
use bytes::Bytes;
use reqwest::header::{HeaderMap, ACCEPT_RANGES, IF_RANGE, RANGE};
use reqwest::{StatusCode, Url};

impl Fetcher {
    /// Whether to fetch the rest of this response's file as parallel ranges: asked for, a
    /// large file, and a server that says it serves byte ranges of a file it can name (a
    /// validator, so every range comes from the same version).
    pub(super) fn segmentable(&self, status: StatusCode, h: &HeaderMap, p: &Transfer) -> bool {
        let ranges = h
            .get(ACCEPT_RANGES)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("bytes"));
        self.opts.connections > 1
            && !p.single
            && status == StatusCode::OK
            && ranges
            && p.validator.is_some()
            && p.total
                .is_some_and(|t| t - p.offset >= self.opts.segment_threshold)
    }

    /// Fetch `[p.offset, total)` as ranges, `connections` at a time, and feed them to the
    /// pipeline in order. Memory is bounded by `connections + 1` segments. Any failure falls
    /// back to one resumable stream from the bytes already delivered.
    pub(super) async fn segmented(&self, url: &Url, sink: &mut Sink<'_>) -> Result<(), Fail> {
        use futures_util::stream::{self, StreamExt};
        let p = &mut *sink.at;
        let total = p.total.unwrap_or(0);
        let size = self.opts.segment_size.max(1 << 20);
        let starts: Vec<u64> = (p.offset..total).step_by(size as usize).collect();
        let validator = p.validator.clone();
        let mut segments = stream::iter(starts.into_iter().map(|start| {
            let end = (start + size).min(total);
            let validator = validator.clone();
            async move {
                (
                    start,
                    self.range(url, start, end, validator.as_deref()).await,
                )
            }
        }))
        .buffered(self.opts.connections);
        tracing::debug!(
            "{}: {} bytes in {}-byte ranges over {} connections",
            redact_url(url.as_str()),
            total - p.offset,
            size,
            self.opts.connections
        );
        while let Some((start, got)) = segments.next().await {
            let chunks = got.map_err(|reason| {
                sink.at.single = true;
                Fail::Retry(
                    format!("range from {start}: {reason}; continuing with one stream"),
                    None,
                )
            })?;
            for c in chunks {
                sink.deliver(c)?;
            }
        }
        Ok(())
    }

    /// One byte range `[start, end)`, whole, in memory. Only a 206 for exactly that range of
    /// the same file version is accepted.
    async fn range(
        &self,
        url: &Url,
        start: u64,
        end: u64,
        validator: Option<&str>,
    ) -> Result<Vec<Bytes>, String> {
        let mut req = self
            .client
            .get(url.clone())
            .header(RANGE, format!("bytes={start}-{}", end - 1));
        if let Some(v) = validator {
            req = req.header(IF_RANGE, v);
        }
        let mut resp = self.authorize(req, url).send().await.map_err(describe)?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(format!("HTTP {} instead of 206", resp.status()));
        }
        if content_range(resp.headers()).map(|(s, _)| s) != Some(start) {
            return Err("206 with a Content-Range that is not the one asked for".into());
        }
        let mut chunks = Vec::new();
        let mut got = 0u64;
        loop {
            match tokio::time::timeout(self.opts.stall_timeout, resp.chunk()).await {
                Err(_) => return Err(format!("no data for {:?}", self.opts.stall_timeout)),
                Ok(Err(e)) => return Err(describe(e)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => {
                    got += c.len() as u64;
                    chunks.push(c);
                }
            }
        }
        if got != end - start {
            return Err(format!("{got} bytes instead of {}", end - start));
        }
        Ok(chunks)
    }
}
