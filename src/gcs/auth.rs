//! Access tokens for a service account: a JWT signed with its key, exchanged at its token
//! server (OAuth 2.0 JWT bearer grant), kept until a minute before it expires. The token goes
//! only into an `Authorization` header marked sensitive, and is never logged or put in an error.

use super::error::{Error, Result};
use super::key::ServiceAccount;
use base64::Engine;
use reqwest::header::HeaderValue;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The scope uploads, metadata reads and testIamPermissions need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// Tokens of one service account (or none: an emulator needs no login).
pub struct Tokens {
    account: Option<Arc<ServiceAccount>>,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<(HeaderValue, Instant)>>,
}

impl Tokens {
    pub fn new(account: Option<Arc<ServiceAccount>>, http: reqwest::Client) -> Tokens {
        Tokens {
            account,
            http,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The `Authorization` header (`Bearer …`, marked sensitive), or `None` without an account.
    pub async fn header(&self) -> Result<Option<HeaderValue>> {
        let Some(account) = &self.account else {
            return Ok(None);
        };
        let mut cached = self.cached.lock().await;
        if let Some((h, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(Some(h.clone()));
            }
        }
        let (token, expires_in) = self.fetch(account).await?;
        let mut h =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::Token {
                token_uri: account.token_uri.clone(),
                reason: "the token is not a valid header value".into(),
            })?;
        h.set_sensitive(true);
        let keep = Duration::from_secs(expires_in.saturating_sub(60).max(1));
        *cached = Some((h.clone(), Instant::now() + keep));
        tracing::debug!(
            "gcs: access token for {} (valid {}s)",
            account.client_email,
            expires_in
        );
        Ok(Some(h))
    }

    /// Exchange a signed JWT for an access token: (token, seconds it is valid).
    async fn fetch(&self, account: &ServiceAccount) -> Result<(String, u64)> {
        let fail = |reason: String| Error::Token {
            token_uri: account.token_uri.clone(),
            reason,
        };
        let assertion = jwt(account, SystemTime::now())?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let resp = self
            .http
            .post(&account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        let status = resp.status();
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| fail(format!("HTTP {status}: {}", e.without_url())))?;
        if !status.is_success() {
            // OAuth's error code and description; they never hold a credential.
            let code = v["error"].as_str().unwrap_or("");
            let desc = v["error_description"].as_str().unwrap_or("");
            return Err(fail(
                format!("HTTP {status}: {code} {desc}").trim().to_string(),
            ));
        }
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| fail("the answer has no access_token".into()))?;
        let expires_in = v["expires_in"].as_u64().unwrap_or(3600);
        Ok((token.to_string(), expires_in))
    }
}

/// The signed JWT of the bearer grant, valid for an hour from `now`.
fn jwt(account: &ServiceAccount, now: SystemTime) -> Result<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": account.token_uri,
        "iat": iat,
        "exp": iat + 3600,
    });
    let claims = b64.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let sig = account.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", b64.encode(sig)))
}
