//! What gcloud-storage leaves to its user: retries. Every request is retried with jittered
//! exponential back-off on 408, 429 (after its `Retry-After` when it has one), 5xx, errors
//! without an answer and a failed login; other answers are returned to the caller at once.
//!
//! The crate turns an error answer into its own error and drops the headers, so a small
//! middleware in its reqwest-middleware stack notes a retryable answer's `Retry-After` in a
//! task-local slot that [`Policy::run`] opens around each try.

use reqwest::StatusCode;
use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    /// The `Retry-After` of the last retryable answer of the current try.
    static RETRY_AFTER: Cell<Option<Duration>>;
}

/// The longest `Retry-After` obeyed (a longer one is cut to this).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Whether a status is worth another try.
pub(super) fn retryable(s: u16) -> bool {
    StatusCode::from_u16(s).is_ok_and(|s| {
        s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::TOO_MANY_REQUESTS
            || s.is_server_error()
    })
}

/// Exponential back-off with jitter, capped at 30 s ([`crate::backoff::jittered`]).
pub(super) fn backoff(base: Duration, n: u32) -> Duration {
    crate::backoff::jittered(base, n, Duration::from_secs(30))
}

/// Why one try failed, with nothing secret in it (reqwest's errors lose their URL).
#[derive(Debug)]
pub(super) enum Failure {
    /// GCS answered this status.
    Status { status: u16, message: String },
    /// No answer; `retry` when trying again can help (connection, timeout, a cut body).
    Transport { reason: String, retry: bool },
    /// No access token.
    Token(String),
}

impl Failure {
    pub(super) fn retryable(&self) -> bool {
        match self {
            Failure::Status { status, .. } => retryable(*status),
            Failure::Transport { retry, .. } => *retry,
            Failure::Token(_) => true,
        }
    }

    /// The status GCS answered, if it did.
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(super) fn from_reqwest(e: reqwest::Error) -> Failure {
        let e = e.without_url();
        if let Some(s) = e.status() {
            return Failure::Status {
                status: s.as_u16(),
                message: s.canonical_reason().unwrap_or("").to_string(),
            };
        }
        let retry = e.is_connect() || e.is_timeout() || e.is_request() || e.is_body();
        Failure::Transport {
            reason: chain(&e),
            retry,
        }
    }
}

impl From<gcloud_storage::http::Error> for Failure {
    fn from(e: gcloud_storage::http::Error) -> Failure {
        use gcloud_storage::http::Error as E;
        match e {
            E::Response(r) => Failure::Status {
                status: r.code,
                message: short(&r.message),
            },
            E::HttpClient(e) | E::RawResponse(e, _) => Failure::from_reqwest(e),
            E::HttpMiddleware(e) => Failure::Transport {
                reason: e.to_string(),
                retry: false,
            },
            E::TokenSource(e) => Failure::Token(e.to_string()),
            E::InvalidRangeHeader(r) => Failure::Status {
                status: 308,
                message: format!("unreadable Range {r:?} in the answer"),
            },
        }
    }
}

impl From<reqwest_middleware::Error> for Failure {
    fn from(e: reqwest_middleware::Error) -> Failure {
        match e {
            reqwest_middleware::Error::Reqwest(e) => Failure::from_reqwest(e),
            reqwest_middleware::Error::Middleware(e) => Failure::Transport {
                reason: e.to_string(),
                retry: false,
            },
        }
    }
}

/// The beginning of an error answer's message (GCS's JSON `error.message`, else the text).
pub(super) async fn message_of(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    short(&msg)
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            Failure::Transport { reason, .. } => f.write_str(reason),
            Failure::Token(reason) => write!(f, "access token: {reason}"),
        }
    }
}

/// An error and its causes on one line (hyper's causes name no URL).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The beginning of a message (at most 200 characters).
fn short(msg: &str) -> String {
    let msg = msg.trim();
    match msg.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &msg[..i]),
        None => msg.to_string(),
    }
}

/// How often and how patiently requests are tried.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// Retries after the first try.
    pub retries: u32,
    /// The first pause; it doubles each retry.
    pub base: Duration,
}

impl Policy {
    /// Run `op` until it succeeds, fails in a way another try cannot help, or has been tried
    /// `retries + 1` times. Gives the result and the number of tries. `label` names the
    /// request in the log (`upload gs://b/o`).
    pub(super) async fn run<T, F, Fut>(&self, label: &str, mut op: F) -> Result<T, (Failure, u32)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (result, after) = RETRY_AFTER
                .scope(Cell::new(None), async {
                    let r = op().await;
                    (r, RETRY_AFTER.with(Cell::get))
                })
                .await;
            let failure = match result {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if !failure.retryable() || attempt > self.retries {
                return Err((failure, attempt));
            }
            tracing::warn!(
                "gcs: {label}: {failure} (try {attempt} of {}); retrying",
                self.retries + 1
            );
            tokio::time::sleep(after.unwrap_or_else(|| backoff(self.base, attempt))).await;
        }
    }
}

/// Notes the `Retry-After` (seconds) of a retryable answer for [`Policy::run`].
pub(super) struct RetryAfter;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for RetryAfter {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let resp = next.run(req, extensions).await?;
        if retryable(resp.status().as_u16()) {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::backoff::retry_after(v, MAX_RETRY_AFTER));
            if after.is_some() {
                // Outside a `Policy::run` (no slot) there is nobody to tell.
                let _ = RETRY_AFTER.try_with(|c| c.set(after));
            }
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 429's `Retry-After` reaches the slot a try runs in, through the middleware the
    /// crate's requests go through.
    #[test]
    fn a_429s_retry_after_reaches_the_try() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
        });
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(RetryAfter)
            .build();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (status, after) = rt.block_on(RETRY_AFTER.scope(Cell::new(None), async {
            let r = client
                .get(format!("http://127.0.0.1:{port}/x"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), RETRY_AFTER.with(Cell::get))
        }));
        assert_eq!(status, 429);
        assert_eq!(after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 412] {
            assert!(!retryable(s), "{s}");
        }
    }
}
