//! V4 signed URLs (GOOG4-RSA-SHA256, path style, only `host` signed), as Google's "V4 signing
//! process" describes them: a canonical request, its SHA-256 in a string to sign, that string
//! signed with the service account's key. A signed URL is a bearer credential for its object:
//! it goes into the job's answer and nowhere else (no log, no error).

use super::error::{Error, Result};
use super::key::ServiceAccount;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Digest;
use std::time::{Duration, SystemTime};

/// GCS refuses signed URLs valid longer than 7 days.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything but RFC 3986's unreserved characters.
pub(super) const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same, keeping `/` (object names are paths).
const PATH: &AsciiSet = &QUERY.remove(b'/');

/// `/bucket/object`, encoded as GCS's canonical request wants it.
pub fn object_path(bucket: &str, object: &str) -> String {
    format!(
        "/{}/{}",
        utf8_percent_encode(bucket, QUERY),
        utf8_percent_encode(object, PATH)
    )
}

/// A GET URL of `bucket/object` at `endpoint` (scheme and host, e.g.
/// `https://storage.googleapis.com`), valid `ttl` from `now`.
pub fn signed_url(
    account: &ServiceAccount,
    endpoint: &url::Url,
    bucket: &str,
    object: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String> {
    if ttl > MAX_TTL || ttl.is_zero() {
        return Err(Error::Config(format!(
            "a signed URL's lifetime must be between 1s and 7 days, not {}",
            humantime::format_duration(ttl)
        )));
    }
    let host = match (endpoint.host_str(), endpoint.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(Error::Config(format!("endpoint {endpoint} has no host"))),
    };
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let datetime: String = stamp.chars().filter(|c| *c != '-' && *c != ':').collect();
    let date = &datetime[..8];
    let scope = format!("{date}/auto/storage/goog4_request");
    let credential = format!("{}/{scope}", account.client_email);
    let path = object_path(bucket, object);
    // Sorted by name, each name and value encoded.
    let params = [
        ("X-Goog-Algorithm", "GOOG4-RSA-SHA256".to_string()),
        ("X-Goog-Credential", credential),
        ("X-Goog-Date", datetime.clone()),
        ("X-Goog-Expires", ttl.as_secs().to_string()),
        ("X-Goog-SignedHeaders", "host".to_string()),
    ];
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY)))
        .collect::<Vec<_>>()
        .join("&");
    let canonical = format!("GET\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let to_sign = format!(
        "GOOG4-RSA-SHA256\n{datetime}\n{scope}\n{}",
        hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
    );
    let signature = hex::encode(account.sign(to_sign.as_bytes())?);
    Ok(format!(
        "{}://{host}{path}?{query}&X-Goog-Signature={signature}",
        endpoint.scheme()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_keep_slashes_and_encode_the_rest() {
        assert_eq!(
            object_path("b", "comfy/outputs/job 1/a+b.png"),
            "/b/comfy/outputs/job%201/a%2Bb.png"
        );
    }
}
