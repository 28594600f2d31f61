//! Bearer tokens, by host: passed in by the caller (the command line reads them from the
//! environment), so the engine never looks for secrets itself.

use std::fmt;

/// Tokens by exact host name. Only a request to that very host carries its token: a redirect
/// to a CDN never does. And only over https, where anyone on the path cannot read it: a plain
/// `http://` URL on the token's host gets no token, unless the host was added with
/// [`Credentials::add_plain_http`] (a mirror on a network the user trusts, said explicitly).
#[derive(Clone, Default)]
pub struct Credentials(Vec<Entry>);

#[derive(Clone)]
struct Entry {
    host: String,
    token: String,
    plain_http: bool,
}

impl Credentials {
    /// No tokens.
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Send `token` to `host` (compared lowercase). An earlier token for the same host wins.
    /// Sent over https only.
    pub fn add(&mut self, host: impl Into<String>, token: impl Into<String>) -> &mut Credentials {
        self.push(host.into(), token.into(), false)
    }

    /// Send `token` to `host` over plain `http://` too (readable by anyone on the way there).
    pub fn add_plain_http(
        &mut self,
        host: impl Into<String>,
        token: impl Into<String>,
    ) -> &mut Credentials {
        self.push(host.into(), token.into(), true)
    }

    fn push(&mut self, host: String, token: String, plain_http: bool) -> &mut Credentials {
        self.0.push(Entry {
            host: host.to_ascii_lowercase(),
            token,
            plain_http,
        });
        self
    }

    /// The token for requests to `url`, if its host has one and the scheme may carry it.
    pub(super) fn for_url(&self, url: &reqwest::Url) -> Option<&str> {
        let host = url.host_str()?.to_ascii_lowercase();
        let e = self.0.iter().find(|e| e.host == host)?;
        match url.scheme() {
            "https" => Some(e.token.as_str()),
            "http" if e.plain_http => Some(e.token.as_str()),
            _ => None,
        }
    }
}

/// Hosts only: a token must never reach a log.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|e| (&e.host, "***")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_stay_out_of_debug_and_on_their_host() {
        let mut c = Credentials::new();
        c.add("huggingface.co", "hf_sekrit");
        assert!(!format!("{c:?}").contains("sekrit"));
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert_eq!(
            c.for_url(&url("https://HuggingFace.co/x")),
            Some("hf_sekrit")
        );
        assert_eq!(c.for_url(&url("https://cdn-lfs.huggingface.co/x")), None);
        assert_eq!(c.for_url(&url("http://huggingface.co/x")), None);
        c.add_plain_http("mirror.lan", "m");
        assert_eq!(c.for_url(&url("http://mirror.lan/x")), Some("m"));
    }
}
