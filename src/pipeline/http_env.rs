//! Download settings from the process environment. The HTTP engine reads none itself: the
//! command line calls [`http_options`] once and passes what it gives down.

use crate::http::{Credentials, HttpOptions, DEFAULT_BACKOFF, DEFAULT_SEGMENT_SIZE};

/// The default [`HttpOptions`] with what the environment sets: `COMFYSTORE_BACKOFF` (the first
/// retry delay, e.g. `10ms`), `COMFYSTORE_RANGE_SIZE` (bytes per range of a parallel download)
/// and the tokens of [`credentials`].
pub fn http_options() -> HttpOptions {
    let backoff = std::env::var("COMFYSTORE_BACKOFF")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(DEFAULT_BACKOFF);
    let segment_size = std::env::var("COMFYSTORE_RANGE_SIZE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    HttpOptions {
        backoff,
        credentials: credentials(),
        ..HttpOptions::default()
    }
    .with_segment_size(segment_size)
}

/// `HF_TOKEN` for huggingface.co (and hf.co), `CIVITAI_API_TOKEN` for civitai.com, and
/// `COMFYSTORE_TOKENS=host=token,host=token` for anything else (internal mirrors); all over
/// https only. `http://host=token` in `COMFYSTORE_TOKENS` sends that token over plain HTTP too.
pub fn credentials() -> Credentials {
    let mut c = Credentials::new();
    if let Ok(t) = std::env::var("HF_TOKEN") {
        for host in ["huggingface.co", "hf.co"] {
            c.add(host, t.clone());
        }
    }
    if let Ok(t) = std::env::var("CIVITAI_API_TOKEN") {
        c.add("civitai.com", t);
    }
    if let Ok(list) = std::env::var("COMFYSTORE_TOKENS") {
        for pair in list.split(',') {
            if let Some((h, t)) = pair.split_once('=') {
                match h.trim().strip_prefix("http://") {
                    Some(h) => c.add_plain_http(h.to_ascii_lowercase(), t.trim()),
                    None => c.add(h.trim().to_ascii_lowercase(), t.trim()),
                };
            }
        }
    }
    c
}
