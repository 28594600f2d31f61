//! uv, pip and python as this engine runs them: through [`Process`], so they get the same
//! environment hygiene as git, with the messages a failure has always given the user.

use crate::process::{Finished, Process, ProcessError};
use crate::python::error::{Error, Result};
use std::ffi::OsStr;

/// `program` without the variables in `foreign` (configuration that would make it look
/// elsewhere than where we point it).
pub(super) fn command(program: impl AsRef<OsStr>, foreign: &[&str]) -> Process {
    let mut p = Process::new(program);
    for v in foreign {
        p.env_remove(v);
    }
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
