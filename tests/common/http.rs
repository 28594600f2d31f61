//! The one loopback HTTP/1.1 server of the tests, std only (so a test never depends on the
//! client it is testing), with fault injection: the download tests use it directly, the Python
//! index of tests/common/pyindex.rs is routes on it.
//!
//! `TestServer::start()` listens on `127.0.0.1:<ephemeral port>` and serves each connection on
//! its own thread. Every response carries `Connection: close` and the socket is closed after it
//! (no keep-alive). Paths are registered with [`TestServer::add`] (as
//! `application/octet-stream`) or [`TestServer::add_typed`] (any Content-Type: pip ignores index
//! pages that are not `text/html`) together with a [`Behavior`]; unknown paths get 404. Every
//! request is recorded (method, path, lowercased headers, host, arrival time) and can be
//! inspected with [`TestServer::requests`] / [`TestServer::requests_for`]. The server stops on
//! `Drop`.
//!
//! Counting: `FailStatus` counts every request to the path (GET and HEAD), the body-shaping
//! behaviours (`DropAfter`, `IgnoreRange`, `Trickle`) count GET requests only, so a HEAD probe
//! never uses up a fault.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server does for one path.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with Content-Length, `ETag: "<16 hex of FNV-1a>"`, `Accept-Ranges: bytes`. Honours
    /// `Range: bytes=N-`, `bytes=N-M` and `bytes=-S` with 206 + Content-Range (416 when
    /// unsatisfiable), and `If-Range` (206 only when it equals the ETag, else 200 full).
    Normal,
    /// The first `times` GET requests send their headers (full Content-Length for what they
    /// announce) and then only `bytes` bytes of the body, and close the socket. Later: Normal.
    DropAfter { bytes: usize, times: usize },
    /// Never honours Range (always 200 with the full body, no `Accept-Ranges`), optionally
    /// dropping the first GET response after N body bytes.
    IgnoreRange { drop_first_after: Option<usize> },
    /// The first `times` requests get `status` (with a small body and an optional
    /// `Retry-After`), then Normal.
    FailStatus {
        status: u16,
        times: usize,
        retry_after: Option<String>,
    },
    /// Always this status, with a small body.
    Status(u16),
    /// The first `times` GET requests send `first` body bytes, then one byte every `delay_ms`
    /// (until the body is done or the client goes away). Later: Normal.
    Trickle {
        first: usize,
        delay_ms: u64,
        times: usize,
    },
    /// 302 with `Location: to`.
    Redirect { to: String },
    /// Serves (as Normal, ranges honoured) the body with its first byte flipped.
    WrongBytes,
    /// As Normal, the body paced at `bytes_per_sec` (a twentieth of it every 50 ms): a transfer
    /// whose remaining time is known, for checking an eta.
    Throttle { bytes_per_sec: u64 },
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Request {
    /// "GET", "HEAD", ...
    pub method: String,
    /// The path of the request target, without the query string.
    pub path: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// Header names lowercased, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// The host of the `Host` header, without the port ("127.0.0.1", "localhost").
    pub host: String,
    /// When the request head had been read completely.
    pub at: Instant,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The Content-Type of [`TestServer::add`]'s routes.
pub const OCTET_STREAM: &str = "application/octet-stream";

struct Route {
    body: Vec<u8>,
    behavior: Behavior,
    /// Of the body's responses (200, 206); the small status bodies are `text/plain`.
    content_type: String,
    /// Requests of any method seen so far.
    all: usize,
    /// GET requests seen so far.
    gets: usize,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    requests: Vec<Request>,
}

pub struct TestServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Bind 127.0.0.1:0 and spawn the accept loop.
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("test-http-{port}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let state = state.clone();
                        let stop = stop.clone();
                        let _ = std::thread::Builder::new()
                            .name("test-http-conn".into())
                            .spawn(move || serve(conn, &state, &stop));
                    }
                })
                .expect("spawn accept loop")
        };
        TestServer {
            port,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:{port}{path}`
    pub fn url(&self, path: &str) -> String {
        self.url_host("127.0.0.1", path)
    }

    /// `http://{host}:{port}{path}`, e.g. host "localhost" to look like another host.
    pub fn url_host(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// Serve `body` at `path` (no query string) with `behavior`, as [`OCTET_STREAM`]; replaces
    /// an earlier route and resets its counters.
    pub fn add(&self, path: &str, body: Vec<u8>, behavior: Behavior) {
        self.add_typed(path, body, behavior, OCTET_STREAM);
    }

    /// [`TestServer::add`] with the body's Content-Type.
    pub fn add_typed(&self, path: &str, body: Vec<u8>, behavior: Behavior, content_type: &str) {
        self.state.lock().unwrap().routes.insert(
            path.to_string(),
            Route {
                body,
                behavior,
                content_type: content_type.to_string(),
                all: 0,
                gets: 0,
            },
        );
    }

    /// Every request seen, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests whose path (without query) is `path`, in arrival order.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// The strong ETag the server gives `body` (quotes included).
pub fn etag_of(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in body {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Read the request head (up to the blank line). None on EOF, timeout or garbage.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            buf.truncate(end);
            break;
        }
        if let Some(end) = find(&buf, b"\n\n") {
            buf.truncate(end);
            break;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8(buf).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(head: &str) -> Option<Request> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_ascii_uppercase();
    let mut target = first.next()?.to_string();
    // Absolute form (as sent to a proxy): keep only the path.
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        target = match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        };
    }
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let host_header = headers
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let host = if let Some(rest) = host_header.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        host_header.split(':').next().unwrap_or("").to_string()
    };
    let path = target.split('?').next().unwrap_or("").to_string();
    Some(Request {
        method,
        path,
        target,
        headers,
        host,
        at: Instant::now(),
    })
}

/// What one response looks like before it is written.
struct Plan {
    status: u16,
    headers: Vec<(String, String)>,
    /// The bytes the headers announce (Content-Length is its length).
    body: Vec<u8>,
    /// Send only this many body bytes, then close.
    cut: Option<usize>,
    /// Send this many bytes, then one byte every `.1` ms.
    trickle: Option<(usize, u64)>,
    /// Pace the body at this many bytes a second.
    rate: Option<u64>,
}

fn small(status: u16) -> Plan {
    Plan {
        status,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: format!("{status} {}\n", reason(status)).into_bytes(),
        cut: None,
        trickle: None,
        rate: None,
    }
}

/// 200 or 206 for `body` of `ctype`, honouring Range and If-Range when `ranges`.
fn full_or_range(req: &Request, body: &[u8], ctype: &str, ranges: bool) -> Plan {
    let etag = etag_of(body);
    let mut headers = vec![
        ("Content-Type".to_string(), ctype.to_string()),
        ("ETag".to_string(), etag.clone()),
    ];
    if ranges {
        headers.push(("Accept-Ranges".into(), "bytes".into()));
    }
    let full = |headers| Plan {
        status: 200,
        headers,
        body: body.to_vec(),
        cut: None,
        trickle: None,
        rate: None,
    };
    if !ranges {
        return full(headers);
    }
    let Some(range) = req.header("range") else {
        return full(headers);
    };
    if let Some(if_range) = req.header("if-range") {
        if if_range != etag {
            return full(headers);
        }
    }
    let len = body.len();
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return full(headers);
    };
    if spec.contains(',') {
        return full(headers); // multiple ranges: not supported, serve it all
    }
    let Some((a, b)) = spec.split_once('-') else {
        return full(headers);
    };
    let (a, b) = (a.trim(), b.trim());
    let bounds = if a.is_empty() {
        // Suffix range: the last N bytes.
        b.parse::<usize>()
            .ok()
            .filter(|&n| n > 0 && len > 0)
            .map(|n| (len.saturating_sub(n), len - 1))
    } else {
        match a.parse::<usize>() {
            Ok(start) if start < len => {
                let end = if b.is_empty() {
                    Some(len - 1)
                } else {
                    b.parse::<usize>().ok().map(|e| e.min(len - 1))
                };
                end.filter(|&e| e >= start).map(|e| (start, e))
            }
            Ok(_) => None,
            Err(_) => return full(headers),
        }
    };
    match bounds {
        Some((start, end)) => {
            headers.push(("Content-Range".into(), format!("bytes {start}-{end}/{len}")));
            Plan {
                status: 206,
                headers,
                body: body[start..=end].to_vec(),
                cut: None,
                trickle: None,
                rate: None,
            }
        }
        None => {
            let mut p = small(416);
            p.headers
                .push(("Content-Range".into(), format!("bytes */{len}")));
            p
        }
    }
}

fn plan(req: &Request, state: &Mutex<State>) -> Plan {
    let mut st = state.lock().unwrap();
    st.requests.push(req.clone());
    let Some(route) = st.routes.get_mut(&req.path) else {
        return small(404);
    };
    route.all += 1;
    let is_get = req.method == "GET";
    if is_get {
        route.gets += 1;
    }
    // 1-based number of this request among those the behaviour counts.
    let nth_all = route.all;
    let nth_get = if is_get { route.gets } else { usize::MAX };
    let body = &route.body;
    let ctype = route.content_type.as_str();
    match &route.behavior {
        Behavior::Normal => full_or_range(req, body, ctype, true),
        Behavior::DropAfter { bytes, times } => {
            let mut p = full_or_range(req, body, ctype, true);
            if nth_get <= *times {
                p.cut = Some(*bytes);
            }
            p
        }
        Behavior::IgnoreRange { drop_first_after } => {
            let mut p = full_or_range(req, body, ctype, false);
            if nth_get == 1 {
                p.cut = *drop_first_after;
            }
            p
        }
        Behavior::FailStatus {
            status,
            times,
            retry_after,
        } => {
            if nth_all <= *times {
                let mut p = small(*status);
                if let Some(ra) = retry_after {
                    p.headers.push(("Retry-After".into(), ra.clone()));
                }
                p
            } else {
                full_or_range(req, body, ctype, true)
            }
        }
        Behavior::Status(status) => small(*status),
        Behavior::Trickle {
            first,
            delay_ms,
            times,
        } => {
            let mut p = full_or_range(req, body, ctype, true);
            if nth_get <= *times {
                p.trickle = Some((*first, *delay_ms));
            }
            p
        }
        Behavior::Redirect { to } => {
            let mut p = small(302);
            p.headers.push(("Location".into(), to.clone()));
            p
        }
        Behavior::Throttle { bytes_per_sec } => {
            let mut p = full_or_range(req, body, ctype, true);
            p.rate = Some(*bytes_per_sec);
            p
        }
        Behavior::WrongBytes => {
            let mut wrong = body.clone();
            if let Some(b) = wrong.first_mut() {
                *b ^= 0xff;
            }
            full_or_range(req, &wrong, ctype, true)
        }
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    if stop.load(Ordering::SeqCst) {
        return;
    }
    let Some(head) = read_head(&mut conn) else {
        return;
    };
    let Some(req) = parse(&head) else {
        let p = small(400);
        let _ = write_response(&mut conn, &p, false, stop);
        return;
    };
    let p = plan(&req, state);
    let _ = write_response(&mut conn, &p, req.method != "HEAD", stop);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
    // Give the client a moment to read the FIN before the socket is dropped, and drain what it
    // may still send so the close is not turned into a reset.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    while let Ok(n) = conn.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

fn write_response(
    conn: &mut TcpStream,
    p: &Plan,
    with_body: bool,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", p.status, reason(p.status));
    for (k, v) in &p.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        p.body.len()
    ));
    conn.write_all(head.as_bytes())?;
    if !with_body {
        return Ok(());
    }
    let limit = p.cut.unwrap_or(usize::MAX).min(p.body.len());
    if let Some(rate) = p.rate {
        return write_paced(conn, &p.body[..limit], rate, stop);
    }
    let (burst, delay) = match p.trickle {
        Some((first, delay)) => (first.min(limit), Some(delay)),
        None => (limit, None),
    };
    for chunk in p.body[..burst].chunks(64 * 1024) {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        conn.write_all(chunk)?;
    }
    conn.flush()?;
    if let Some(delay) = delay {
        for &b in &p.body[burst..limit] {
            // Sleep in small steps so a dropped server stops promptly.
            let until = Instant::now() + Duration::from_millis(delay);
            while Instant::now() < until {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                std::thread::sleep(
                    Duration::from_millis(10).min(until.saturating_duration_since(Instant::now())),
                );
            }
            conn.write_all(&[b])?;
            conn.flush()?;
        }
    }
    Ok(())
}

/// Write `body` at `rate` bytes a second: each twentieth of a second's worth once the clock
/// says the bytes before it are due.
fn write_paced(
    conn: &mut TcpStream,
    body: &[u8],
    rate: u64,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let start = Instant::now();
    let mut sent = 0usize;
    for chunk in body.chunks((rate / 20).max(1) as usize) {
        let due = start + Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
        while Instant::now() < due {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            std::thread::sleep(
                Duration::from_millis(10).min(due.saturating_duration_since(Instant::now())),
            );
        }
        conn.write_all(chunk)?;
        sent += chunk.len();
    }
    conn.flush()
}
