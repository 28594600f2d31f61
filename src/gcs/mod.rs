//! Google Cloud Storage, for job outputs and the store's remote tier, through the
//! `gcloud-storage` crate (JSON API, logins, V4 signing) with what it lacks on top: retries
//! with back-off, uploads created only where no object is (and what a taken name means),
//! bounded and resumed downloads, files streamed and checked while they go up.
//!
//! `STORAGE_EMULATOR_HOST`'s convention is honoured by the caller, through
//! [`Options::emulator`]: an emulator (fake-gcs-server in the tests) needs no credentials, and
//! its missing IAM only skips the permission check. Nothing here logs or returns a token, a
//! key or a signed URL except as the value asked for.

mod auth;
mod client;
mod error;
mod retry;
mod sign;

pub use client::{
    Client, Data, Listed, Options, Preflight, Put, Sink, CHUNK_UNIT, GOOGLE_ENDPOINT,
};
pub use error::{Error, Result};
pub use sign::MAX_TTL;

/// The Content-Type of an output file, by its extension (`application/octet-stream` when
/// unknown).
pub fn content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "svg" => "image/svg+xml",
        "avif" => "image/avif",
        "exr" => "image/x-exr",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "avi" => "video/x-msvideo",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "opus" => "audio/opus",
        "m4a" => "audio/mp4",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "glb" => "model/gltf-binary",
        "gltf" => "model/gltf+json",
        "obj" => "model/obj",
        "safetensors" | "latent" | "bin" => "application/octet-stream",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_types_by_extension() {
        assert_eq!(super::content_type("a_00001_.png"), "image/png");
        assert_eq!(super::content_type("clip.MP4"), "video/mp4");
        assert_eq!(super::content_type("x.webp"), "image/webp");
        assert_eq!(super::content_type("anim.gif"), "image/gif");
        assert_eq!(super::content_type("noext"), "application/octet-stream");
    }
}
