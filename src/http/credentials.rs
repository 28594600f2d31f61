//! Bearer tokens, by host: passed in by the caller (the command line reads them from the
//! environment), so the engine never looks for secrets itself.

use std::fmt;

/// Tokens by exact host name. Only a request to that very host carries its token: a redirect
/// to a CDN never does.
#[derive(Clone, Default)]
pub struct Credentials(Vec<(String, String)>);

impl Credentials {
    /// No tokens.
    pub fn new() -> Credentials {
        Credentials::default()
    }

    /// Send `token` to `host` (compared lowercase). An earlier token for the same host wins.
    pub fn add(&mut self, host: impl Into<String>, token: impl Into<String>) -> &mut Credentials {
        self.0.push((host.into(), token.into()));
        self
    }

    /// The token for requests to `url`, if its host has one.
    pub(super) fn for_url(&self, url: &reqwest::Url) -> Option<&str> {
        let host = url.host_str()?.to_ascii_lowercase();
        self.0
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, t)| t.as_str())
    }
}

/// Hosts only: a token must never reach a log.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(h, _)| (h, "***")))
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
    }
}
