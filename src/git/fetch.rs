//! Rebuild a locked source tree from its repo and commit, and check it against the lock.
//!
//! The commit is fetched shallowly (`git fetch --depth 1 URL COMMIT`); servers that refuse a
//! bare commit (protocol v0 without `uploadpack.allowReachableSHA1InWant`) get a full fetch of
//! every branch and tag instead. The checkout is stored exactly as `lock` stores a clean repo
//! ([`super::store_checkout`]), so its tree id must equal the lock's: that is the
//! reproducibility check, and a difference is an error naming both ids.
//!
//! Tokens (`GITHUB_TOKEN` for github.com, `GIT_TOKEN` for any https host) reach git through
//! `GIT_CONFIG_*` environment variables as an `http.<host>.extraHeader`, never on a command
//! line or in a URL, and are cut out of any message git prints.

use crate::git::error::{Error, Result};
use crate::process::ProcessError;
use crate::store::{ObjectId, Store};
use base64::Engine;
use std::path::Path;

/// One tree to rebuild from git.
#[derive(Clone, Debug)]
pub struct GitSource {
    /// What the lock calls it: `comfyui` or `custom_nodes/NAME`.
    pub label: String,
    pub repo: String,
    pub commit: String,
    /// The lock's tree id, when it has one (Manager-imported locks do not).
    pub expect: Option<ObjectId>,
    /// Paths whose untracked files stay out of the tree (the `comfyui` tree's data folders);
    /// a fresh checkout has none, so its tree is the whole checkout.
    pub excludes: Vec<String>,
}

/// Where a token for `repo` comes from, and the header git should send (only over https).
fn auth_header(
    repo: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, String, String)> {
    let rest = repo.strip_prefix("https://")?;
    let host = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
    let host_only = host.split(':').next().unwrap_or(host);
    let github = host_only == "github.com" || host_only.ends_with(".github.com");
    let token = github
        .then(|| env("GITHUB_TOKEN"))
        .flatten()
        .or_else(|| env("GIT_TOKEN"))
        .filter(|t| !t.is_empty())?;
    // GIT_TOKEN may be `user:token` (GitLab's `oauth2:…`, Bitbucket's `x-token-auth:…`).
    let userpass = if token.contains(':') {
        token.clone()
    } else {
        format!("x-access-token:{token}")
    };
    let value = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(userpass)
    );
    Some((format!("http.https://{host}/.extraHeader"), value, token))
}

/// Tokens for https git servers: `GITHUB_TOKEN` for github.com, `GIT_TOKEN` for any host
/// (`user:token` where the host wants a user). Built at the edge and passed in, so the engine
/// reads no environment of its own.
#[derive(Clone, Default)]
pub struct GitCredentials {
    github_token: Option<String>,
    git_token: Option<String>,
}

impl std::fmt::Debug for GitCredentials {
    /// Whether each token is set, never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |t: &Option<String>| t.as_ref().map(|_| "<set>");
        f.debug_struct("GitCredentials")
            .field("github_token", &set(&self.github_token))
            .field("git_token", &set(&self.git_token))
            .finish()
    }
}

impl GitCredentials {
    /// `GITHUB_TOKEN` and `GIT_TOKEN` from the environment.
    pub fn from_env() -> GitCredentials {
        GitCredentials {
            github_token: std::env::var("GITHUB_TOKEN").ok(),
            git_token: std::env::var("GIT_TOKEN").ok(),
        }
    }

    /// The config key, header and token to use for `repo`, if any.
    fn header_for(&self, repo: &str) -> Option<(String, String, String)> {
        auth_header(repo, |k| match k {
            "GITHUB_TOKEN" => self.github_token.clone(),
            "GIT_TOKEN" => self.git_token.clone(),
            _ => None,
        })
    }
}

/// Runs git for one source, with its token (if any) in the environment only.
struct Git<'a> {
    src: &'a GitSource,
    auth: Option<(String, String, String)>,
}

impl Git<'_> {
    fn run(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
        self.try_run(dir, args).map_err(|e| self.failed(args, e))
    }

    /// The error of a failed [`Git::try_run`].
    fn failed(&self, args: &[&str], e: ProcessError) -> Error {
        let shown = args.first().copied().unwrap_or("");
        self.error(super::reason(e, shown, "fetch a repo"))
    }

    fn try_run(&self, dir: &Path, args: &[&str]) -> std::result::Result<Vec<u8>, ProcessError> {
        let mut git = super::process(dir);
        git.args([
            "-c",
            "core.autocrlf=false",
            "-c",
            "core.symlinks=true",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .timeout(super::network_timeout());
        if let Some((key, value, token)) = &self.auth {
            let n: usize = std::env::var("GIT_CONFIG_COUNT")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            git.env("GIT_CONFIG_COUNT", (n + 1).to_string())
                .env(format!("GIT_CONFIG_KEY_{n}"), key)
                .env(format!("GIT_CONFIG_VALUE_{n}"), value)
                .secret(token.as_str())
                .secret(value.as_str());
        }
        tracing::debug!("{}: git {}", self.src.label, args.join(" "));
        git.run()
    }

    fn error(&self, reason: String) -> Error {
        Error::Git {
            what: format!(
                "{} ({}@{})",
                self.src.label,
                crate::secret::redact_url(&self.src.repo),
                short(&self.src.commit)
            ),
            reason,
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

/// Fetch `src.commit` from `src.repo` (with `creds` over https), check it out without `.git`,
/// store it, and check its tree id against the lock's. Returns the tree id.
pub fn fetch_tree(store: &Store, src: &GitSource, creds: &GitCredentials) -> Result<ObjectId> {
    let git = Git {
        src,
        auth: creds.header_for(&src.repo),
    };
    if !crate::ident::is_commit(&src.commit) {
        return Err(git.error("the lock's commit is not a full commit id".into()));
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}git-", crate::store::TEMP_PREFIX))
        .tempdir_in(store.tmp_dir())
        .map_err(|e| Error::io("create a temp folder in", store.tmp_dir(), e))?;
    let dir = tmp.path();
    git.run(dir, &["init", "-q"])?;
    fetch_commit(&git, dir)?;
    check_out(&git, dir)?;
    let (_, add) = super::store_checkout(store, dir, &src.excludes, &[])?;
    match src.expect {
        Some(want) if want != add.id => Err(git.error(format!(
            "the checkout gives tree {}, but the lock says {want}: the lock was made from a \
             modified checkout, or the repo's history was rewritten",
            add.id
        ))),
        _ => Ok(add.id),
    }
}

/// Fetch the commit alone (shallow); where the server refuses that, every branch and tag,
/// which must then hold it.
fn fetch_commit(git: &Git, dir: &Path) -> Result<()> {
    let src = git.src;
    let args = [
        "fetch",
        "-q",
        "--depth",
        "1",
        "--no-tags",
        &src.repo,
        &src.commit,
    ];
    let e = match git.try_run(dir, &args) {
        Ok(_) => return Ok(()),
        // A server that stalled is not asked again for everything.
        Err(e @ ProcessError::TimedOut { .. }) => return Err(git.failed(&args, e)),
        Err(e) => git.failed(&args, e),
    };
    tracing::info!(
        "{}: shallow fetch refused ({e}); fetching the whole repo",
        src.label
    );
    git.run(
        dir,
        &[
            "fetch",
            "-q",
            "--no-tags",
            &src.repo,
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
        ],
    )?;
    let want = format!("{}^{{commit}}", src.commit);
    git.run(dir, &["cat-file", "-e", &want]).map_err(|_| {
        git.error("the repo does not have this commit (was history rewritten?)".into())
    })?;
    Ok(())
}

/// Check the commit out (detached), with its submodules.
fn check_out(git: &Git, dir: &Path) -> Result<()> {
    git.run(dir, &["checkout", "-q", "--detach", &git.src.commit])?;
    if dir.join(".gitmodules").is_file() {
        git.run(dir, &["submodule", "update", "-q", "--init", "--recursive"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_only_over_https() {
        let env = |k: &str| (k == "GIT_TOKEN").then(|| "tok123".to_string());
        assert!(auth_header("http://example.com/a.git", env).is_none());
        assert!(auth_header("/srv/git/a.git", env).is_none());
        let (key, value, _) = auth_header("https://git.example.com/a/b.git", env).unwrap();
        assert_eq!(key, "http.https://git.example.com/.extraHeader");
        assert!(value.starts_with("Authorization: Basic "));
        assert!(!value.contains("tok123"));
        assert!(auth_header("https://git.example.com/a/b.git", |_| None).is_none());
        // GITHUB_TOKEN wins on github.com only.
        let both = |k: &str| Some(format!("{k}-value"));
        let (_, gh, t) = auth_header("https://github.com/o/r", both).unwrap();
        assert_eq!(t, "GITHUB_TOKEN-value");
        assert!(gh.starts_with("Authorization: Basic "));
        let (_, _, t) = auth_header("https://gitlab.com/o/r", both).unwrap();
        assert_eq!(t, "GIT_TOKEN-value");
    }
}
