//! Keeping one ComfyUI process alive for a version: start it from the version's venv, wait
//! until it answers while watching that it has not died, keep the last lines of its log for
//! error reports, restart it, and stop it (SIGTERM, then SIGKILL after a grace period).
//!
//! ComfyUI is spawned here rather than through [`crate::process::Process`]: that runner runs a
//! program to its end and hands back its output, while ComfyUI runs for the worker's life with
//! its output streamed into a log ring, and must die with its parent (`pre_exec`).

use super::error::{Error, Result};
use super::folders::Folders;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a starting ComfyUI is asked whether it answers: a connect to 127.0.0.1 costs
/// microseconds, and every interval adds up to its length to a cold start.
const READY_POLL: Duration = Duration::from_millis(20);

/// How many log lines are kept for error reports.
const LOG_LINES: usize = 200;

/// How to start ComfyUI.
#[derive(Clone, Debug)]
pub struct ComfyCommand {
    /// The materialized version (holds `main.py`).
    pub dest: PathBuf,
    /// Its environment's interpreter (`DEST/venv/bin/python` unless `--venv`).
    pub python: PathBuf,
    pub port: u16,
    /// More arguments for ComfyUI (`--cpu`, …).
    pub args: Vec<String>,
    /// `--extra-model-paths-config`, when models live in a shared folder.
    pub extra_model_paths: Option<PathBuf>,
    /// How long a running ComfyUI may go without answering before it counts as hung.
    pub hang: Duration,
    /// Names of more environment variables ComfyUI gets besides [`passed_to_comfyui`]'s
    /// (`--comfy-env`).
    pub pass_env: Vec<String>,
}

/// The environment variables ComfyUI inherits by default: where things are (paths, caches),
/// locale and time zone, Python's behaviour, and GPU device selection. Everything else (
/// `HF_TOKEN`, `RUNPOD_AI_API_KEY`, `GOOGLE_APPLICATION_CREDENTIALS`, AWS keys, proxies that
/// may carry passwords, …) stays with comfystore: every custom node runs in ComfyUI's process
/// and can read its environment. A name holding `TOKEN`, `SECRET`, `PASSWORD`, `CREDENTIAL`
/// or `KEY` is never passed by this list (only by `--comfy-env`).
pub const COMFY_ENV_EXACT: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LD_LIBRARY_PATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    // Cache locations, never tokens (HF_TOKEN, HF_TOKEN_PATH are not here).
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "TORCH_HOME",
    // Python's behaviour (not PYTHONPATH or PYTHONHOME: the interpreter is the venv's).
    "PYTHONHASHSEED",
    "PYTHONIOENCODING",
    "PYTHONUTF8",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONWARNINGS",
    "PYTHONFAULTHANDLER",
    // Threads and determinism of the numeric libraries.
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
];

/// Prefixes of the variables ComfyUI inherits by default: locale, and GPU devices and
/// runtimes (CUDA, NVIDIA, ROCm/HIP, PyTorch's allocator settings).
pub const COMFY_ENV_PREFIXES: &[&str] = &[
    "LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCM_", "HSA_", "PYTORCH_",
];

/// Whether ComfyUI inherits the variable `name` by default (see [`COMFY_ENV_EXACT`]).
pub fn passed_to_comfyui(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    if ["TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "KEY"]
        .iter()
        .any(|w| upper.contains(w))
    {
        return false;
    }
    COMFY_ENV_EXACT.contains(&name) || COMFY_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

impl ComfyCommand {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(self.dest.join("main.py"))
            .args(["--listen", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--disable-auto-launch");
        if let Some(p) = &self.extra_model_paths {
            c.arg("--extra-model-paths-config").arg(p);
        }
        // A cleaned environment: the allow-list and `--comfy-env`, nothing else.
        c.env_clear();
        for (k, v) in std::env::vars_os() {
            let Some(name) = k.to_str() else { continue };
            if passed_to_comfyui(name) || self.pass_env.iter().any(|p| p == name) {
                c.env(&k, &v);
            }
        }
        c.args(&self.args)
            .current_dir(&self.dest)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut c);
        c
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// ComfyUI gets SIGTERM when comfystore dies, even by SIGKILL, so a killed worker leaves no
/// ComfyUI holding the port and the GPU.
#[cfg(target_os = "linux")]
fn die_with_parent(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is allowed. It makes one prctl(PR_SET_PDEATHSIG) system call through rustix: no
    // allocation, no locks, no shared state; an error is returned, not panicked on.
    unsafe {
        c.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
}

/// Elsewhere (macOS) there is no such signal; `Drop` and SIGTERM handling stop ComfyUI.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

/// A running ComfyUI and its recent log.
pub struct Supervisor {
    cmd: ComfyCommand,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    /// How many times it was (re)started.
    pub starts: u32,
    /// Whether the running process has answered since it was spawned: until then it is
    /// starting (given the ready timeout), not hung (given `hang`).
    answered: bool,
}

impl Supervisor {
    pub fn new(cmd: ComfyCommand) -> Supervisor {
        Supervisor {
            cmd,
            child: None,
            log: Arc::new(Mutex::new(VecDeque::new())),
            starts: 0,
            answered: false,
        }
    }

    pub fn base_url(&self) -> String {
        self.cmd.base_url()
    }

    /// How long it may go without answering before it counts as hung.
    pub fn hang(&self) -> Duration {
        self.cmd.hang
    }

    pub fn dest(&self) -> &Path {
        &self.cmd.dest
    }

    /// The extra arguments ComfyUI gets.
    pub fn args(&self) -> &[String] {
        &self.cmd.args
    }

    /// Where it keeps input, output and temp files.
    pub fn folders(&self) -> Folders {
        Folders::of(&self.cmd.dest, &self.cmd.args)
    }

    /// Start ComfyUI (stopping a previous process first).
    pub fn start(&mut self) -> Result<()> {
        self.stop(Duration::from_secs(5));
        let mut child = self.cmd.command().spawn().map_err(|source| Error::Start {
            python: self.cmd.python.clone(),
            source,
        })?;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    tracing::debug!(target: "comfyui", "{line}");
                    push_line(&log, line);
                }
            });
        }
        tracing::info!("spawned ComfyUI (pid {})", child.id());
        self.child = Some(child);
        self.answered = false;
        self.starts += 1;
        Ok(())
    }

    /// Whether the process is running. A dead one is reaped, and its exit logged.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.push_log(format!("[comfystore] ComfyUI exited: {status}"));
                self.child = None;
                false
            }
            _ => false,
        }
    }

    /// Wait until `GET /` answers, while the process lives, for at most `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("{}/", self.base_url());
        let deadline = Instant::now() + timeout;
        loop {
            if !self.alive() {
                return Err(Error::Exited {
                    log: self.log_tail(20),
                });
            }
            if http_ok(&url) {
                if !self.answered {
                    tracing::info!("ComfyUI answered on {url}");
                }
                self.answered = true;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    url,
                    timeout,
                    log: self.log_tail(20),
                });
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// Start it if it is not running, and wait until it answers.
    pub fn ensure(&mut self, timeout: Duration) -> Result<()> {
        if !self.alive() {
            self.start()?;
            return self.wait_ready(timeout);
        }
        // Spawned and still starting (a warm start spawns it before the version check ends):
        // it has the ready timeout, not `hang`.
        if !self.answered {
            return self.wait_ready(timeout);
        }
        // Running: it must answer within `hang` (the GIL held by a custom node, a deadlock),
        // else it is hung and replaced.
        let hang = self.cmd.hang;
        match self.wait_ready(hang.min(timeout)) {
            Ok(()) => Ok(()),
            Err(_) if self.alive() => {
                self.push_log(format!(
                    "[comfystore] ComfyUI did not answer for {hang:?}: restarting it"
                ));
                self.restart(timeout)
            }
            Err(e) => Err(e),
        }
    }

    /// Stop and start again, then wait until it answers.
    pub fn restart(&mut self, timeout: Duration) -> Result<()> {
        self.stop(Duration::from_secs(5));
        self.start()?;
        self.wait_ready(timeout)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().skip(l.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    fn push_log(&self, line: String) {
        push_line(&self.log, line);
    }
}

/// Append to the log ring, dropping its oldest line when full.
fn push_line(log: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut l) = log.lock() {
        if l.len() == LOG_LINES {
            l.pop_front();
        }
        l.push_back(line);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A plain HTTP GET that says whether the server answered 2xx (std only: the supervisor is
/// synchronous and asks many times a second while ComfyUI starts).
fn http_ok(url: &str) -> bool {
    use std::io::Write;
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(addr) = host.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}
