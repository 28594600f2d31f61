//! A service account's JSON key file (`GOOGLE_APPLICATION_CREDENTIALS`): its e-mail, token
//! server and RSA key, which signs access-token requests and V4 signed URLs (RSA PKCS#1 v1.5
//! with SHA-256, through aws-lc-rs, which rustls already brings).

use super::error::{Error, Result};
use base64::Engine;
use serde::Deserialize;
use std::path::Path;

/// Google's token server, when the key file names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    token_uri: Option<String>,
    project_id: Option<String>,
}

/// A service account that can sign. Its `Debug` shows the e-mail only.
pub struct ServiceAccount {
    pub client_email: String,
    pub token_uri: String,
    pub project_id: Option<String>,
    key: aws_lc_rs::signature::RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Read a service-account key file. Errors name the path and what is wrong, never content.
    pub fn read(path: &Path) -> Result<ServiceAccount> {
        let bad = |reason: String| Error::Credentials {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let file: KeyFile = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("not a service-account key file ({})", describe(&e))))?;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(bad(format!(
                "type {kind:?}: only service-account keys are supported"
            )));
        }
        let key = rsa_from_pem(&file.private_key).map_err(bad)?;
        Ok(ServiceAccount {
            client_email: file.client_email,
            token_uri: file
                .token_uri
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
            project_id: file.project_id,
            key,
        })
    }

    /// RSA-SHA256 (PKCS#1 v1.5) signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
            .map_err(|_| Error::Key("signing failed".into()))?;
        Ok(sig)
    }
}

/// What is wrong with the key file, without quoting it (a serde message can quote a value).
fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("missing field") {
        return msg.split(" at line").next().unwrap_or("").to_string();
    }
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// A PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM key.
fn rsa_from_pem(pem: &str) -> std::result::Result<aws_lc_rs::signature::RsaKeyPair, String> {
    let (label, der) = pem_body(pem).ok_or("private_key is not a PEM key")?;
    let key = match label.as_str() {
        "PRIVATE KEY" => aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => aws_lc_rs::signature::RsaKeyPair::from_der(&der),
        other => return Err(format!("private_key is a {other:?}, not an RSA key")),
    };
    key.map_err(|e| format!("private_key is not a usable RSA key ({e})"))
}

/// The label and the decoded body of the first PEM block.
fn pem_body(pem: &str) -> Option<(String, Vec<u8>)> {
    let start = pem.find("-----BEGIN ")?;
    let rest = &pem[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end = body.find("-----END ")?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_key_file_is_named_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n"}"#,
            r#"{"type":"service_account","client_email":"a@b","private_key":SECRETSECRET}"#,
            r#"{"type":"service_account","client_email":"a@b","private_key":7,"x":"SECRETSECRET"}"#,
            r#"{"type":"authorized_user","client_email":"a@b","private_key":"U0VDUkVUU0VDUkVU"}"#,
        ];
        for (i, text) in cases.iter().enumerate() {
            let path = dir.path().join(format!("k{i}.json"));
            std::fs::write(&path, text).unwrap();
            let e = ServiceAccount::read(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("k{i}.json")), "{e}");
            assert!(!e.contains("SECRET") && !e.contains("U0VDUkVU"), "{e}");
        }
    }

    #[test]
    fn pem_blocks_are_read_and_garbage_is_refused() {
        let (label, der) =
            pem_body("x\n-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n")
                .unwrap();
        assert_eq!(label, "PRIVATE KEY");
        assert_eq!(der, vec![0, 1, 2, 3]);
        assert!(pem_body("no pem").is_none());
        assert!(
            rsa_from_pem("-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----").is_err()
        );
    }
}
