//! uv, pip and python as this engine runs them: through [`Process`], so they get the same
//! environment hygiene as git, with the messages a failure has always given the user.

use crate::process::{Finished, Process, ProcessError};
use crate::python::error::{Error, Result};
use std::ffi::OsStr;

/// `program` without the variables in `foreign` (configuration that would make it look
/// elsewhere than where we point it), and without comfystore's credentials
/// ([`crate::secret::SECRET_VARS`]): pip and uv run packages' build scripts. The git they run
/// for `git+` requirements may use the transports comfystore's own git may use.
pub(super) fn command(program: impl AsRef<OsStr>, foreign: &[&str]) -> Process {
    let mut p = Process::new(program);
    for v in foreign.iter().chain(crate::secret::SECRET_VARS) {
        p.env_remove(v);
    }
    p.env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git:file");
    p
}

/// Run `p` to the end, whatever its exit status; one that cannot start is
/// `python <what>: cannot run: <why>`.
pub(super) fn output(p: &mut Process, what: &str) -> Result<Finished> {
    tracing::debug!("running {:?}", p.command());
    p.output().map_err(|e| Error::python(what, reason(e)))
}

/// Run `p`; one that fails is `python <what>: failed (<status>): <stderr>`.
pub(super) fn run(p: &mut Process, what: &str) -> Result<Vec<u8>> {
    tracing::debug!("running {:?}", p.command());
    p.run().map_err(|e| Error::python(what, reason(e)))
}

/// A process error as the python engine words it (the program is already in `what`).
fn reason(e: ProcessError) -> String {
    match e {
        ProcessError::Spawn { source, .. } => format!("cannot run: {source}"),
        ProcessError::Failed { status, stderr, .. } => format!("failed ({status}): {stderr}"),
        e @ ProcessError::TimedOut { .. } => e.to_string(),
    }
}

/// Whether `program args…` runs and succeeds (a tool on PATH).
pub(super) fn succeeds(program: &str, args: &[&str]) -> bool {
    Process::new(program).args(args).run().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_tools_get_no_credentials_and_no_git_remote_helpers() {
        let mut p = command("pip", &["PIP_INDEX_URL"]);
        let envs: Vec<(String, Option<String>)> = p
            .command()
            .get_envs()
            .map(|(k, v)| {
                let s = |x: &OsStr| x.to_string_lossy().into_owned();
                (s(k), v.map(s))
            })
            .collect();
        for k in [
            "HF_TOKEN",
            "RUNPOD_AI_API_KEY",
            "GIT_TOKEN",
            "PIP_INDEX_URL",
        ] {
            assert!(
                envs.contains(&(k.to_string(), None)),
                "{k} reaches pip: {envs:?}"
            );
        }
        assert!(envs.contains(&(
            "GIT_ALLOW_PROTOCOL".to_string(),
            Some("https:http:ssh:git:file".to_string())
        )));
    }
}
