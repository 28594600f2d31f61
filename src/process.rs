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
    /// Run under a `sh` that kills the whole process group when comfystore dies.
    group_dies: bool,
}

impl Process {
    /// `program`, with no arguments yet.
    pub fn new(program: impl AsRef<OsStr>) -> Process {
        let program = program.as_ref();
        let mut cmd = Command::new(program);
        die_with_parent(&mut cmd);
        Process {
            cmd,
            program: program.to_string_lossy().into_owned(),
            secrets: Vec::new(),
            timeout: None,
            group_dies: false,
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

    /// Make everything the program starts die with comfystore too, not only the program
    /// (git's `git-remote-http` helpers would otherwise outlive a killed comfystore, still
    /// downloading). On Linux the program runs under `sh`, which gets SIGTERM when comfystore
    /// dies and then kills its process group (the program and all it started); elsewhere this
    /// does nothing more than [`Process::new`].
    pub fn group_dies_with_parent(&mut self) -> &mut Process {
        self.group_dies = true;
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
        let mut wrapped = if self.group_dies {
            group_wrapper(&self.cmd).map_err(spawn_err)?
        } else {
            None
        };
        let cmd = wrapped.as_mut().unwrap_or(&mut self.cmd);
        let mut child = cmd
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
                    kill_group(&mut child);
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

/// Every child leads its own process group (so a time limit kills what it started too) and gets
/// SIGTERM when comfystore dies, even by SIGKILL: no git, uv or pip outlives a killed
/// comfystore (git, on SIGTERM, stops the helpers it started and removes its temp files).
#[cfg(target_os = "linux")]
fn die_with_parent(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    c.process_group(0);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is allowed. It makes one prctl(PR_SET_PDEATHSIG) system call through rustix (a raw
    // syscall: no allocation, no locks, no shared state), and an error is returned, not
    // panicked on. The signal is sent when the thread that spawned the child ends; `output`
    // waits for the child on that thread, so it is comfystore's death.
    unsafe {
        c.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
}

/// Elsewhere there is no such signal: the process group still lets a time limit kill it all.
#[cfg(all(unix, not(target_os = "linux")))]
fn die_with_parent(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    c.process_group(0);
}

#[cfg(not(unix))]
fn die_with_parent(_: &mut Command) {}

/// `cmd` run as `sh -c 'trap "kill -KILL 0" TERM; "$0" "$@" & wait $!' PROGRAM ARGS…`, in its
/// own process group, with the same environment and folder: the shell gets SIGTERM when
/// comfystore dies (PR_SET_PDEATHSIG, kept across exec) and then SIGKILLs the group, which
/// holds the program and every process it started. A program that cannot be found is an
/// error here, as spawning it directly would be.
#[cfg(target_os = "linux")]
fn group_wrapper(cmd: &Command) -> std::io::Result<Option<Command>> {
    let program = cmd.get_program();
    let path_var = cmd
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .map(|(_, v)| v.map(OsStr::to_os_string))
        .unwrap_or_else(|| std::env::var_os("PATH"));
    let found = if Path::new(program).components().count() > 1 {
        let p = match cmd.get_current_dir() {
            Some(d) => d.join(program),
            None => Path::new(program).to_path_buf(),
        };
        p.is_file()
    } else {
        path_var
            .iter()
            .flat_map(std::env::split_paths)
            .any(|d| d.join(program).is_file())
    };
    if !found {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} not found", program.to_string_lossy()),
        ));
    }
    let mut w = Command::new("sh");
    w.arg("-c")
        .arg(r#"trap 'kill -KILL 0' TERM; "$0" "$@" & wait $!"#)
        .arg(program)
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        w.current_dir(d);
    }
    die_with_parent(&mut w);
    Ok(Some(w))
}

#[cfg(not(target_os = "linux"))]
fn group_wrapper(_: &Command) -> std::io::Result<Option<Command>> {
    Ok(None)
}

/// Kill the child and its process group (what it started).
fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
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

/// Run `f` at a lower CPU priority (nice 10), with a rayon pool of its own whose threads are
/// lowered too, so work done beside something that matters more (ComfyUI starting, uv
/// installing) takes only the CPU that leaves idle. Linux only: there the nice value of
/// `setpriority(PRIO_PROCESS, 0)` is the calling thread's alone (NPTL), so call this on a
/// thread of its own (it stays lowered) and never spawn a program from it (a child inherits
/// the nice value). Elsewhere it would lower the whole process, so `f` runs as it is.
pub fn at_low_priority<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    #[cfg(target_os = "linux")]
    {
        fn lower() {
            if let Err(e) = rustix::process::setpriority_process(None, 10) {
                tracing::debug!("at normal priority: {e}");
            }
        }
        lower();
        match rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("low-{i}"))
            .start_handler(|_| lower())
            .build()
        {
            Ok(pool) => pool.install(f),
            Err(_) => f(),
        }
    }
    #[cfg(not(target_os = "linux"))]
    f()
}
