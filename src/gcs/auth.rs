//! Logins, through gcloud-auth (gcloud-storage's `auth` feature): a credentials file named by
//! the user (`GOOGLE_APPLICATION_CREDENTIALS`: a service-account key, whose `token_uri` is
//! honoured, or a gcloud user login), else Google's application default credentials as the
//! crate finds them (`GOOGLE_APPLICATION_CREDENTIALS_JSON`, gcloud's
//! `application_default_credentials.json`, the metadata server on Google Cloud), else, for an
//! emulator, no login at all.
//!
//! The file is read here first, so a bad one is named (by path, never by content) before any
//! request.

use super::error::{Error, Result};
use gcloud_storage::client::google_cloud_auth::credentials::CredentialsFile;
use gcloud_storage::client::google_cloud_auth::error::Error as AuthError;
use gcloud_storage::client::google_cloud_auth::project::Config;
use gcloud_storage::client::google_cloud_auth::token::DefaultTokenSourceProvider;
use gcloud_storage::client::ClientConfig;
use gcloud_storage::http::storage_client::SCOPES;
use gcloud_storage::sign::SignBy;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use token_source::{TokenSource, TokenSourceProvider};

/// Where the access tokens come from.
#[derive(Clone)]
pub(super) enum Login {
    /// A credentials file: its path (for messages) and content.
    File(PathBuf, Box<CredentialsFile>),
    /// Application default credentials, found by the crate at first use.
    Default,
    /// None (an emulator).
    Anonymous,
}

impl Login {
    /// Whether URLs can be signed: a key in the file, or on Google Cloud the metadata
    /// server's account (through IAM signBlob; found out when signing).
    pub(super) fn can_sign(&self) -> bool {
        match self {
            Login::File(_, f) => f.private_key.is_some(),
            Login::Default => true,
            Login::Anonymous => false,
        }
    }

    /// What the token comes from, for messages.
    pub(super) fn source(&self) -> String {
        match self {
            Login::File(path, f) => f
                .token_uri
                .clone()
                .unwrap_or_else(|| format!("the credentials in {}", path.display())),
            Login::Default => "application default credentials".into(),
            Login::Anonymous => "nowhere (anonymous)".into(),
        }
    }

    /// `base` with this login, and the token source it uses (none when anonymous). The
    /// first token is fetched here. This is the crate's `ClientConfig::with_credentials` /
    /// `with_auth`, done by hand to keep the token source for our own multipart upload.
    pub(super) async fn configure(
        &self,
        base: ClientConfig,
    ) -> Result<(ClientConfig, Option<Arc<dyn TokenSource>>), AuthError> {
        let scopes = Config::default().with_scopes(&SCOPES);
        let provider = match self {
            Login::Anonymous => return Ok((base.anonymous(), None)),
            Login::File(_, f) => {
                DefaultTokenSourceProvider::new_with_credentials(scopes, f.clone()).await?
            }
            Login::Default => DefaultTokenSourceProvider::new(scopes).await?,
        };
        let mut config = base;
        match &provider.source_credentials {
            Some(cred) => {
                config.project_id.clone_from(&cred.project_id);
                config
                    .default_google_access_id
                    .clone_from(&cred.client_email);
                config.default_sign_by = cred
                    .private_key
                    .as_ref()
                    .map(|k| SignBy::PrivateKey(k.clone().into_bytes()));
            }
            // On Google Cloud: the metadata server's account, signing through IAM signBlob.
            None => {
                config.project_id = Some(gcloud_metadata::project_id().await);
                config.default_google_access_id = gcloud_metadata::email("default").await.ok();
                config.default_sign_by = Some(SignBy::SignBytes);
            }
        }
        let tokens = provider.token_source();
        config.token_source_provider = Some(Box::new(provider));
        Ok((config, Some(tokens)))
    }
}

/// Read a credentials file. Errors name the path and what is wrong, never content.
pub(super) fn read(path: &Path) -> Result<Login> {
    let bad = |reason: String| Error::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let file: CredentialsFile = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("not a credentials file ({})", describe(&e))))?;
    match file.tp.as_str() {
        "service_account" => {
            let key = file
                .private_key
                .as_ref()
                .ok_or_else(|| bad("a service-account key without private_key".into()))?;
            // The key the crate signs URLs with (RSA, PKCS#8 PEM); its errors quote no key.
            gcloud_storage::sign::RsaKeyPair::try_from(&key.as_bytes().to_vec())
                .map_err(|e| bad(format!("private_key is not a PKCS#8 RSA key in PEM ({e})")))?;
            if file.client_email.is_none() {
                return Err(bad("a service-account key without client_email".into()));
            }
        }
        "authorized_user" => {}
        other => {
            return Err(bad(format!(
                "type {other:?}: only service-account keys and gcloud user logins \
                 (authorized_user) are supported"
            )))
        }
    }
    Ok(Login::File(path.to_path_buf(), Box::new(file)))
}

/// What is wrong with the file, without quoting it (a serde message can quote a value).
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
            r#"{"type":"external_account","client_email":"a@b","private_key":"U0VDUkVUU0VDUkVU"}"#,
            r#"{"type":"service_account","client_email":"a@b","private_key":"no pem U0VDUkVUU0VDUkVU"}"#,
        ];
        for (i, text) in cases.iter().enumerate() {
            let path = dir.path().join(format!("k{i}.json"));
            std::fs::write(&path, text).unwrap();
            let e = match read(&path) {
                Ok(_) => panic!("case {i} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(&format!("k{i}.json")), "{e}");
            assert!(!e.contains("SECRET") && !e.contains("U0VDUkVU"), "{e}");
        }
    }
}
