//! The one way comfystore runs another program (git, uv, pip, python): arguments, environment,
//! an optional time limit, output captured, and secrets cut out of anything it reports.
//!
//! Callers decide what a failure means to the user; this module only makes every run behave
//! the same (like cargo-util's `ProcessBuilder`).

use crate::secret::redact_all;
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why a run did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started (not on PATH, not executable).
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// It ran and exited unsuccessfully; `stderr` is trimmed and redacted.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    /// It ran past its time limit and was killed.
    #[error("{program} did not finish within {limit:?}")]
    TimedOut { program: String, limit: Duration },
}

impl ProcessError {
    /// What the program printed on stderr, when it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ProcessError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// What a finished run gave.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// Redacted and trimmed.
    pub stderr: String,
    /// Redacted, whitespace as printed: for callers that show its lines indented.
    pub stderr_lines: String,
}

/// A program to run.
pub struct Process {
    cmd: Command,
    program: String,
    secrets: Vec<String>,
    timeout: Option<Duration>,
}

impl Process {
    /// `program`, with no arguments yet.
    pub fn new(program: impl AsRef<OsStr>) -> Process {
        let program = program.as_ref();
        Process {
            cmd: Command::new(program),
            program: program.to_string_lossy().into_owned(),
            secrets: Vec::new(),
            timeout: None,
        }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Process {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Process
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Process {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(&mut self, k: impl AsRef<OsStr>) -> &mut Process {
        self.cmd.env_remove(k);
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Process {
        self.cmd.current_dir(dir);
        self
    }

    /// A value (a token) never to appear in what this run reports.
    pub fn secret(&mut self, s: impl Into<String>) -> &mut Process {
        self.secrets.push(s.into());
        self
    }

    /// Kill the program if it runs longer than `limit`.
    pub fn timeout(&mut self, limit: Duration) -> &mut Process {
        self.timeout = Some(limit);
        self
    }

    /// The program's name, for messages.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments, lossily as text, for messages.
    pub fn arg_strings(&self) -> Vec<String> {
        self.cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The underlying command, for the rare caller that needs more (stdin, pre_exec).
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Run to the end and return what it gave, whatever its exit status.
    pub fn output(&mut self) -> Result<Finished, ProcessError> {
        let spawn_err = |source| ProcessError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        let status = match self.timeout {
            None => child.wait().map_err(spawn_err)?,
            Some(limit) => match wait_until(&mut child, Instant::now() + limit) {
                Some(status) => status,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ProcessError::TimedOut {
                        program: self.program.clone(),
                        limit,
                    });
                }
            },
        };
        let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let stderr_lines = redact_all(&String::from_utf8_lossy(&stderr), &secrets);
        Ok(Finished {
            status,
            stdout,
            stderr: stderr_lines.trim().to_string(),
            stderr_lines,
        })
    }

    /// Run to the end; success gives stdout, anything else an error with stderr.
    pub fn run(&mut self) -> Result<Vec<u8>, ProcessError> {
        let done = self.output()?;
        if done.status.success() {
            Ok(done.stdout)
        } else {
            Err(ProcessError::Failed {
                program: self.program.clone(),
                status: done.status,
                stderr: done.stderr,
            })
        }
    }
}

/// Read a pipe to its end on its own thread, so a chatty program never blocks on a full pipe.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Wait for `child` until `deadline`; `None` if it is still running then.
fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}
