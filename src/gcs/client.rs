//! A client of one bucket on gcloud-storage (the JSON API): uploads created only if the object
//! is absent (`ifGenerationMatch=0`; one multipart request, or a resumable session in chunks
//! for big files), streamed and resumed downloads, listings, object metadata,
//! testIamPermissions, public and V4 signed URLs. What the crate leaves out is here: retries
//! ([`super::retry`]), what a taken name means, limits on what is read, and messages without
//! secrets.

use super::auth::{self, Login};
use super::error::{Error, Result};
use super::retry::{backoff, Failure, Policy, RetryAfter};
use super::sign::{self, Style};
use bytes::Bytes;
use futures_util::StreamExt;
use gcloud_storage::client::{Client as Gcloud, ClientConfig};
use gcloud_storage::http::buckets::test_iam_permissions::TestIamPermissionsRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus,
};
use gcloud_storage::sign::SignedURLOptions;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use token_source::TokenSource;

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
    /// A credentials file (`GOOGLE_APPLICATION_CREDENTIALS`); without one, Google's
    /// application default credentials (none for an emulator).
    pub credentials: Option<PathBuf>,
    /// Retries of one request after its first try.
    pub retries: u32,
    /// The first pause between tries; it doubles each retry (jittered, at most 30 s).
    pub retry_base: Duration,
    /// Files larger than this go up in a resumable session, in chunks of this size (rounded
    /// down to a multiple of 256 KiB).
    pub chunk: usize,
    /// How long a connection may stay silent (no byte of an answer) before the request fails
    /// (and is retried). A limit per read, not per request, so big transfers are not cut.
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

/// Where a download is written (a download cut off resumes where it stopped, so what was
/// written stays).
pub trait Sink: std::io::Write + Send {}

impl<T: std::io::Write + Send> Sink for T {}

/// What an upload sends.
pub enum Data {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file of `len` bytes, read a chunk at a time (never whole in memory when it is big),
    /// whose BLAKE3 must be `b3`: a file that changed while it was read is not finished in
    /// the bucket ([`Error::Changed`]).
    File {
        file: Arc<std::fs::File>,
        path: PathBuf,
        len: u64,
        b3: [u8; 32],
    },
}

/// Bytes in memory (copied).
impl<T: AsRef<[u8]> + ?Sized> From<&T> for Data {
    fn from(b: &T) -> Data {
        Data::Bytes(Bytes::copy_from_slice(b.as_ref()))
    }
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::File { len, .. } => *len,
        }
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
    login: Login,
    policy: Policy,
    http: reqwest_middleware::ClientWithMiddleware,
    /// The crate's client and its token source, made (and logged in) at first use.
    inner: tokio::sync::OnceCell<(Gcloud, Option<Arc<dyn TokenSource>>)>,
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

impl Client {
    /// A client; reads the credentials file (not the network: the login happens at first
    /// use).
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
        if endpoint.host_str().is_none() {
            return Err(Error::Config(format!("endpoint {endpoint} has no host")));
        }
        let login = match &opts.credentials {
            Some(path) => auth::read(path)?,
            None if opts.emulator.is_some() => Login::Anonymous,
            None => Login::Default,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(opts.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("http client: {}", e.without_url())))?;
        let http = reqwest_middleware::ClientBuilder::new(http)
            .with(RetryAfter)
            .build();
        let policy = Policy {
            retries: opts.retries,
            base: opts.retry_base,
        };
        Ok(Client {
            opts,
            endpoint,
            login,
            policy,
            http,
            inner: tokio::sync::OnceCell::new(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.opts.bucket
    }

    /// Whether this is an emulator (`STORAGE_EMULATOR_HOST`).
    pub fn is_emulator(&self) -> bool {
        self.opts.emulator.is_some()
    }

    /// Whether URLs can be signed (a service-account key, or application default
    /// credentials, which on Google Cloud sign through IAM).
    pub fn can_sign(&self) -> bool {
        self.login.can_sign()
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

    /// The crate's client, logged in (once; a failed login is retried like a request).
    async fn inner(&self) -> Result<&Gcloud> {
        Ok(&self.login().await?.0)
    }

    /// The crate's client and its token source, logged in once.
    async fn login(&self) -> Result<&(Gcloud, Option<Arc<dyn TokenSource>>)> {
        self.inner
            .get_or_try_init(|| async {
                let endpoint = self.endpoint.as_str().trim_end_matches('/').to_string();
                let login = || async {
                    let base = ClientConfig {
                        http: Some(self.http.clone()),
                        storage_endpoint: endpoint.clone(),
                        ..Default::default()
                    };
                    self.login.configure(base).await.map_err(login_failure)
                };
                let (config, tokens) =
                    self.policy
                        .run("login", login)
                        .await
                        .map_err(|(f, _)| Error::Token {
                            from: self.login.source(),
                            reason: f.to_string(),
                        })?;
                tracing::debug!("gcs: logged in for gs://{}", self.opts.bucket);
                Ok((Gcloud::new(config), tokens))
            })
            .await
    }

    /// A failure after `attempts` tries as an [`Error`].
    fn error(&self, what: &'static str, object: &str, f: Failure, attempts: u32) -> Error {
        match f {
            Failure::Status { status, message } => Error::Status {
                what,
                bucket: self.opts.bucket.clone(),
                object: object.to_string(),
                status,
                message,
                attempts,
            },
            Failure::Transport { reason, .. } => Error::Transport {
                what,
                bucket: self.opts.bucket.clone(),
                object: object.to_string(),
                attempts,
                reason,
            },
            Failure::Token(reason) => Error::Token {
                from: self.login.source(),
                reason,
            },
        }
    }

    /// `op` with retries; a failure that `keep` accepts (a 404, a 412) is given back as
    /// `Err(Some(status))` instead of an error.
    async fn call<T, E, F, Fut>(
        &self,
        what: &'static str,
        object: &str,
        keep: &[u16],
        op: F,
    ) -> Result<std::result::Result<T, u16>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
        E: Into<Failure>,
    {
        let mut op = op;
        let label = format!("{what} gs://{}/{object}", self.opts.bucket);
        match self
            .policy
            .run(&label, || {
                let fut = op();
                async move { fut.await.map_err(Into::into) }
            })
            .await
        {
            Ok(v) => Ok(Ok(v)),
            Err((f, _)) if f.status().is_some_and(|s| keep.contains(&s)) => {
                Ok(Err(f.status().unwrap_or_default()))
            }
            Err((f, n)) => Err(self.error(what, object, f, n)),
        }
    }

    /// A V4 signed GET URL of the object, valid `ttl` (at most 7 days).
    pub async fn signed_url(&self, object: &str, ttl: Duration) -> Result<String> {
        if ttl > sign::MAX_TTL || ttl.is_zero() {
            return Err(Error::Config(format!(
                "a signed URL's lifetime must be between 1s and 7 days, not {}",
                humantime::format_duration(ttl)
            )));
        }
        if !self.can_sign() {
            return Err(Error::Config(
                "signed URLs need a service-account key (GOOGLE_APPLICATION_CREDENTIALS)".into(),
            ));
        }
        let host = match (self.endpoint.host_str(), self.endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(Error::Config("the endpoint has no host".into())),
        };
        let opts = SignedURLOptions {
            expires: ttl,
            style: Box::new(Style { host }),
            insecure: self.endpoint.scheme() == "http",
            ..Default::default()
        };
        self.inner()
            .await?
            .signed_url(&self.opts.bucket, object, None, None, opts)
            .await
            .map_err(|e| Error::Sign {
                bucket: self.opts.bucket.clone(),
                object: object.to_string(),
                reason: e.to_string(),
            })
    }

    /// Check the credentials (an access token) and that they hold `permissions` on the
    /// bucket (testIamPermissions). An emulator without IAM gives [`Preflight::Skipped`].
    pub async fn preflight(&self, permissions: &[&str]) -> Result<Preflight> {
        let c = self.inner().await?;
        let req = TestIamPermissionsRequest {
            resource: self.opts.bucket.clone(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        };
        let keep: &[u16] = if self.is_emulator() { &[404] } else { &[] };
        let answer = self
            .call("testIamPermissions", "", keep, || {
                c.test_iam_permissions(&req)
            })
            .await?;
        let Ok(answer) = answer else {
            return Ok(Preflight::Skipped(format!(
                "the emulator at {} has no IAM (testIamPermissions answered 404)",
                self.endpoint
            )));
        };
        let missing: Vec<String> = permissions
            .iter()
            .filter(|p| !answer.permissions.iter().any(|g| g == *p))
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

    /// The object's custom metadata (`None` when the object does not exist).
    pub async fn metadata(&self, object: &str) -> Result<Option<HashMap<String, String>>> {
        let c = self.inner().await?;
        let req = GetObjectRequest {
            bucket: self.opts.bucket.clone(),
            object: object.to_string(),
            ..Default::default()
        };
        let got = self
            .call("metadata of", object, &[404], || c.get_object(&req))
            .await?;
        Ok(got.ok().map(|o| o.metadata.unwrap_or_default()))
    }

    /// Every object whose name begins with `prefix` (all pages), in name order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let c = self.inner().await?;
        let mut out = Vec::new();
        let mut req = ListObjectsRequest {
            bucket: self.opts.bucket.clone(),
            prefix: Some(prefix.to_string()),
            max_results: Some(1000),
            ..Default::default()
        };
        loop {
            let page = self
                .call("list", prefix, &[], || c.list_objects(&req))
                .await?
                .map_err(|s| self.error("list", prefix, status(s), 1))?;
            for o in page.items.into_iter().flatten() {
                out.push(Listed {
                    name: o.name,
                    size: u64::try_from(o.size).unwrap_or(0),
                    metadata: match o.metadata {
                        Some(m) => serde_json::to_value(m).unwrap_or(Value::Null),
                        None => Value::Null,
                    },
                });
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => req.page_token = Some(t),
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
    /// asked for again from where it stopped (a ranged read), up to the retries.
    pub async fn get_into(&self, object: &str, max: u64, sink: &mut dyn Sink) -> Result<bool> {
        let c = self.inner().await?;
        let req = GetObjectRequest {
            bucket: self.opts.bucket.clone(),
            object: object.to_string(),
            ..Default::default()
        };
        let mut got = 0u64;
        let mut failures = 0;
        loop {
            let range = Range((got > 0).then_some(got), None);
            let stream = match self
                .call("download", object, &[404, 416], || {
                    c.download_streamed_object(&req, &range)
                })
                .await?
            {
                Ok(s) => s,
                Err(404) if got == 0 => return Ok(false),
                // Nothing left after `got`: the cut came after the last byte.
                Err(416) if got > 0 => return Ok(true),
                Err(s) => return Err(self.error("download", object, status(s), 1)),
            };
            let mut stream = std::pin::pin!(stream);
            let cut = loop {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        got += chunk.len() as u64;
                        if got > max {
                            return Err(self.error(
                                "download",
                                object,
                                Failure::Status {
                                    status: 200,
                                    message: format!("longer than the {max} bytes expected"),
                                },
                                failures + 1,
                            ));
                        }
                        sink.write_all(&chunk).map_err(|e| {
                            self.error(
                                "download",
                                object,
                                Failure::Transport {
                                    reason: format!("writing it: {e}"),
                                    retry: false,
                                },
                                failures + 1,
                            )
                        })?;
                    }
                    Some(Err(e)) => break Failure::from(e),
                    None => return Ok(true),
                }
            };
            failures += 1;
            if !cut.retryable() || failures > self.opts.retries {
                return Err(self.error("download", object, cut, failures));
            }
            tracing::warn!(
                "gcs: download gs://{}/{object}: {cut} at byte {got} (try {failures}); resuming",
                self.opts.bucket,
            );
            tokio::time::sleep(backoff(self.opts.retry_base, failures)).await;
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

    /// Upload `data` as `object` with custom `metadata` (a JSON object of strings), only if
    /// no object of that name exists. One that exists with the same value of the metadata key
    /// `same` is [`Put::AlreadyThere`]; otherwise [`Error::Exists`] (never overwritten).
    pub async fn create(
        &self,
        object: &str,
        data: impl Into<Data>,
        content_type: &str,
        metadata: &Value,
        same: &str,
    ) -> Result<Put> {
        self.create_counted(object, data, content_type, metadata, same, &|_| {})
            .await
    }

    /// [`Client::create`], telling `sent` how many more bytes GCS has taken: after each chunk
    /// of a resumable session, or once for a single-request upload (so a progress bar moves
    /// while a big file goes up; bytes resent after a failure are not counted twice).
    pub async fn create_counted(
        &self,
        object: &str,
        data: impl Into<Data>,
        content_type: &str,
        metadata: &Value,
        same: &str,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<Put> {
        let data = &data.into();
        let ours = metadata[same].as_str().unwrap_or_default().to_string();
        let custom: HashMap<String, String> = metadata
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        let meta = Object {
            name: object.to_string(),
            content_type: Some(content_type.to_string()),
            metadata: Some(custom),
            ..Default::default()
        };
        let req = UploadObjectRequest {
            bucket: self.opts.bucket.clone(),
            if_generation_match: Some(0),
            ..Default::default()
        };
        let chunk = ((self.opts.chunk / CHUNK_UNIT).max(1) * CHUNK_UNIT) as u64;
        let done = if data.len() > chunk {
            self.put_resumable(object, data, &req, meta, chunk, sent)
                .await?
        } else {
            let done = self.put_multipart(object, data, &req, meta).await?;
            if done {
                sent(data.len());
            }
            done
        };
        if done {
            tracing::debug!(
                "gcs: uploaded gs://{}/{object} ({} bytes)",
                self.opts.bucket,
                data.len()
            );
            return Ok(Put::Created);
        }
        // 412: the name is taken. The same bytes (a lost answer, a job run again) are fine.
        let theirs = self
            .metadata(object)
            .await?
            .and_then(|m| m.get(same).cloned())
            .unwrap_or_default();
        if theirs == ours {
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

    /// One multipart request (`uploadType=multipart`). `false` when the object exists (412).
    ///
    /// Made here on the crate's HTTP client and token source, not by the crate: its multipart
    /// request gives the media part no Content-Type, and fake-gcs-server then stores none
    /// (it takes the type from that part, not from the metadata). docs/tech.md has the trial.
    async fn put_multipart(
        &self,
        object: &str,
        data: &Data,
        req: &UploadObjectRequest,
        meta: Object,
    ) -> Result<bool> {
        let mut hashing = Hashing::default();
        let bytes = self.read(object, data, &mut hashing, 0, data.len()).await?;
        self.check(object, data, &hashing)?;
        let content_type = meta.content_type.clone().unwrap_or_default();
        let meta = serde_json::to_string(&meta).map_err(|e| Error::Config(e.to_string()))?;
        let mut r = [0u8; 12];
        let _ = getrandom::fill(&mut r);
        let boundary = format!("comfystore-{}", hex::encode(r));
        let mut body = Vec::with_capacity(bytes.len() + meta.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n\
                 --{boundary}\r\ncontent-type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = Bytes::from(body);
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart&ifGenerationMatch={}",
            self.endpoint.as_str().trim_end_matches('/'),
            percent_encoding::utf8_percent_encode(&req.bucket, percent_encoding::NON_ALPHANUMERIC),
            req.if_generation_match.unwrap_or(0),
        );
        let tokens = &self.login().await?.1;
        let sent = self
            .call("upload", object, &[412], || async {
                let mut request = self
                    .http
                    .post(&url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/related; boundary={boundary}"),
                    )
                    .body(body.clone());
                if let Some(ts) = tokens {
                    let token = ts
                        .token()
                        .await
                        .map_err(|e| Failure::Token(e.to_string()))?;
                    let mut h = reqwest::header::HeaderValue::from_str(&token)
                        .map_err(|_| Failure::Token("not a header value".into()))?;
                    h.set_sensitive(true);
                    request = request.header(reqwest::header::AUTHORIZATION, h);
                }
                let resp = request.send().await.map_err(Failure::from)?;
                match resp.status() {
                    s if s.is_success() => Ok(()),
                    s => Err(Failure::Status {
                        status: s.as_u16(),
                        message: super::retry::message_of(resp).await,
                    }),
                }
            })
            .await?;
        Ok(sent.is_ok())
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
        data: &Data,
        req: &UploadObjectRequest,
        meta: Object,
        chunk: u64,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<bool> {
        let total = data.len();
        // The furthest byte GCS has confirmed and `sent` was told of.
        let mut told = 0u64;
        let kind = UploadType::Multipart(Box::new(meta));
        let c = self.inner().await?;
        // The session URL authorises the upload by itself: never logged.
        let session = match self
            .call("start upload of", object, &[412], || {
                c.prepare_resumable_upload(req, &kind)
            })
            .await?
        {
            Ok(s) => s,
            Err(_) => return Ok(false),
        };
        let mut hashing = Hashing::default();
        let mut offset = 0u64;
        let mut failures = 0u32;
        let mut last: Option<Failure> = None;
        loop {
            let end = (offset + chunk).min(total);
            let part = self.read(object, data, &mut hashing, offset, end).await?;
            if end == total {
                if let Err(e) = self.check(object, data, &hashing) {
                    let _ = session.cancel().await;
                    return Err(e);
                }
            }
            let size = ChunkSize::new(offset, end - 1, Some(total));
            let next = match session.upload_multiple_chunk(part, &size).await {
                Ok(UploadStatus::Ok(_)) => {
                    sent(total.saturating_sub(told));
                    return Ok(true);
                }
                Ok(UploadStatus::ResumeIncomplete(r)) => Some(r.last_byte + 1),
                Ok(UploadStatus::NotStarted) => Some(0),
                Err(e) => match Failure::from(e) {
                    f if f.status() == Some(412) => return Ok(false),
                    f if !f.retryable() => {
                        return Err(self.error("upload", object, f, failures + 1))
                    }
                    f => {
                        tracing::warn!(
                            "gcs: upload gs://{}/{object}: {f} at byte {offset}; resuming",
                            self.opts.bucket,
                        );
                        last = Some(f);
                        None
                    }
                },
            };
            match next {
                // Progress: the next chunk from where GCS stands.
                Some(n) if n > offset => {
                    offset = n.min(total);
                    failures = 0;
                    if offset > told {
                        sent(offset - told);
                        told = offset;
                    }
                }
                // A failed chunk, or a 308 that took nothing: counted, paused, resumed.
                _ => {
                    failures += 1;
                    if failures > self.opts.retries {
                        let f = last.take().unwrap_or(Failure::Status {
                            status: 308,
                            message: format!("no progress at byte {offset} of {total}"),
                        });
                        return Err(self.error("upload", object, f, failures));
                    }
                    tokio::time::sleep(backoff(self.opts.retry_base, failures)).await;
                    if !self.is_emulator() {
                        match resume_point(&session, total).await {
                            Some(Some(n)) => offset = n,
                            Some(None) => return Ok(true),
                            None => {}
                        }
                    }
                }
            }
        }
    }

    /// Bytes `[from, to)` of `data`, hashed when they are the next ones (a chunk sent again is
    /// not hashed twice). A file is read off the runtime's thread.
    async fn read(
        &self,
        object: &str,
        data: &Data,
        hashing: &mut Hashing,
        from: u64,
        to: u64,
    ) -> Result<Bytes> {
        let (file, path) = match data {
            Data::Bytes(b) => return Ok(b.slice(from as usize..to as usize)),
            Data::File { file, path, .. } => (file.clone(), path),
        };
        let hash = (from == hashing.hashed).then(|| std::mem::take(&mut hashing.hasher));
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; (to - from) as usize];
            file.read_exact_at(&mut buf, from)?;
            let hash = hash.map(|mut h| {
                h.update(&buf);
                h
            });
            Ok::<_, std::io::Error>((Bytes::from(buf), hash))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let (bytes, hash) = read.map_err(|source| Error::Read {
            bucket: self.opts.bucket.clone(),
            object: object.to_string(),
            path: path.clone(),
            source,
        })?;
        if let Some(h) = hash {
            hashing.hasher = h;
            hashing.hashed = to;
        }
        Ok(bytes)
    }

    /// Once every byte of a file was read: that its BLAKE3 is the one it is uploaded under.
    fn check(&self, object: &str, data: &Data, hashing: &Hashing) -> Result<()> {
        let Data::File { path, b3, len, .. } = data else {
            return Ok(());
        };
        let actual = hashing.hasher.finalize();
        if hashing.hashed == *len && actual.as_bytes() == b3 {
            return Ok(());
        }
        Err(Error::Changed {
            bucket: self.opts.bucket.clone(),
            object: object.to_string(),
            path: path.clone(),
            expected: format!("b3:{}", hex::encode(b3)),
            actual: format!("b3:{}", actual.to_hex()),
        })
    }
}

/// A file's bytes hashed in order as they are first read (a chunk sent again is not hashed
/// twice).
#[derive(Default)]
struct Hashing {
    hasher: blake3::Hasher,
    /// How many bytes from the start went through `hasher`.
    hashed: u64,
}

/// How much a resumable session has: `Some(Some(bytes))`, `Some(None)` when it is complete,
/// `None` when the query failed.
async fn resume_point(session: &ResumableUploadClient, total: u64) -> Option<Option<u64>> {
    match session.status(Some(total)).await {
        Ok(UploadStatus::Ok(_)) => Some(None),
        Ok(UploadStatus::ResumeIncomplete(r)) => Some(Some(r.last_byte + 1)),
        Ok(UploadStatus::NotStarted) => Some(Some(0)),
        Err(_) => None,
    }
}

/// A status kept by [`Client::call`] that the caller did not expect after all.
fn status(s: u16) -> Failure {
    Failure::Status {
        status: s,
        message: "unexpected".into(),
    }
}

/// Why the login failed, retryable when the token server did not answer or answered 408,
/// 429 or 5xx.
fn login_failure(e: gcloud_storage::client::google_cloud_auth::error::Error) -> Failure {
    use gcloud_storage::client::google_cloud_auth::error::Error as E;
    match e {
        E::HttpError(e) => Failure::from_reqwest(e),
        E::TokenErrorResponse { status, .. } => Failure::Status {
            status,
            message: e.to_string(),
        },
        e => Failure::Transport {
            reason: e.to_string(),
            retry: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTPS endpoint builds its TLS client (one rustls provider in the tree: no panic
    /// about a process-level CryptoProvider) and a refused connection is an error after the
    /// retries, naming the object.
    #[test]
    fn https_endpoint_fails_cleanly_when_nothing_listens() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut o = Options::new("bucket-x");
        o.emulator = Some(format!("https://127.0.0.1:{port}"));
        o.retries = 1;
        o.retry_base = Duration::from_millis(1);
        let client = Client::new(o).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(client.get("some/object", 10)).unwrap_err();
        assert!(matches!(e, Error::Transport { attempts: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("gs://bucket-x/some/object"), "{e}");
    }

    #[test]
    fn bucket_names() {
        assert!(valid_bucket("my-bucket.test_1"));
        assert!(!valid_bucket("My"));
        assert!(!valid_bucket("-ab"));
        assert!(!valid_bucket("a/b/c"));
    }
}
