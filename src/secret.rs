//! What a credential in a URL looks like, and how it is kept out of files and messages.
//!
//! Locks are committed and shared, and messages end up in logs: a token must reach neither.
//! Everything that prints or records a URL goes through [`redact_url`].

/// Split `scheme://authority/rest` into (scheme, userinfo, everything after the userinfo).
fn split_userinfo(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => Some((scheme, Some(&rest[..at]), &rest[at + 1..])),
        None => Some((scheme, None, rest)),
    }
}

/// Whether userinfo is a secret: any password, and any user name over HTTP (GitHub and
/// Hugging Face accept a token as the user name). `ssh://git@host` is not a secret.
fn is_secret(scheme: &str, userinfo: &str) -> bool {
    userinfo.contains(':')
        || scheme.starts_with("http")
        || scheme.ends_with("+http")
        || scheme.ends_with("+https")
}

/// The scheme of `url` (`None` when it has no `scheme://`).
/// Environment variables that hold comfystore's own credentials (download tokens, the RunPod
/// key, cloud credentials): for comfystore's requests only, never for the programs it runs
/// that execute other people's code (a package's build script, ComfyUI's custom nodes).
pub const SECRET_VARS: &[&str] = &[
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "CIVITAI_API_TOKEN",
    "COMFYSTORE_TOKENS",
    "GITHUB_TOKEN",
    "GIT_TOKEN",
    "RUNPOD_AI_API_KEY",
    "RUNPOD_API_KEY",
    "COMFY_ORG_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

pub fn scheme_of(url: &str) -> Option<&str> {
    split_userinfo(url).map(|(scheme, _, _)| scheme)
}

/// Whether `url` carries a credential in its userinfo.
pub fn has_credentials(url: &str) -> bool {
    matches!(split_userinfo(url), Some((scheme, Some(u), _)) if is_secret(scheme, u))
}

/// `url` with any secret `user:password@` removed, for locks and messages.
pub fn redact_url(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, Some(u), tail)) if is_secret(scheme, u) => format!("{scheme}://{tail}"),
        _ => url.to_string(),
    }
}

/// `text` with every occurrence of each non-empty secret replaced by `***`.
pub fn redact_all(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |t, s| t.replace(s, "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_cut_from_urls() {
        assert!(has_credentials("https://tok@huggingface.co/x"));
        assert!(!has_credentials("ssh://git@h/a"));
        assert_eq!(redact_all("a tok b tok", &["tok", ""]), "a *** b ***");
    }
}
