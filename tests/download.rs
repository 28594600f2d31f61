//! `comfystore add-url` against a real local HTTP server with injected faults: dropped
//! connections and resume, servers that ignore Range, 5xx/429 with Retry-After, stalls, wrong
//! bytes, redirects across hosts (tokens), and the source record.
//!
//! Every run sets `COMFYSTORE_BACKOFF=10ms` so retries are fast, and clears proxies and tokens.

mod common;

use common::comfy::pseudo_random;
use common::http::{etag_of, Behavior, Request, TestServer};
use common::{describe, run, run_env, sha256_hex, stderr, NETWORK_ENV};
use serde_json::Value;
use sha2::Digest;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// A temp dir and the (not yet created) store inside it.
fn fresh() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    (t, store)
}

/// `comfystore --store S ARGS...` with a 10 ms backoff base, no proxy and no tokens, then the
/// `envs` changes.
fn cli(store: &Path, args: &[&str], envs: &[(&str, Option<&OsStr>)]) -> Output {
    let mut all: Vec<(&str, Option<&OsStr>)> =
        vec![("COMFYSTORE_BACKOFF", Some(OsStr::new("10ms")))];
    for k in NETWORK_ENV {
        all.push((k, None));
    }
    all.extend_from_slice(envs);
    run_env(store, args, &all)
}

/// `--json add-url URL EXTRA...`, required to succeed; the JSON report.
fn add_url_json(store: &Path, url: &str, extra: &[&str], envs: &[(&str, Option<&OsStr>)]) -> Value {
    let mut args = vec!["--json", "add-url", url];
    args.extend_from_slice(extra);
    let out = cli(store, &args, envs);
    assert!(
        out.status.success(),
        "add-url {url} failed: {}",
        describe(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "add-url --json printed invalid JSON ({e}): {}",
            describe(&out)
        )
    })
}

/// `add-url URL EXTRA...`, required to fail with exit 1 and `error: ...`; the stderr.
fn add_url_fails(
    store: &Path,
    url: &str,
    extra: &[&str],
    envs: &[(&str, Option<&OsStr>)],
) -> String {
    let mut args = vec!["add-url", url];
    args.extend_from_slice(extra);
    let out = cli(store, &args, envs);
    assert_eq!(
        out.status.code(),
        Some(1),
        "add-url {url} should fail: {}",
        describe(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("error:"),
        "no `error:` on stderr: {}",
        describe(&out)
    );
    err
}

fn b3(data: &[u8]) -> String {
    format!("b3:{}", blake3::hash(data).to_hex())
}

/// The object with that content is in the store, readable by its id and by its SHA-256
/// (downloads get an alias, store-layout.md "Objects"), and no temp file is left.
fn assert_stored(store: &Path, data: &[u8]) {
    let out = run(store, &["cat", &b3(data)]);
    assert!(out.status.success(), "cat by b3 failed: {}", describe(&out));
    assert!(
        out.stdout == data,
        "cat b3 gave {} bytes, not the {} served",
        out.stdout.len(),
        data.len()
    );
    assert_tmp_empty(store);
    let out = run(store, &["cat", &format!("sha256:{}", sha256_hex(data))]);
    assert!(
        out.status.success(),
        "cat by sha256 failed (no alias?): {}",
        describe(&out)
    );
    assert!(
        out.stdout == data,
        "cat sha256 gave {} bytes, not the {} served",
        out.stdout.len(),
        data.len()
    );
}

/// No object with that content, and nothing at all in `objects/`.
fn assert_not_stored(store: &Path, data: &[u8]) {
    let out = run(store, &["cat", &format!("sha256:{}", sha256_hex(data))]);
    assert!(
        !out.status.success(),
        "cat by sha256 should fail: {}",
        describe(&out)
    );
    let out = run(store, &["cat", &b3(data)]);
    assert!(
        !out.status.success(),
        "cat by b3 should fail: {}",
        describe(&out)
    );
    let stats = common::json(store, &["stats"]);
    assert_eq!(stats["objects"], 0, "stats: {stats}");
    let objects: Vec<_> = walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(objects.is_empty(), "objects left: {objects:?}");
    assert_tmp_empty(store);
}

/// `S/tmp/` holds no files (a missing tmp/ counts as empty).
fn assert_tmp_empty(store: &Path) {
    let left: Vec<_> = walkdir::WalkDir::new(store.join("tmp"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

fn gets(reqs: &[Request]) -> Vec<Request> {
    reqs.iter().filter(|r| r.method == "GET").cloned().collect()
}

/// The N of a `Range: bytes=N-` or `bytes=N-M` header.
fn range_start(r: &Request) -> Option<usize> {
    r.header("range")?
        .trim()
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn check_report(v: &Value, data: &[u8], url: &str) {
    assert_eq!(v["id"], b3(data).as_str(), "{v}");
    assert_eq!(v["sha256"], sha256_hex(data).as_str(), "{v}");
    assert_eq!(v["size"], data.len() as u64, "{v}");
    assert_eq!(v["url"], url, "{v}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn dropped_connection_resumes() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(1, 3 * MIB);
    srv.add(
        "/model.safetensors",
        data.clone(),
        Behavior::DropAfter {
            bytes: MIB,
            times: 1,
        },
    );
    let url = srv.url("/model.safetensors");
    let v = add_url_json(&store, &url, &[], &[]);
    check_report(&v, &data, &url);

    let reqs = gets(&srv.requests_for("/model.safetensors"));
    assert!(reqs.len() >= 2, "{reqs:#?}");
    assert_eq!(
        reqs[0].header("range"),
        None,
        "the first request asks for everything"
    );
    // The first response delivered exactly MIB body bytes before the server closed.
    let start =
        range_start(&reqs[1]).unwrap_or_else(|| panic!("no Range on the retry: {:#?}", reqs[1]));
    assert_eq!(
        start, MIB,
        "resume where the dropped response stopped: {:#?}",
        reqs[1]
    );
    assert_eq!(
        reqs[1].header("if-range"),
        Some(etag_of(&data).as_str()),
        "the resume is conditional on the ETag: {:#?}",
        reqs[1]
    );
    let resumed = v["resumed_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no resumed_bytes: {v}"));
    assert!(resumed > 0 && resumed < data.len() as u64, "{v}");
    assert_eq!(
        resumed,
        (data.len() - start) as u64,
        "bytes fetched by the Range request: {v}"
    );
    assert_stored(&store, &data);
}

#[test]
fn server_ignoring_range_restarts() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(2, 3 * MIB);
    srv.add(
        "/m.bin",
        data.clone(),
        Behavior::IgnoreRange {
            drop_first_after: Some(MIB),
        },
    );
    let url = srv.url("/m.bin");
    let v = add_url_json(&store, &url, &[], &[]);
    check_report(&v, &data, &url);
    assert!(gets(&srv.requests_for("/m.bin")).len() >= 2);
    assert_stored(&store, &data);
}

#[test]
fn server_errors_then_success() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(3, 200_000);
    srv.add(
        "/m.bin",
        data.clone(),
        Behavior::FailStatus {
            status: 500,
            times: 2,
            retry_after: None,
        },
    );
    let url = srv.url("/m.bin");
    let v = add_url_json(&store, &url, &[], &[]);
    check_report(&v, &data, &url);
    assert_eq!(srv.requests_for("/m.bin").len(), 3, "{:#?}", srv.requests());
    assert_eq!(v["attempts"], 3, "{v}");
    assert_stored(&store, &data);
}

#[test]
fn too_many_requests_honours_retry_after() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(4, 100_000);
    srv.add(
        "/m.bin",
        data.clone(),
        Behavior::FailStatus {
            status: 429,
            times: 1,
            retry_after: Some("1".into()),
        },
    );
    let url = srv.url("/m.bin");
    let v = add_url_json(&store, &url, &[], &[]);
    check_report(&v, &data, &url);
    let reqs = srv.requests_for("/m.bin");
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let waited = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 means waiting a second, not the 10ms backoff; waited {waited:?}"
    );
    assert_stored(&store, &data);
}

#[test]
fn wrong_bytes_are_refused() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(5, 300_000);
    let mut served = data.clone();
    served[0] ^= 0xff;
    srv.add("/m.bin", data.clone(), Behavior::WrongBytes);
    let expected = sha256_hex(&data);
    let actual = sha256_hex(&served);
    let err = add_url_fails(&store, &srv.url("/m.bin"), &["--sha256", &expected], &[]);
    assert!(
        err.contains(&expected),
        "stderr names the expected sha256: {err}"
    );
    assert!(
        err.contains(&actual),
        "stderr names the actual sha256: {err}"
    );
    assert_not_stored(&store, &data);
    assert_not_stored(&store, &served);
}

#[test]
fn not_found_fails_fast() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    srv.add("/missing.bin", Vec::new(), Behavior::Status(404));
    let t0 = Instant::now();
    let err = add_url_fails(&store, &srv.url("/missing.bin"), &[], &[]);
    let took = t0.elapsed();
    assert!(err.contains("404"), "{err}");
    assert_eq!(
        srv.requests_for("/missing.bin").len(),
        1,
        "404 is not retried: {:#?}",
        srv.requests()
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_tmp_empty(&store);
}

#[test]
fn forbidden_fails_fast() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    srv.add("/gated.bin", Vec::new(), Behavior::Status(403));
    let err = add_url_fails(&store, &srv.url("/gated.bin"), &[], &[]);
    assert!(err.contains("403"), "{err}");
    assert_eq!(
        srv.requests_for("/gated.bin").len(),
        1,
        "403 is not retried: {:#?}",
        srv.requests()
    );
    assert_tmp_empty(&store);
}

#[test]
fn retries_are_bounded() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(6, 1000);
    srv.add(
        "/m.bin",
        data.clone(),
        Behavior::FailStatus {
            status: 503,
            times: 100,
            retry_after: None,
        },
    );
    let err = add_url_fails(&store, &srv.url("/m.bin"), &["--retries", "3"], &[]);
    assert!(err.contains("503"), "{err}");
    // `--retries 3` = the first try plus 3 retries = 4 requests. 3 is accepted too, in case the
    // engine counts --retries as total attempts; anything more is unbounded.
    let n = srv.requests_for("/m.bin").len();
    assert!((3..=4).contains(&n), "{n} requests for --retries 3");
    assert_not_stored(&store, &data);
}

#[test]
fn slow_trickle_times_out_and_retries() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(7, 64 * 1024);
    srv.add(
        "/m.bin",
        data.clone(),
        Behavior::Trickle {
            first: 1000,
            delay_ms: 2000,
            times: 1,
        },
    );
    let url = srv.url("/m.bin");
    let t0 = Instant::now();
    let v = add_url_json(&store, &url, &["--timeout", "500ms"], &[]);
    let took = t0.elapsed();
    check_report(&v, &data, &url);
    assert!(
        gets(&srv.requests_for("/m.bin")).len() >= 2,
        "{:#?}",
        srv.requests()
    );
    assert!(
        took < Duration::from_secs(10),
        "the stall timeout should fire after 500ms; took {took:?}"
    );
    assert_stored(&store, &data);
}

#[test]
fn redirect_to_another_host_drops_the_token() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(8, 150_000);
    srv.add(
        "/a",
        Vec::new(),
        Behavior::Redirect {
            to: srv.url_host("localhost", "/b"),
        },
    );
    srv.add("/b", data.clone(), Behavior::Normal);
    let url = srv.url("/a");
    // Plain HTTP carries a token only when the user says so for the host.
    let tokens = OsStr::new("http://127.0.0.1=sekrit");
    let v = add_url_json(&store, &url, &[], &[("COMFYSTORE_TOKENS", Some(tokens))]);
    assert_eq!(v["id"], b3(&data).as_str(), "{v}");
    assert_eq!(v["sha256"], sha256_hex(&data).as_str(), "{v}");

    let a = srv.requests_for("/a");
    assert!(!a.is_empty());
    for r in &a {
        assert_eq!(r.host, "127.0.0.1");
        assert_eq!(r.header("authorization"), Some("Bearer sekrit"), "{r:#?}");
    }
    let b = srv.requests_for("/b");
    assert!(!b.is_empty(), "{:#?}", srv.requests());
    for r in &b {
        assert_eq!(r.host, "localhost", "{r:#?}");
        assert_eq!(
            r.header("authorization"),
            None,
            "token leaked to another host: {r:#?}"
        );
    }
    assert_stored(&store, &data);
}

/// A token goes over https only: an `http://` URL on the token's host gets none (anyone on the
/// path could read it), unless `COMFYSTORE_TOKENS` names the host as `http://host=token`.
#[test]
fn tokens_are_not_sent_over_plain_http() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(10, 10_000);
    srv.add("/m.bin", data.clone(), Behavior::Normal);
    let tokens = OsStr::new("127.0.0.1=sekrit,localhost=sekrit");
    let v = add_url_json(
        &store,
        &srv.url("/m.bin"),
        &[],
        &[("COMFYSTORE_TOKENS", Some(tokens))],
    );
    assert_eq!(v["sha256"], sha256_hex(&data).as_str(), "{v}");
    let reqs = srv.requests_for("/m.bin");
    assert!(!reqs.is_empty());
    for r in reqs {
        assert_eq!(
            r.header("authorization"),
            None,
            "token sent over http: {r:#?}"
        );
    }
}

#[test]
fn hf_token_is_only_for_huggingface() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(9, 10_000);
    srv.add("/m.bin", data.clone(), Behavior::Normal);
    add_url_json(
        &store,
        &srv.url("/m.bin"),
        &[],
        &[("HF_TOKEN", Some(OsStr::new("hf_sekrit")))],
    );
    for r in srv.requests_for("/m.bin") {
        assert_eq!(
            r.header("authorization"),
            None,
            "HF_TOKEN sent to {}: {r:#?}",
            r.host
        );
    }
    assert_stored(&store, &data);
}

#[test]
fn sha256_and_blake3_are_checked() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(10, 500_000);
    srv.add("/m.bin", data.clone(), Behavior::Normal);
    let url = srv.url("/m.bin");
    let right_b3 = blake3::hash(&data).to_hex().to_string();
    let right_sha = sha256_hex(&data);
    let wrong_b3 = blake3::hash(b"something else").to_hex().to_string();

    let err = add_url_fails(&store, &url, &["--blake3", &wrong_b3], &[]);
    assert!(
        err.contains(&wrong_b3),
        "stderr names the expected blake3: {err}"
    );
    assert_not_stored(&store, &data);

    let v = add_url_json(
        &store,
        &url,
        &["--sha256", &right_sha, "--blake3", &right_b3],
        &[],
    );
    check_report(&v, &data, &url);
    assert_eq!(
        v["sha256"],
        hex::encode(sha2::Sha256::digest(&data)).as_str()
    );
    assert_stored(&store, &data);
}

#[test]
fn add_url_remembers_the_source() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(11, 70_000);
    srv.add("/models/x.safetensors", data.clone(), Behavior::Normal);
    let url = srv.url("/models/x.safetensors");
    let out = cli(&store, &["add-url", &url], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("{}\t{url}\n", b3(&data)));

    // store-layout.md "Sources": sources/<2 hex>/<64 hex>.<16 hex of BLAKE3(url)> = "<url>\n".
    let hex = blake3::hash(&data).to_hex().to_string();
    let key = blake3::hash(url.as_bytes()).to_hex().to_string();
    let record = store
        .join("sources")
        .join(&hex[..2])
        .join(format!("{hex}.{}", &key[..16]));
    let text = std::fs::read_to_string(&record)
        .unwrap_or_else(|e| panic!("source record {}: {e}", record.display()));
    assert_eq!(text, format!("{url}\n"));
    assert_stored(&store, &data);
}

// ---------------------------------------------------------------------------------------------
// The test server itself, spoken to with a raw socket (independent of the engine).

struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn raw(srv: &TestServer, method: &str, path: &str, extra: &[(&str, &str)]) -> Raw {
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
        srv.port
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8(all[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Raw {
        status,
        headers,
        body: all[end + 4..].to_vec(),
    }
}

#[test]
fn test_server_self_check() {
    let srv = TestServer::start();
    let data = pseudo_random(99, 100_000);
    let etag = etag_of(&data);
    srv.add("/n", data.clone(), Behavior::Normal);

    let r = raw(&srv, "GET", "/n?x=1", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("connection"), Some("close"));

    let r = raw(&srv, "HEAD", "/n", &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("100000"));

    let r = raw(&srv, "GET", "/n", &[("Range", "bytes=1000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-99999/100000"));
    assert_eq!(r.body, &data[1000..]);
    let r = raw(
        &srv,
        "GET",
        "/n",
        &[("Range", "bytes=10-19"), ("If-Range", &etag)],
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &data[10..20]));
    let r = raw(
        &srv,
        "GET",
        "/n",
        &[("Range", "bytes=10-19"), ("If-Range", "\"other\"")],
    );
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    let r = raw(&srv, "GET", "/n", &[("Range", "bytes=200000-")]);
    assert_eq!(r.status, 416);

    let reqs = srv.requests_for("/n");
    assert_eq!(reqs.len(), 6);
    assert_eq!(reqs[0].target, "/n?x=1");
    assert_eq!(reqs[0].host, "127.0.0.1");
    assert_eq!(reqs[1].method, "HEAD");
    assert_eq!(reqs[2].header("RANGE"), Some("bytes=1000-"));
    assert!(reqs[5].at >= reqs[0].at);

    srv.add(
        "/d",
        data.clone(),
        Behavior::DropAfter {
            bytes: 5000,
            times: 1,
        },
    );
    let r = raw(&srv, "HEAD", "/d", &[]); // HEAD does not use up the fault
    assert_eq!(r.status, 200);
    let r = raw(&srv, "GET", "/d", &[]);
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("100000"))
    );
    assert_eq!(r.body, &data[..5000]);
    let r = raw(
        &srv,
        "GET",
        "/d",
        &[("Range", "bytes=5000-"), ("If-Range", &etag)],
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &data[5000..]));

    srv.add(
        "/i",
        data.clone(),
        Behavior::IgnoreRange {
            drop_first_after: Some(7),
        },
    );
    let r = raw(&srv, "GET", "/i", &[("Range", "bytes=5-")]);
    assert_eq!((r.status, r.body.as_slice()), (200, &data[..7]));
    let r = raw(&srv, "GET", "/i", &[("Range", "bytes=5-")]);
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    assert_eq!(r.header("accept-ranges"), None);

    srv.add(
        "/f",
        data.clone(),
        Behavior::FailStatus {
            status: 429,
            times: 2,
            retry_after: Some("3".into()),
        },
    );
    for _ in 0..2 {
        let r = raw(&srv, "GET", "/f", &[]);
        assert_eq!((r.status, r.header("retry-after")), (429, Some("3")));
    }
    assert_eq!(raw(&srv, "GET", "/f", &[]).body, data);

    srv.add("/s", Vec::new(), Behavior::Status(403));
    assert_eq!(raw(&srv, "GET", "/s", &[]).status, 403);
    assert_eq!(raw(&srv, "GET", "/nowhere", &[]).status, 404);

    let to = srv.url_host("localhost", "/n");
    assert_eq!(to, format!("http://localhost:{}/n", srv.port));
    srv.add("/r", Vec::new(), Behavior::Redirect { to: to.clone() });
    let r = raw(&srv, "GET", "/r", &[]);
    assert_eq!((r.status, r.header("location")), (302, Some(to.as_str())));

    srv.add("/w", data.clone(), Behavior::WrongBytes);
    let r = raw(&srv, "GET", "/w", &[]);
    assert_eq!(r.body.len(), data.len());
    assert_eq!(r.body[0], data[0] ^ 0xff);
    assert_eq!(r.body[1..], data[1..]);

    srv.add(
        "/t",
        data.clone(),
        Behavior::Trickle {
            first: 100,
            delay_ms: 300,
            times: 1,
        },
    );
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.write_all(b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    // Timed out after the first 100 body bytes: the stall is real.
    assert!(t0.elapsed() < Duration::from_secs(2));
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&got[head_end..], &data[..100]);
    drop(s);
    assert_eq!(raw(&srv, "GET", "/t", &[]).body, data);
}

#[test]
fn parallel_ranges_give_the_same_bytes() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    // 1 MiB ranges: a 6.5 MiB file is 7 ranges, fetched 3 at a time.
    let data = pseudo_random(40, 6 * MIB + MIB / 2);
    srv.add("/big.safetensors", data.clone(), Behavior::Normal);
    let url = srv.url("/big.safetensors");
    let envs = [("COMFYSTORE_RANGE_SIZE", Some(OsStr::new("1048576")))];
    let v = add_url_json(&store, &url, &["--connections", "3"], &envs);
    check_report(&v, &data, &url);
    let reqs = gets(&srv.requests_for("/big.safetensors"));
    let mut starts: Vec<usize> = reqs.iter().filter_map(range_start).collect();
    starts.sort();
    let want: Vec<usize> = (0..7).map(|i| i * MIB).collect();
    assert_eq!(starts, want, "one range request per MiB: {reqs:#?}");
    for r in reqs.iter().filter(|r| r.header("range").is_some()) {
        assert_eq!(
            r.header("if-range"),
            Some(etag_of(&data).as_str()),
            "every range is tied to the first response's ETag: {r:#?}"
        );
    }
    assert_stored(&store, &data);
}

#[test]
fn parallel_ranges_fall_back_to_one_stream() {
    let (_t, store) = fresh();
    let srv = TestServer::start();
    let data = pseudo_random(41, 5 * MIB);
    // The first two GETs break after 100 KiB: the probe and one range request.
    srv.add(
        "/big.bin",
        data.clone(),
        Behavior::DropAfter {
            bytes: 100 * 1024,
            times: 2,
        },
    );
    let url = srv.url("/big.bin");
    let envs = [("COMFYSTORE_RANGE_SIZE", Some(OsStr::new("1048576")))];
    let v = add_url_json(&store, &url, &["--connections", "4"], &envs);
    check_report(&v, &data, &url);
    assert_stored(&store, &data);
    // Without ranges (one connection) the same file takes no Range request at all.
    let (_t2, store2) = fresh();
    let srv2 = TestServer::start();
    srv2.add("/big.bin", data.clone(), Behavior::Normal);
    let v2 = add_url_json(&store2, &srv2.url("/big.bin"), &[], &envs);
    check_report(&v2, &data, &srv2.url("/big.bin"));
    let reqs = gets(&srv2.requests_for("/big.bin"));
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].header("range"), None);
}

/// Two processes on one store (workers on one network volume) download the same file at
/// once: one GET. The second waits for the first's download lock and finds the file stored;
/// both succeed with the same object. (docker/test.sh checks the same across two containers.)
#[test]
fn two_processes_download_once() {
    let (_t, store) = fresh();
    assert_eq!(cli(&store, &["stats"], &[]).status.code(), Some(0));
    let srv = TestServer::start();
    let data = pseudo_random(11, 256 * 1024);
    // The last 10 bytes one every 150 ms: the second process asks while the first downloads.
    srv.add(
        "/shared.bin",
        data.clone(),
        Behavior::Trickle {
            first: data.len() - 10,
            delay_ms: 150,
            times: 1,
        },
    );
    let url = srv.url("/shared.bin");
    let sha = sha256_hex(&data);
    let outs: Vec<Output> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    cli(
                        &store,
                        &["--json", "add-url", &url, "--sha256", &sha],
                        &[("RUST_LOG", Some(OsStr::new("info")))],
                    )
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut ids = Vec::new();
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{}", describe(out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(v["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(
        gets(&srv.requests_for("/shared.bin")).len(),
        1,
        "{:#?}",
        srv.requests()
    );
    assert_stored(&store, &data);
}
