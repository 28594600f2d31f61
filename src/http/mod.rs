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

pub mod error;

use crate::report::{self, ProgressRead, Unit};
use crate::store::{Digests, ObjectId, Sha256, Store};
use bytes::Bytes;
pub use error::{Error, Result};
use reqwest::header::{
    HeaderMap, ACCEPT_RANGES, AUTHORIZATION, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED,
    LOCATION, RANGE, RETRY_AFTER,
};
use reqwest::StatusCode;
use serde::Serialize;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, SystemTime};

/// Sources with this prefix are local files (an offline mirror), read without the network.
pub const FILE_SCHEME: &str = "file://";

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
}

impl Default for HttpOptions {
    fn default() -> Self {
        let backoff = std::env::var("COMFYSTORE_BACKOFF")
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(Duration::from_millis(500));
        // Range size for parallel downloads; files of 4 ranges or more are split.
        let segment_size = std::env::var("COMFYSTORE_RANGE_SIZE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(16 << 20)
            .max(1 << 20);
        HttpOptions {
            retries: 5,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            backoff,
            jobs: 4,
            offline: false,
            connections: 1,
            segment_threshold: 4 * segment_size,
            segment_size,
        }
    }
}

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
    fn check(&self, d: &Digests, what: &str) -> crate::store::Result<()> {
        let mismatch = |expected: String, actual: String| crate::store::Error::Mismatch {
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
    fn of(
        d: &Download,
        put: &crate::store::PutResult,
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

/// Bearer tokens by exact host name.
#[derive(Clone, Default)]
struct Tokens(Vec<(String, String)>);

impl Tokens {
    /// `HF_TOKEN` for huggingface.co, `CIVITAI_API_TOKEN` for civitai.com, and
    /// `COMFYSTORE_TOKENS=host=token,host=token` for anything else (internal mirrors).
    fn from_env() -> Tokens {
        let mut v = Vec::new();
        if let Ok(t) = std::env::var("HF_TOKEN") {
            for host in ["huggingface.co", "hf.co"] {
                v.push((host.to_string(), t.clone()));
            }
        }
        if let Ok(t) = std::env::var("CIVITAI_API_TOKEN") {
            v.push(("civitai.com".to_string(), t));
        }
        if let Ok(list) = std::env::var("COMFYSTORE_TOKENS") {
            for pair in list.split(',') {
                if let Some((h, t)) = pair.split_once('=') {
                    v.push((h.trim().to_ascii_lowercase(), t.trim().to_string()));
                }
            }
        }
        Tokens(v)
    }

    fn for_url(&self, url: &reqwest::Url) -> Option<&str> {
        let host = url.host_str()?.to_ascii_lowercase();
        self.0
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, t)| t.as_str())
    }
}

/// Why an attempt failed: worth another try, or not with this source.
enum Fail {
    Retry(String, Option<Duration>),
    Final(String),
}

/// Bytes for the pipeline thread, or the reason the transfer was abandoned.
type Chunk = std::result::Result<Bytes, String>;

/// A `Read` over the chunks the async side sends.
struct ChannelReader {
    rx: Receiver<Chunk>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(reason)) => return Err(io::Error::other(reason)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Where a transfer stands, across attempts.
#[derive(Default)]
struct Progress {
    offset: u64,
    total: Option<u64>,
    validator: Option<String>,
    attempts: u32,
    resumed: u64,
    /// Parallel ranges failed once: one stream from here on.
    single: bool,
}

/// Downloads into a store.
pub struct Fetcher {
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    opts: HttpOptions,
    tokens: Tokens,
}

impl Fetcher {
    pub fn new(opts: HttpOptions) -> Result<Fetcher> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            .user_agent(concat!("comfystore/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Download {
                what: "client".into(),
                reason: e.to_string(),
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Download {
                what: "runtime".into(),
                reason: e.to_string(),
            })?;
        Ok(Fetcher {
            client,
            rt,
            opts,
            tokens: Tokens::from_env(),
        })
    }

    /// Download every item, `jobs` at a time; one result per item, in order.
    pub fn download_all(&self, store: &Store, items: &[Download]) -> Vec<Result<Downloaded>> {
        let total: u64 = items.iter().filter_map(|d| d.expect.size).sum();
        let total_bar = store.reporter().start("total", Some(total), Unit::Transfer);
        let next = AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<Downloaded>>>> =
            items.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.opts.jobs.clamp(1, 64).min(items.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let bar = store
                        .reporter()
                        .start(&item.label, item.expect.size, Unit::Transfer);
                    let r = self.download(store, item, bar.as_ref());
                    bar.finish();
                    total_bar.inc(item.expect.size.unwrap_or(0));
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                });
            }
        });
        total_bar.finish();
        results
            .into_iter()
            .map(|m| {
                m.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(Error::Download {
                        what: "?".into(),
                        reason: "a download thread panicked".into(),
                    })
                })
            })
            .collect()
    }

    /// Download one item, trying its sources in order. The source that worked is recorded in
    /// the store.
    pub fn download(
        &self,
        store: &Store,
        d: &Download,
        bar: &dyn report::Progress,
    ) -> Result<Downloaded> {
        // Local mirrors (`file://`) are not the network: offline still reads them.
        let sources: Vec<&String> = d
            .sources
            .iter()
            .filter(|u| !self.opts.offline || u.starts_with(FILE_SCHEME))
            .collect();
        if self.opts.offline && sources.is_empty() {
            return Err(Error::Download {
                what: d.label.clone(),
                reason: format!(
                    "offline: would download it from {}",
                    d.sources
                        .first()
                        .map_or("(no source)".to_string(), |u| crate::secret::redact_url(u))
                ),
            });
        }
        if sources.is_empty() {
            return Err(Error::Download {
                what: d.label.clone(),
                reason: "no source URL is known".into(),
            });
        }
        // Held until the download is stored and recorded: gc must not take it meanwhile.
        let _writer = store.lock_shared()?;
        let mut errors = Vec::new();
        let mut attempts = 0;
        for url in sources {
            let shown = crate::secret::redact_url(url);
            let tried = match url.strip_prefix(FILE_SCHEME) {
                Some(path) => self.try_file(store, d, Path::new(path), bar),
                None => self.try_source(store, d, url, bar),
            };
            match tried {
                Ok(mut r) => {
                    r.attempts += attempts;
                    // A local mirror is where this machine found it, not a source to lock.
                    if !url.starts_with(FILE_SCHEME) {
                        store.add_source(&r.id, &shown)?;
                    }
                    return Ok(r);
                }
                Err((reason, n)) => {
                    attempts += n;
                    if d.sources.len() > 1 {
                        tracing::warn!("{}: {shown}: {reason}", d.label);
                    }
                    errors.push(if shown == d.label {
                        reason
                    } else {
                        format!("{shown}: {reason}")
                    });
                }
            }
        }
        Err(Error::Download {
            what: d.label.clone(),
            reason: errors.join("; "),
        })
    }

    /// A local file (an offline mirror): stored like a download, checked the same way. A
    /// missing file is a failed source, so the next one is tried.
    fn try_file(
        &self,
        store: &Store,
        d: &Download,
        path: &Path,
        bar: &dyn report::Progress,
    ) -> std::result::Result<Downloaded, (String, u32)> {
        let fail = |e: String| (e, 1);
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let put = store
            .put_reader_checked(
                &mut ProgressRead::new(file, bar),
                false,
                true,
                path,
                &|dg| d.expect.check(dg, &path.display().to_string()),
            )
            .map_err(|e| fail(e.to_string()))?;
        store.record_object(&put).map_err(|e| fail(e.to_string()))?;
        Ok(Downloaded::of(
            d,
            &put,
            format!("{FILE_SCHEME}{}", path.display()),
            1,
            0,
        ))
    }

    /// One source: a pipeline thread stores what the transfer streams into it.
    fn try_source(
        &self,
        store: &Store,
        d: &Download,
        url: &str,
        bar: &dyn report::Progress,
    ) -> std::result::Result<Downloaded, (String, u32)> {
        let shown = crate::secret::redact_url(url);
        let (tx, rx) = sync_channel::<Chunk>(16);
        let mut progress = Progress {
            total: d.expect.size,
            ..Default::default()
        };
        let (transfer, put) = std::thread::scope(|s| {
            let pipe = s.spawn(|| {
                let mut reader = ChannelReader {
                    rx,
                    cur: Bytes::new(),
                };
                store.put_reader_checked(&mut reader, false, true, Path::new(&shown), &|dg| {
                    d.expect.check(dg, "downloaded bytes")
                })
            });
            let transfer = self
                .rt
                .block_on(self.transfer(url, &tx, &mut progress, bar));
            if let Err(e) = &transfer {
                let _ = tx.send(Err(e.clone()));
            }
            drop(tx);
            let put = match pipe.join() {
                Ok(put) => put.map_err(Error::from),
                Err(_) => Err(Error::Download {
                    what: d.label.clone(),
                    reason: "the store pipeline panicked".into(),
                }),
            };
            (transfer, put)
        });
        let attempts = progress.attempts;
        match (transfer, put) {
            (Err(reason), _) => Err((reason, attempts)),
            (Ok(()), Err(e)) => Err((e.to_string(), attempts)),
            (Ok(()), Ok(put)) => {
                store
                    .record_object(&put)
                    .map_err(|e| (e.to_string(), attempts))?;
                Ok(Downloaded::of(d, &put, shown, attempts, progress.resumed))
            }
        }
    }

    /// Stream `url` into `tx`, retrying and resuming until it is complete or hopeless.
    async fn transfer(
        &self,
        url: &str,
        tx: &SyncSender<Chunk>,
        p: &mut Progress,
        bar: &dyn report::Progress,
    ) -> std::result::Result<(), String> {
        let mut retries = 0;
        loop {
            p.attempts += 1;
            match self.attempt(url, tx, p, bar).await {
                Ok(()) => return Ok(()),
                Err(Fail::Final(m)) => return Err(m),
                Err(Fail::Retry(m, after)) => {
                    if retries >= self.opts.retries {
                        return Err(format!("gave up after {} attempts: {m}", p.attempts));
                    }
                    retries += 1;
                    let delay = after.unwrap_or_else(|| backoff(self.opts.backoff, retries));
                    tracing::info!(
                        "{}: {m}; retrying in {:?}",
                        crate::secret::redact_url(url),
                        delay
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One request (following redirects) and its body.
    async fn attempt(
        &self,
        url: &str,
        tx: &SyncSender<Chunk>,
        p: &mut Progress,
        bar: &dyn report::Progress,
    ) -> std::result::Result<(), Fail> {
        let mut current =
            reqwest::Url::parse(url).map_err(|e| Fail::Final(format!("invalid URL: {e}")))?;
        let mut resp = None;
        for _ in 0..10 {
            let mut req = self.client.get(current.clone());
            if p.offset > 0 {
                req = req.header(RANGE, format!("bytes={}-", p.offset));
                if let Some(v) = &p.validator {
                    req = req.header(IF_RANGE, v.clone());
                }
            }
            // Only the token of this very host: a redirect to a CDN never carries it.
            if let Some(t) = self.tokens.for_url(&current) {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            let r = req
                .send()
                .await
                .map_err(|e| Fail::Retry(describe(e), None))?;
            if r.status().is_redirection() {
                let loc = r
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| Fail::Final(format!("{} without a Location", r.status())))?;
                current = current
                    .join(loc)
                    .map_err(|e| Fail::Final(format!("bad redirect {loc:?}: {e}")))?;
                continue;
            }
            resp = Some(r);
            break;
        }
        let mut resp = resp.ok_or_else(|| Fail::Final("more than 10 redirects".into()))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        // How many leading bytes of this body we already have.
        let mut skip = 0u64;
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let (start, total) = content_range(&headers).ok_or_else(|| {
                    Fail::Retry("206 without a usable Content-Range".into(), None)
                })?;
                if start != p.offset {
                    return Err(Fail::Retry(
                        format!("asked for bytes from {}, got them from {start}", p.offset),
                        None,
                    ));
                }
                check_total(p, total)?;
            }
            s if s.is_success() => {
                let changed =
                    p.offset > 0 && p.validator.is_some() && p.validator != validator(&headers);
                if changed {
                    return Err(Fail::Final(
                        "the file changed on the server during the download".into(),
                    ));
                }
                // Range ignored: read from zero and skip what we already have.
                skip = p.offset;
                if let Some(len) = resp.content_length() {
                    check_total(p, len)?;
                }
            }
            s if s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT
                || s.is_server_error() =>
            {
                return Err(Fail::Retry(format!("HTTP {s}"), retry_after(&headers)));
            }
            s => return Err(Fail::Final(format!("HTTP {s}"))),
        }
        if p.offset == 0 {
            p.validator = validator(&headers);
        }
        if self.segmentable(status, &headers, p) {
            // This response only told us the server can do ranges; its body is not read.
            drop(resp);
            return self.segmented(&current, tx, p, bar).await;
        }
        let resuming = p.offset > 0 && skip == 0;
        loop {
            let chunk = match tokio::time::timeout(self.opts.stall_timeout, resp.chunk()).await {
                Err(_) => {
                    return Err(Fail::Retry(
                        format!("no data for {:?}", self.opts.stall_timeout),
                        None,
                    ))
                }
                Ok(Err(e)) => return Err(Fail::Retry(describe(e), None)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            let mut chunk = chunk;
            if skip > 0 {
                let n = skip.min(chunk.len() as u64) as usize;
                chunk = chunk.slice(n..);
                skip -= n as u64;
                if chunk.is_empty() {
                    continue;
                }
            }
            let n = chunk.len() as u64;
            if tx.send(Ok(chunk)).is_err() {
                return Err(Fail::Final(
                    "the store stopped reading (see the error above)".into(),
                ));
            }
            p.offset += n;
            if resuming {
                p.resumed += n;
            }
            bar.set_position(p.offset);
        }
        match p.total {
            Some(t) if p.offset < t => Err(Fail::Retry(
                format!("connection closed after {} of {t} bytes", p.offset),
                None,
            )),
            _ => Ok(()),
        }
    }
}

impl Fetcher {
    /// Whether to fetch the rest of this response's file as parallel ranges: asked for, a
    /// large file, and a server that says it serves byte ranges of a file it can name (a
    /// validator, so every range comes from the same version).
    fn segmentable(&self, status: StatusCode, h: &HeaderMap, p: &Progress) -> bool {
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
    /// pipeline in order (so hashing stays one pass). Memory is bounded by
    /// `connections + 1` segments. Any failure falls back to one resumable stream from the
    /// bytes already delivered.
    async fn segmented(
        &self,
        url: &reqwest::Url,
        tx: &SyncSender<Chunk>,
        p: &mut Progress,
        bar: &dyn report::Progress,
    ) -> std::result::Result<(), Fail> {
        use futures_util::stream::{self, StreamExt};
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
            crate::secret::redact_url(url.as_str()),
            total - p.offset,
            size,
            self.opts.connections
        );
        while let Some((start, got)) = segments.next().await {
            let chunks = match got {
                Ok(c) => c,
                Err(reason) => {
                    p.single = true;
                    return Err(Fail::Retry(
                        format!("range from {start}: {reason}; continuing with one stream"),
                        None,
                    ));
                }
            };
            for c in chunks {
                let n = c.len() as u64;
                if tx.send(Ok(c)).is_err() {
                    return Err(Fail::Final(
                        "the store stopped reading (see the error above)".into(),
                    ));
                }
                p.offset += n;
                bar.set_position(p.offset);
            }
        }
        Ok(())
    }

    /// One byte range `[start, end)`, whole, in memory. Only a 206 for exactly that range of
    /// the same file version is accepted.
    async fn range(
        &self,
        url: &reqwest::Url,
        start: u64,
        end: u64,
        validator: Option<&str>,
    ) -> std::result::Result<Vec<Bytes>, String> {
        let mut req = self
            .client
            .get(url.clone())
            .header(RANGE, format!("bytes={start}-{}", end - 1));
        if let Some(v) = validator {
            req = req.header(IF_RANGE, v);
        }
        if let Some(t) = self.tokens.for_url(url) {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut resp = req.send().await.map_err(describe)?;
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

/// A reqwest error with its causes, without the URL (it may carry a token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// The total size a response announces must agree with what we know.
fn check_total(p: &mut Progress, total: u64) -> std::result::Result<(), Fail> {
    match p.total {
        Some(t) if t != total => Err(Fail::Final(format!(
            "the server has {total} bytes, expected {t}"
        ))),
        _ => {
            p.total = Some(total);
            Ok(())
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(h: &HeaderMap) -> Option<(u64, u64)> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// A strong ETag, else Last-Modified: what `If-Range` may carry.
fn validator(h: &HeaderMap) -> Option<String> {
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
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(Duration::from_secs(300)))
}

/// Exponential backoff with jitter: a random delay in [d/2, d], d = base·2^(n−1), ≤ 30 s.
fn backoff(base: Duration, n: u32) -> Duration {
    let d = base
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(Duration::from_secs(30));
    let mut r = [0u8; 8];
    let frac = match getrandom::fill(&mut r) {
        Ok(()) => (u64::from_le_bytes(r) % 1000) as f64 / 1000.0,
        Err(_) => 0.5,
    };
    d.mul_f64(0.5 + frac / 2.0)
}
