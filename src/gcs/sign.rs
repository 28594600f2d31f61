//! URLs of objects: public ones, and the URL style gcloud-storage signs V4 URLs with. The
//! crate's own path style always names storage.googleapis.com; [`Style`] names the endpoint
//! actually used (an emulator's `127.0.0.1:PORT` in the tests) and encodes the object name
//! itself, so a name with `+` or `%` is signed as GCS will read it.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::time::Duration;

/// GCS refuses signed URLs valid longer than 7 days.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything but RFC 3986's unreserved characters.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
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

/// Path-style URLs at `host` (`storage.googleapis.com`, or `HOST:PORT` of an emulator).
pub(super) struct Style {
    pub host: String,
}

impl gcloud_storage::sign::URLStyle for Style {
    fn host(&self, _bucket: &str) -> String {
        self.host.clone()
    }

    fn path(&self, bucket: &str, object: &str) -> String {
        object_path(bucket, object)
    }
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
