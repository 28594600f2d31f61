//! A GCS client on the JSON API with reqwest: uploads (one multipart request, or a resumable
//! session in chunks for big files) created only if the object is absent (`ifGenerationMatch=0`),
//! object metadata, testIamPermissions, public and V4 signed URLs. Every request is retried with
//! back-off on 408, 429, 5xx and connection errors.

use super::auth::Tokens;
use super::error::{Error, Result};
use super::key::ServiceAccount;
use super::sign;
use percent_encoding::utf8_percent_encode;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Google's endpoint.
pub const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// Resumable chunks must be multiples of 256 KiB.
pub const CHUNK_UNIT: usize = 256 * 1024;

/// How the client reaches GCS.
#[derive(Clone, Debug)]
pub struct Options {
    pub bucket: String,
    /// An emulator's address (`STORAGE_EMULATOR_HOST`, `http://` assumed without a scheme);
    /// `None` for Google. An emulator may be used without credentials, and its missing IAM
    /// only skips the permission check.
    pub emulator: Option<String>,
    /// A service-account key file (`GOOGLE_APPLICATION_CREDENTIALS`).
    pub credentials: Option<PathBuf>,
    /// Retries of one request after its first try.
    pub retries: u32,
    /// The first pause between tries; it doubles each retry (jittered, at most 30 s).
    pub retry_base: Duration,
    /// Files larger than this go up in a resumable session, in chunks of this size (rounded
    /// down to a multiple of 256 KiB).
    pub chunk: usize,
    /// Time limit of one request.
    pub timeout: Duration,
}

impl Options {
    pub fn new(bucket: &str) -> Options {
        Options {
            bucket: bucket.to_string(),
            emulator: None,
            credentials: None,
            retries: 5,
            retry_base: Duration::from_secs(1),
            chunk: 16 * 1024 * 1024,
            timeout: Duration::from_secs(300),
        }
    }
}

/// What the permission check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Every permission asked for is granted.
    Granted,
    /// The check could not run (an emulator without IAM); why.
    Skipped(String),
}

/// An upload's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    /// The object was there already with the same SHA-256 (a retried upload whose first
    /// answer was lost, or the same job run again).
    AlreadyThere,
}

/// Where a download is written: it can start over (a body cut off is fetched again).
pub trait Sink: std::io::Write + Send {
    /// Drop what was written so far.
    fn restart(&mut self) -> std::io::Result<()>;
}

impl Sink for Vec<u8> {
    fn restart(&mut self) -> std::io::Result<()> {
        self.clear();
        Ok(())
    }
}

impl Sink for std::fs::File {
    fn restart(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        self.set_len(0)?;
        self.rewind()
    }
}

/// One object of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// Its custom metadata (a JSON object, or null).
    pub metadata: Value,
}

/// A client of one bucket.
pub struct Client {
    opts: Options,
    endpoint: url::Url,
    account: Option<Arc<ServiceAccount>>,
    tokens: Tokens,
    http: reqwest::Client,
}

/// Whether a status is worth another try.
fn retryable(s: StatusCode) -> bool {
    s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// Exponential back-off with jitter: a random pause in [d/2, d], d = base·2^(n−1), ≤ 30 s.
fn backoff(base: Duration, n: u32) -> Duration {
    let d = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(Duration::from_secs(30));
    let mut r = [0u8; 8];
    let frac = match getrandom::fill(&mut r) {
        Ok(()) => (u64::from_le_bytes(r) % 1000) as f64 / 1000.0,
        Err(_) => 0.5,
    };
    d.mul_f64(0.5 + frac / 2.0)
}

/// A bucket name as GCS allows it (3–222 of `a-z 0-9 - _ .`, starting and ending with a letter
/// or digit).
fn valid_bucket(b: &str) -> bool {
    (3..=222).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c))
        && b.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// The beginning of an error answer's message (GCS's JSON `error.message`, else the text).
async fn message_of(resp: Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    let msg = msg.trim();
    match msg.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &msg[..i]),
        None => msg.to_string(),
    }
}

impl Client {
    /// A client; reads the credentials file (not the network).
    pub fn new(opts: Options) -> Result<Client> {
        if !valid_bucket(&opts.bucket) {
            return Err(Error::Config(format!(
                "{:?} is not a bucket name (3 to 222 of a-z, 0-9, -, _ and .)",
                opts.bucket
            )));
        }
        let endpoint = match &opts.emulator {
            Some(e) if e.contains("://") => e.clone(),
            Some(e) => format!("http://{e}"),
            None => GOOGLE_ENDPOINT.to_string(),
        };
        let endpoint = url::Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| Error::Config(format!("endpoint {endpoint:?}: {e}")))?;
        let account = match &opts.credentials {
            Some(path) => Some(Arc::new(ServiceAccount::read(path)?)),
            None if opts.emulator.is_some() => None,
            None => {
                return Err(Error::Config(
                    "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) is not set".into(),
                ))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::Client)?;
        let tokens = Tokens::new(account.clone(), http.clone());
        Ok(Client {
            opts,
            endpoint,
            account,
            tokens,
            http,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.opts.bucket
    }

    /// Whether this is an emulator (`STORAGE_EMULATOR_HOST`).
    pub fn is_emulator(&self) -> bool {
        self.opts.emulator.is_some()
    }

    /// Whether URLs can be signed (a service-account key is there).
    pub fn can_sign(&self) -> bool {
        self.account.is_some()
    }

    /// `gs://bucket/object`.
    pub fn gs_uri(&self, object: &str) -> String {
        format!("gs://{}/{object}", self.opts.bucket)
    }

    /// The object's public URL (readable when the bucket or object is public).
    pub fn public_url(&self, object: &str) -> String {
        format!(
            "{}{}",
            self.endpoint.as_str().trim_end_matches('/'),
            sign::object_path(&self.opts.bucket, object)
        )
    }

    /// A V4 signed GET URL of the object, valid `ttl` (at most 7 days).
    pub fn signed_url(&self, object: &str, ttl: Duration) -> Result<String> {
        let account = self.account.as_ref().ok_or_else(|| {
            Error::Config(
                "signed URLs need a service-account key (GOOGLE_APPLICATION_CREDENTIALS)".into(),
            )
        })?;
        sign::signed_url(
            account,
            &self.endpoint,
            &self.opts.bucket,
            object,
            ttl,
            SystemTime::now(),
        )
    }

    /// `{endpoint}/{path}` (path without its leading `/`).
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.as_str().trim_end_matches('/'))
    }

    /// The bucket in a URL path.
    fn b(&self) -> String {
        utf8_percent_encode(&self.opts.bucket, sign::QUERY).to_string()
    }

    /// Send a request built by `build`, with the access token, retrying on 408, 429, 5xx,
    /// errors without an answer and a failed login. Gives the first other answer (success or not) and how many
    /// tries it took.
    async fn send(
        &self,
        what: &'static str,
        object: &str,
        build: &(dyn Fn() -> reqwest::RequestBuilder + Sync),
    ) -> Result<(Response, u32)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt > self.opts.retries;
            let mut req = build().timeout(self.opts.timeout);
            match self.tokens.header().await {
                Ok(Some(h)) => req = req.header(reqwest::header::AUTHORIZATION, h),
                Ok(None) => {}
                Err(e) if !last => {
                    tracing::warn!("{e} (try {attempt} of {}); retrying", self.opts.retries + 1);
                    tokio::time::sleep(backoff(self.opts.retry_base, attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let mut pause = None;
            match req.send().await {
                Ok(resp) if retryable(resp.status()) && !last => {
                    pause = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(60)));
                    tracing::warn!(
                        "gcs: {what} gs://{}/{object}: HTTP {} (try {attempt} of {}); retrying",
                        self.opts.bucket,
                        resp.status().as_u16(),
                        self.opts.retries + 1
                    );
                }
                Ok(resp) => return Ok((resp, attempt)),
                Err(e) if !last => {
                    tracing::warn!(
                        "gcs: {what} gs://{}/{object}: {} (try {attempt} of {}); retrying",
                        self.opts.bucket,
                        e.without_url(),
                        self.opts.retries + 1
                    );
                }
                Err(e) => {
                    return Err(Error::Transport {
                        what,
                        bucket: self.opts.bucket.clone(),
                        object: object.to_string(),
                        attempts: attempt,
                        source: e.without_url(),
                    })
                }
            }
            let wait = pause.unwrap_or_else(|| backoff(self.opts.retry_base, attempt));
            tokio::time::sleep(wait).await;
        }
    }

    /// An error answer as an [`Error::Status`].
    async fn status_error(
        &self,
        what: &'static str,
        object: &str,
        resp: Response,
        attempts: u32,
    ) -> Error {
        let status = resp.status().as_u16();
        Error::Status {
            what,
            bucket: self.opts.bucket.clone(),
            object: object.to_string(),
            status,
            message: message_of(resp).await,
            attempts,
        }
    }

    /// Check the credentials (an access token) and that they hold `permissions` on the
    /// bucket (testIamPermissions). An emulator without IAM gives [`Preflight::Skipped`].
    pub async fn preflight(&self, permissions: &[&str]) -> Result<Preflight> {
        let mut url =
            url::Url::parse(&self.url(&format!("/storage/v1/b/{}/iam/testPermissions", self.b())))
                .map_err(|e| Error::Config(e.to_string()))?;
        for p in permissions {
            url.query_pairs_mut().append_pair("permissions", p);
        }
        let build = || self.http.get(url.clone());
        let (resp, attempts) = self.send("testIamPermissions", "", &build).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND && self.is_emulator() {
            return Ok(Preflight::Skipped(format!(
                "the emulator at {} has no IAM (testIamPermissions answered 404)",
                self.endpoint
            )));
        }
        if !status.is_success() {
            return Err(self
                .status_error("testIamPermissions", "", resp, attempts)
                .await);
        }
        let v: Value = resp.json().await.map_err(|e| Error::Status {
            what: "testIamPermissions",
            bucket: self.opts.bucket.clone(),
            object: String::new(),
            status: status.as_u16(),
            message: format!("not JSON: {}", e.without_url()),
            attempts,
        })?;
        let granted: Vec<&str> = v["permissions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let missing: Vec<String> = permissions
            .iter()
            .filter(|p| !granted.contains(p))
            .map(|p| p.to_string())
            .collect();
        if missing.is_empty() {
            Ok(Preflight::Granted)
        } else {
            Err(Error::Permission {
                bucket: self.opts.bucket.clone(),
                missing,
            })
        }
    }

    /// The object's metadata (`None` when it does not exist).
    pub async fn metadata(&self, object: &str) -> Result<Option<Value>> {
        let url = self.url(&format!(
            "/storage/v1/b/{}/o/{}",
            self.b(),
            utf8_percent_encode(object, sign::QUERY)
        ));
        let build = || self.http.get(&url);
        let (resp, attempts) = self.send("metadata of", object, &build).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self
                .status_error("metadata of", object, resp, attempts)
                .await);
        }
        let status = resp.status().as_u16();
        resp.json().await.map(Some).map_err(|e| Error::Status {
            what: "metadata of",
            bucket: self.opts.bucket.clone(),
            object: object.to_string(),
            status,
            message: format!("not JSON: {}", e.without_url()),
            attempts,
        })
    }

    /// Every object whose name begins with `prefix` (all pages), in name order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = url::Url::parse(&self.url(&format!("/storage/v1/b/{}/o", self.b())))
                .map_err(|e| Error::Config(e.to_string()))?;
            url.query_pairs_mut()
                .append_pair("prefix", prefix)
                .append_pair("maxResults", "1000");
            if let Some(t) = &token {
                url.query_pairs_mut().append_pair("pageToken", t);
            }
            let build = || self.http.get(url.clone());
            let (resp, attempts) = self.send("list", prefix, &build).await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(self.status_error("list", prefix, resp, attempts).await);
            }
            let v: Value = resp.json().await.map_err(|e| Error::Status {
                what: "list",
                bucket: self.opts.bucket.clone(),
                object: prefix.to_string(),
                status: status.as_u16(),
                message: format!("not JSON: {}", e.without_url()),
                attempts,
            })?;
            for item in v["items"].as_array().into_iter().flatten() {
                let Some(name) = item["name"].as_str() else {
                    continue;
                };
                let size = match &item["size"] {
                    Value::String(s) => s.parse().unwrap_or(0),
                    Value::Number(n) => n.as_u64().unwrap_or(0),
                    _ => 0,
                };
                out.push(Listed {
                    name: name.to_string(),
                    size,
                    metadata: item["metadata"].clone(),
                });
            }
            match v["nextPageToken"].as_str().filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The object's bytes (`None` when it does not exist), at most `max` of them: a longer
    /// object is an error (nothing is read past the limit).
    pub async fn get(&self, object: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let mut body = Vec::new();
        let found = self.get_into(object, max, &mut body).await?;
        Ok(found.then_some(body))
    }

    /// Write the object's bytes to `sink` (`false` when it does not exist), at most `max` of
    /// them: a longer object is an error (nothing is read past the limit). A body cut off is
    /// fetched again from its start (`sink` is emptied first), up to the retries.
    pub async fn get_into(&self, object: &str, max: u64, sink: &mut dyn Sink) -> Result<bool> {
        let url = self.url(&format!(
            "/storage/v1/b/{}/o/{}?alt=media",
            self.b(),
            utf8_percent_encode(object, sign::QUERY)
        ));
        let build = || self.http.get(&url);
        let mut failures = 0;
        loop {
            let (mut resp, attempts) = self.send("download", object, &build).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(false);
            }
            if !resp.status().is_success() {
                return Err(self.status_error("download", object, resp, attempts).await);
            }
            let local = |e: std::io::Error| Error::Status {
                what: "download",
                bucket: self.opts.bucket.clone(),
                object: object.to_string(),
                status: 200,
                message: format!("writing it: {e}"),
                attempts,
            };
            sink.restart().map_err(local)?;
            let mut got = 0u64;
            let res = loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        got += c.len() as u64;
                        if got > max {
                            return Err(Error::Status {
                                what: "download",
                                bucket: self.opts.bucket.clone(),
                                object: object.to_string(),
                                status: 200,
                                message: format!("longer than the {max} bytes expected"),
                                attempts,
                            });
                        }
                        sink.write_all(&c).map_err(local)?;
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            match res {
                Ok(()) => return Ok(true),
                Err(e) if failures < self.opts.retries => {
                    failures += 1;
                    tracing::warn!(
                        "gcs: download gs://{}/{object}: {} (try {failures}); retrying",
                        self.opts.bucket,
                        e.without_url()
                    );
                    tokio::time::sleep(backoff(self.opts.retry_base, failures)).await;
                }
                Err(e) => {
                    return Err(Error::Transport {
                        what: "download",
                        bucket: self.opts.bucket.clone(),
                        object: object.to_string(),
                        attempts: failures + 1,
                        source: e.without_url(),
                    })
                }
            }
        }
    }

    /// Upload `bytes` as `object` with its Content-Type and `sha256` as custom metadata, only
    /// if no object of that name exists. One that exists with the same `sha256` metadata is
    /// [`Put::AlreadyThere`]; with other content, [`Error::Exists`] (never overwritten).
    pub async fn put(
        &self,
        object: &str,
        bytes: &[u8],
        content_type: &str,
        sha256: &str,
    ) -> Result<Put> {
        let meta = serde_json::json!({ "sha256": sha256 });
        self.create(object, bytes, content_type, &meta, "sha256")
            .await
    }

    /// Upload `bytes` as `object` with custom `metadata` (a JSON object of strings), only if
    /// no object of that name exists. One that exists with the same value of the metadata key
    /// `same` is [`Put::AlreadyThere`]; otherwise [`Error::Exists`] (never overwritten).
    pub async fn create(
        &self,
        object: &str,
        bytes: &[u8],
        content_type: &str,
        metadata: &Value,
        same: &str,
    ) -> Result<Put> {
        let sha256 = metadata[same].as_str().unwrap_or_default();
        let meta = serde_json::json!({
            "name": object,
            "contentType": content_type,
            "metadata": metadata,
        });
        let chunk = (self.opts.chunk / CHUNK_UNIT).max(1) * CHUNK_UNIT;
        let done = if bytes.len() > chunk {
            self.put_resumable(object, bytes, content_type, &meta, chunk)
                .await?
        } else {
            self.put_multipart(object, bytes, content_type, &meta)
                .await?
        };
        if done {
            tracing::debug!(
                "gcs: uploaded gs://{}/{object} ({} bytes)",
                self.opts.bucket,
                bytes.len()
            );
            return Ok(Put::Created);
        }
        // 412: the name is taken. The same bytes (a lost answer, a job run again) are fine.
        let theirs = self
            .metadata(object)
            .await?
            .and_then(|m| m["metadata"][same].as_str().map(str::to_string))
            .unwrap_or_default();
        if theirs == sha256 {
            tracing::debug!(
                "gcs: gs://{}/{object} is already there with the same {same}",
                self.opts.bucket
            );
            return Ok(Put::AlreadyThere);
        }
        Err(Error::Exists {
            bucket: self.opts.bucket.clone(),
            object: object.to_string(),
            theirs: if theirs.is_empty() {
                "unknown".into()
            } else {
                theirs
            },
        })
    }

    /// One `uploadType=multipart` request. `false` when the object exists (412).
    async fn put_multipart(
        &self,
        object: &str,
        bytes: &[u8],
        content_type: &str,
        meta: &Value,
    ) -> Result<bool> {
        let boundary = format!("comfystore-{}", &sha256_hex(bytes)[..24]);
        let mut body = Vec::with_capacity(bytes.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{boundary}\r\ncontent-type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = bytes::Bytes::from(body);
        let url = self.url(&format!(
            "/upload/storage/v1/b/{}/o?uploadType=multipart&ifGenerationMatch=0",
            self.b()
        ));
        let build = || {
            self.http
                .post(&url)
                .header(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(body.clone())
        };
        let (resp, attempts) = self.send("upload", object, &build).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::PRECONDITION_FAILED => Ok(false),
            _ => Err(self.status_error("upload", object, resp, attempts).await),
        }
    }

    /// A resumable session, `chunk` bytes a request. `false` when the object exists (412).
    ///
    /// A chunk whose answer is lost is followed by a status query (`Content-Range: bytes
    /// */TOTAL`), which says how much GCS has. On an emulator that query ends the upload
    /// (fake-gcs-server finalises on it), so there the chunk is sent again from the last offset
    /// GCS confirmed.
    async fn put_resumable(
        &self,
        object: &str,
        bytes: &[u8],
        content_type: &str,
        meta: &Value,
        chunk: usize,
    ) -> Result<bool> {
        let total = bytes.len();
        let url = self.url(&format!(
            "/upload/storage/v1/b/{}/o?uploadType=resumable&ifGenerationMatch=0",
            self.b()
        ));
        let meta_body = meta.to_string();
        let build = || {
            self.http
                .post(&url)
                .header("content-type", "application/json; charset=UTF-8")
                .header("x-upload-content-type", content_type)
                .header("x-upload-content-length", total.to_string())
                .body(meta_body.clone())
        };
        let (resp, attempts) = self.send("start upload of", object, &build).await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::PRECONDITION_FAILED => return Ok(false),
            _ => {
                return Err(self
                    .status_error("start upload of", object, resp, attempts)
                    .await)
            }
        }
        // The session URI authorises the upload by itself: never logged.
        let session = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Error::Status {
                what: "start upload of",
                bucket: self.opts.bucket.clone(),
                object: object.to_string(),
                status: resp.status().as_u16(),
                message: "no session (Location) in the answer".into(),
                attempts,
            })?;
        let mut offset = 0usize;
        let mut failures = 0u32;
        let mut last_status = 0u16;
        loop {
            let end = (offset + chunk).min(total);
            let part = bytes::Bytes::copy_from_slice(&bytes[offset..end]);
            let range = if total == 0 {
                "bytes */0".to_string()
            } else {
                format!("bytes {offset}-{}/{total}", end - 1)
            };
            let sent = self
                .http
                .put(&session)
                .timeout(self.opts.timeout)
                .header("content-range", &range)
                .body(part)
                .send()
                .await;
            let next = match sent {
                Ok(r) if r.status().is_success() => return Ok(true),
                Ok(r) if r.status() == StatusCode::PRECONDITION_FAILED => return Ok(false),
                Ok(r) if r.status().as_u16() == 308 => Some(confirmed(&r)),
                Ok(r) if !retryable(r.status()) => {
                    return Err(self.status_error("upload", object, r, failures + 1).await)
                }
                Ok(r) => {
                    last_status = r.status().as_u16();
                    tracing::warn!(
                        "gcs: upload gs://{}/{object}: HTTP {last_status} at byte {offset}; resuming",
                        self.opts.bucket,
                    );
                    None
                }
                Err(e) => {
                    let e = e.without_url();
                    tracing::warn!(
                        "gcs: upload gs://{}/{object}: {e} at byte {offset}; resuming",
                        self.opts.bucket,
                    );
                    if failures >= self.opts.retries {
                        return Err(Error::Transport {
                            what: "upload",
                            bucket: self.opts.bucket.clone(),
                            object: object.to_string(),
                            attempts: failures + 1,
                            source: e,
                        });
                    }
                    None
                }
            };
            match next {
                // Progress: the next chunk from where GCS stands.
                Some(n) if n > offset => {
                    offset = n.min(total);
                    failures = 0;
                }
                // A failed chunk, or a 308 that took nothing: counted, paused, resumed.
                _ => {
                    failures += 1;
                    if failures > self.opts.retries {
                        return Err(Error::Status {
                            what: "upload",
                            bucket: self.opts.bucket.clone(),
                            object: object.to_string(),
                            status: last_status,
                            message: format!("no progress at byte {offset} of {total}"),
                            attempts: failures,
                        });
                    }
                    tokio::time::sleep(backoff(self.opts.retry_base, failures)).await;
                    if !self.is_emulator() {
                        match self.upload_status(&session, total).await {
                            Ok(Some(n)) => offset = n,
                            Ok(None) => return Ok(true),
                            Err(()) => {}
                        }
                    }
                }
            }
        }
    }

    /// How much a resumable session has: `Some(bytes)`, or `None` when it is complete.
    async fn upload_status(
        &self,
        session: &str,
        total: usize,
    ) -> std::result::Result<Option<usize>, ()> {
        let r = self
            .http
            .put(session)
            .timeout(self.opts.timeout)
            .header("content-range", format!("bytes */{total}"))
            .body(Vec::new())
            .send()
            .await
            .map_err(|_| ())?;
        match r.status() {
            s if s.is_success() => Ok(None),
            s if s.as_u16() == 308 => Ok(Some(confirmed(&r))),
            _ => Err(()),
        }
    }
}

/// The offset a 308 confirms (`Range: bytes=0-N` → N+1; none → 0).
fn confirmed(r: &Response) -> usize {
    offset_after(
        r.headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok()),
    )
}

fn offset_after(range: Option<&str>) -> usize {
    range
        .and_then(|v| v.rsplit('-').next())
        .and_then(|n| n.trim().parse::<usize>().ok())
        .map_or(0, |n| n + 1)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(valid_bucket("my-bucket.test_1"));
        assert!(!valid_bucket("My"));
        assert!(!valid_bucket("-ab"));
        assert!(!valid_bucket("a/b/c"));
    }

    #[test]
    fn a_308_range_gives_the_next_offset() {
        assert_eq!(offset_after(Some("bytes=0-1048575")), 1048576);
        assert_eq!(offset_after(None), 0);
        assert_eq!(offset_after(Some("garbage")), 0);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for n in 1..=4 {
            let d = backoff(base, n);
            let full = base * (1 << (n - 1));
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
        assert!(backoff(base, 30) <= Duration::from_secs(30));
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 412] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
