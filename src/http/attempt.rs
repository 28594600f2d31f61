//! One attempt at a source: the request (redirects followed by hand, so a token only goes to
//! its own host), what its status and headers mean for a resumed transfer, and its body.

use super::fetcher::Fetcher;
use super::pipe::Sink;
use super::state::{content_range, describe, retry_after, validator, Fail, Transfer};
use reqwest::header::{AUTHORIZATION, IF_RANGE, LOCATION, RANGE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};

/// More redirects than this and the source is given up.
const MAX_REDIRECTS: usize = 10;

impl Fetcher {
    /// One request (following redirects) and its body.
    pub(super) async fn attempt(&self, url: &str, sink: &mut Sink<'_>) -> Result<(), Fail> {
        let (current, resp) = self.request(url, sink.at).await?;
        let p = &mut *sink.at;
        let skip = accept(&resp, p)?;
        if p.offset == 0 {
            p.validator = validator(resp.headers());
        }
        if self.segmentable(resp.status(), resp.headers(), p) {
            // This response only told us the server can do ranges; its body is not read.
            drop(resp);
            return self.segmented(&current, sink).await;
        }
        self.stream_body(resp, skip, sink).await?;
        let p = &sink.at;
        match p.total {
            Some(t) if p.offset < t => Err(Fail::Retry(
                format!("connection closed after {} of {t} bytes", p.offset),
                None,
            )),
            _ => Ok(()),
        }
    }

    /// `req` with the bearer token of `url`'s host, if it has one. Only the token of this
    /// very host: a redirect to a CDN never carries it.
    pub(super) fn authorize(&self, req: RequestBuilder, url: &Url) -> RequestBuilder {
        match self.opts.credentials.for_url(url) {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            None => req,
        }
    }

    /// GET `url` from where the transfer stands, following redirects; the final URL and its
    /// response.
    async fn request(&self, url: &str, p: &Transfer) -> Result<(Url, Response), Fail> {
        let mut current = Url::parse(url).map_err(|e| Fail::Final(format!("invalid URL: {e}")))?;
        for _ in 0..MAX_REDIRECTS {
            let mut req = self.client.get(current.clone());
            if p.offset > 0 {
                req = req.header(RANGE, format!("bytes={}-", p.offset));
                if let Some(v) = &p.validator {
                    req = req.header(IF_RANGE, v.clone());
                }
            }
            let r = self
                .authorize(req, &current)
                .send()
                .await
                .map_err(|e| Fail::Retry(describe(e), None))?;
            if !r.status().is_redirection() {
                return Ok((current, r));
            }
            let loc = r
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| Fail::Final(format!("{} without a Location", r.status())))?;
            current = current
                .join(loc)
                .map_err(|e| Fail::Final(format!("bad redirect {loc:?}: {e}")))?;
        }
        Err(Fail::Final("more than 10 redirects".into()))
    }

    /// Feed the body to the pipeline, leaving out its first `skip` bytes (the ones we have).
    async fn stream_body(
        &self,
        mut resp: Response,
        mut skip: u64,
        sink: &mut Sink<'_>,
    ) -> Result<(), Fail> {
        let resuming = sink.at.offset > 0 && skip == 0;
        loop {
            let stall = self.opts.stall_timeout;
            let mut chunk = match tokio::time::timeout(stall, resp.chunk()).await {
                Err(_) => return Err(Fail::Retry(format!("no data for {stall:?}"), None)),
                Ok(Err(e)) => return Err(Fail::Retry(describe(e), None)),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(c))) => c,
            };
            if skip > 0 {
                let n = skip.min(chunk.len() as u64) as usize;
                chunk = chunk.slice(n..);
                skip -= n as u64;
                if chunk.is_empty() {
                    continue;
                }
            }
            let n = sink.deliver(chunk)?;
            if resuming {
                sink.at.resumed += n;
            }
        }
    }
}

/// What a response means for the transfer: how many leading bytes of its body we already
/// have, or why it is no use (worth a retry or not).
fn accept(resp: &Response, p: &mut Transfer) -> Result<u64, Fail> {
    let headers = resp.headers();
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let (start, total) = content_range(headers)
                .ok_or_else(|| Fail::Retry("206 without a usable Content-Range".into(), None))?;
            if start != p.offset {
                return Err(Fail::Retry(
                    format!("asked for bytes from {}, got them from {start}", p.offset),
                    None,
                ));
            }
            p.check_total(total)?;
            Ok(0)
        }
        s if s.is_success() => {
            let changed =
                p.offset > 0 && p.validator.is_some() && p.validator != validator(headers);
            if changed {
                return Err(Fail::Final(
                    "the file changed on the server during the download".into(),
                ));
            }
            // Range ignored: read from zero and skip what we already have.
            if let Some(len) = resp.content_length() {
                p.check_total(len)?;
            }
            Ok(p.offset)
        }
        s if s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT
            || s.is_server_error() =>
        {
            Err(Fail::Retry(format!("HTTP {s}"), retry_after(headers)))
        }
        s => Err(Fail::Final(format!("HTTP {s}"))),
    }
}
