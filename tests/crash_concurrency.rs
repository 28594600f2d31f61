//! Crash and concurrency tests of the store, driven through the `comfystore` binary: several
//! processes writing one store at once, `kill -9` in the middle of large ingests, a corrupted
//! object, gc running beside writers, and the creation of a new store racing or being killed.
//!
//! Every assertion is on facts the store leaves on disk or prints (exit codes, fsck reports,
//! object names versus their BLAKE3), never on how long something took.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

fn command(store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_comfystore"));
    c.arg("--store")
        .arg(store)
        .args(args)
        .env_remove("COMFYSTORE_DIR")
        .env_remove("COMFYSTORE_INDEX")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Run `comfystore --store STORE ARGS...` to completion.
fn comfystore(store: &Path, args: &[&str]) -> Output {
    command(store, args).output().expect("run comfystore")
}

/// Start `comfystore --store STORE ARGS...` with captured output, without waiting.
fn spawn(store: &Path, args: &[&str]) -> Child {
    command(store, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn comfystore")
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "comfystore {args:?} -> {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run and require exit 0; returns stdout.
fn ok(store: &Path, args: &[&str]) -> String {
    let out = comfystore(store, args);
    assert!(out.status.success(), "{}", describe(args, &out));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Create the store (layout and index) with one harmless command.
fn init_store(store: &Path) {
    ok(store, &["stats"]);
}

/// Parse the `<id>\t<path>` lines `add` prints.
fn parse_add(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let (id, path) = l.split_once('\t').expect("add prints <id>\\t<path>");
            assert!(id.starts_with("b3:") && id.len() == 67, "bad id {id:?}");
            (id.to_string(), path.to_string())
        })
        .collect()
}

/// `add DIR EXTRA...` and return the tree id.
fn add_tree(store: &Path, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["add"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let out = ok(store, &args);
    let lines = parse_add(out.as_bytes());
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0].1, dir.to_str().unwrap());
    lines[0].0.clone()
}

/// `--json ls ID`: one JSON object per entry.
fn ls(store: &Path, id: &str) -> Vec<Value> {
    let out = ok(store, &["--json", "ls", id]);
    match serde_json::from_str::<Value>(&out).expect("ls prints JSON") {
        Value::Array(rows) => rows,
        other => panic!("ls printed {other}"),
    }
}

/// `cat ID`: the object's bytes.
fn cat(store: &Path, id: &str) -> Vec<u8> {
    let out = comfystore(store, &["cat", id]);
    assert!(out.status.success(), "{}", describe(&["cat", id], &out));
    out.stdout
}

/// Run `--json fsck`, require exit 0 and no problems; returns the report.
fn assert_fsck_clean(store: &Path, when: &str) -> Value {
    let args = ["--json", "fsck"];
    let out = comfystore(store, &args);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{when}: fsck JSON: {e}\n{}", describe(&args, &out)));
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{when}: fsck found problems\n{}",
        describe(&args, &out)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{when}: {}",
        describe(&args, &out)
    );
    report
}

/// Lines of plain `fsck` output split into (kind, path, detail).
fn fsck_lines(stdout: &[u8]) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let kind = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let detail = parts.next().unwrap_or_default().to_string();
            (kind, path, detail)
        })
        .collect()
}

fn hex_of(id: &str) -> &str {
    id.strip_prefix("b3:").unwrap_or(id)
}

/// Where the store keeps object `id` (`b3:<hex>`), plain or executable variant.
fn object_path(store: &Path, id: &str, exec: bool) -> PathBuf {
    let hex = hex_of(id);
    let name = if exec {
        format!("{}-exec", &hex[2..])
    } else {
        hex[2..].to_string()
    };
    store.join("objects/b3").join(&hex[..2]).join(name)
}

fn tree_path(store: &Path, id: &str) -> PathBuf {
    let hex = hex_of(id);
    store.join("trees/b3").join(&hex[..2]).join(&hex[2..])
}

fn b3_file(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)
        .unwrap_or_else(|e| panic!("hash {}: {e}", path.display()));
    format!("b3:{}", h.finalize().to_hex())
}

/// Walk `objects/` independently of fsck: every file must sit in a two-hex-digit shard, be
/// named by 62 more hex digits (plus `-exec`), hash to exactly that name, and have mode 0444
/// (0555 for `-exec`). Returns the set of (id, exec) found.
fn check_objects_match_names(store: &Path) -> BTreeSet<(String, bool)> {
    let mut found = BTreeSet::new();
    let is_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    for e in walkdir::WalkDir::new(store.join("objects/b3")).min_depth(1) {
        let e = e.expect("walk objects/");
        if e.file_type().is_dir() {
            assert_eq!(e.depth(), 1, "unexpected directory {}", e.path().display());
            continue;
        }
        assert!(
            e.file_type().is_file(),
            "not a regular file: {}",
            e.path().display()
        );
        let shard = e.path().parent().unwrap().file_name().unwrap();
        let shard = shard.to_str().unwrap();
        let name = e.file_name().to_str().unwrap();
        let (rest, exec) = match name.strip_suffix("-exec") {
            Some(r) => (r, true),
            None => (name, false),
        };
        assert!(
            shard.len() == 2 && rest.len() == 62 && is_hex(shard) && is_hex(rest),
            "stray file in objects/: {}",
            e.path().display()
        );
        let named = format!("b3:{shard}{rest}");
        let actual = b3_file(e.path());
        assert_eq!(
            actual,
            named,
            "{} holds bytes that do not match its name",
            e.path().display()
        );
        let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode,
            if exec { 0o555 } else { 0o444 },
            "mode of {}",
            e.path().display()
        );
        found.insert((named, exec));
    }
    found
}

/// Names of everything in `<store>/tmp`.
fn tmp_entries(store: &Path) -> BTreeSet<String> {
    fs::read_dir(store.join("tmp"))
        .expect("list tmp/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Wait for a child, but never forever: a hung process fails the test instead of hanging it.
fn wait_output(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within 180 s");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

/// xorshift64*: small, fast, and the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
        if r.0 == 0 {
            r.0 = 1;
        }
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        let n = tail.len();
        tail.copy_from_slice(&last[..n]);
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Write `data` at `path` (creating parents), executable (0755) or not (0644).
fn write_file(path: &Path, data: &[u8], exec: bool) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    let mode = if exec { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Write `len` pseudo-random bytes from `seed` at `path`, one MiB at a time.
fn write_random_file(path: &Path, seed: u64, len: usize) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut rng = Rng::new(seed);
    let mut f = fs::File::create(path).unwrap();
    let mut buf = vec![0u8; MIB];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB);
        rng.fill(&mut buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
        left -= n;
    }
}

/// What a source tree should look like in the store: relative path → expected entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    File { exec: bool },
    Symlink { target: String },
    Dir,
}

/// Compare `ls` of `tree_id` with the source directory `src` and the expectations: same set of
/// paths, kinds, symlink targets, sizes, and every file's id is the BLAKE3 of its source bytes.
/// Returns (path, id, exec) of the files.
fn check_listing(
    store: &Path,
    tree_id: &str,
    src: &Path,
    expect: &BTreeMap<String, Expect>,
) -> Vec<(String, String, bool)> {
    let rows = ls(store, tree_id);
    let listed: BTreeSet<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    let wanted: BTreeSet<&str> = expect.keys().map(String::as_str).collect();
    assert_eq!(
        listed,
        wanted,
        "paths of tree {tree_id} ({})",
        src.display()
    );
    let mut files = Vec::new();
    for r in &rows {
        let path = r["path"].as_str().unwrap();
        let kind = r["kind"].as_str().unwrap();
        match &expect[path] {
            Expect::File { exec } => {
                assert_eq!(kind, if *exec { "exec" } else { "file" }, "{path}");
                let source = src.join(path);
                let size = fs::metadata(&source).unwrap().len();
                assert_eq!(r["size"].as_u64(), Some(size), "size of {path}");
                let id = r["id"].as_str().unwrap().to_string();
                assert_eq!(id, b3_file(&source), "id of {path} in tree {tree_id}");
                files.push((path.to_string(), id, *exec));
            }
            Expect::Symlink { target } => {
                assert_eq!(kind, "symlink", "{path}");
                assert_eq!(r["target"].as_str(), Some(target.as_str()), "{path}");
            }
            Expect::Dir => assert_eq!(kind, "dir", "{path}"),
        }
    }
    files
}

// ---------------------------------------------------------------------------------------------
// 1. Eight concurrent writers
// ---------------------------------------------------------------------------------------------

/// Build `n` trees of ~300 files under `base` that share about half their content: 150 common
/// small files (identical paths and bytes in every tree), two common 5 MiB files (large enough
/// to take the streaming path), one file that is executable in even trees only (so both
/// variants of one object are published at once), an empty file, a symlink, an empty
/// directory, and per tree 145 files of its own plus a 3 MiB model.
fn overlapping_trees(base: &Path, n: u64) -> Vec<(PathBuf, BTreeMap<String, Expect>)> {
    let mut common: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for i in 0..150u64 {
        let mut rng = Rng::new(1_000 + i);
        let len = rng.range(200, 8_000) as usize;
        common.push((
            format!("common/mod{}/file{i}.py", i / 25),
            rng.bytes(len),
            i % 30 == 0,
        ));
    }
    for k in 0..2u64 {
        common.push((
            format!("models/shared-{k}.safetensors"),
            Rng::new(77 + k).bytes(5 * MIB + k as usize * 4099),
            false,
        ));
    }
    common.push(("empty.txt".to_string(), Vec::new(), false));
    let tool = b"#!/bin/sh\necho same bytes, two modes\n".to_vec();

    let mut trees = Vec::new();
    for t in 0..n {
        let dir = base.join(format!("tree{t}"));
        let mut expect = BTreeMap::new();
        for (rel, data, exec) in &common {
            write_file(&dir.join(rel), data, *exec);
            expect.insert(rel.clone(), Expect::File { exec: *exec });
        }
        let tool_exec = t % 2 == 0;
        write_file(&dir.join("bin/tool"), &tool, tool_exec);
        expect.insert("bin/tool".into(), Expect::File { exec: tool_exec });
        for i in 0..145u64 {
            let mut rng = Rng::new(t * 10_000 + i + 5);
            let len = rng.range(100, 20_000) as usize;
            let rel = format!("own/pkg{}/f{i}.bin", i / 20);
            let exec = i % 40 == 0;
            write_file(&dir.join(&rel), &rng.bytes(len), exec);
            expect.insert(rel, Expect::File { exec });
        }
        let model = "models/own.safetensors".to_string();
        write_file(
            &dir.join(&model),
            &Rng::new(900 + t).bytes(3 * MIB + t as usize * 1000),
            false,
        );
        expect.insert(model, Expect::File { exec: false });
        symlink("common/mod0/file0.py", dir.join("link.py")).unwrap();
        expect.insert(
            "link.py".into(),
            Expect::Symlink {
                target: "common/mod0/file0.py".into(),
            },
        );
        fs::create_dir_all(dir.join("output")).unwrap();
        expect.insert("output".into(), Expect::Dir);
        trees.push((dir, expect));
    }
    trees
}

#[test]
fn eight_processes_adding_overlapping_trees_leave_fsck_clean() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let trees = overlapping_trees(&t.path().join("src"), 8);
    // Create the store first: the race of creating a store is the subject of
    // `eight_processes_creating_one_new_store_all_succeed`; this test is about concurrent adds.
    init_store(&store);

    // The distinct (content, variant) pairs the store must end up holding, computed here.
    let mut expected_objects = BTreeSet::new();
    for (dir, expect) in &trees {
        for (rel, e) in expect {
            if let Expect::File { exec } = e {
                expected_objects.insert((b3_file(&dir.join(rel)), *exec));
            }
        }
    }

    // All eight start before any can finish (each has megabytes to write).
    let children: Vec<Child> = trees
        .iter()
        .map(|(dir, _)| spawn(&store, &["add", dir.to_str().unwrap()]))
        .collect();
    let mut ids = Vec::new();
    for (child, (dir, _)) in children.into_iter().zip(&trees) {
        let out = wait_output(child, "concurrent add");
        assert!(
            out.status.success(),
            "{}",
            describe(&["add", dir.to_str().unwrap()], &out)
        );
        let lines = parse_add(&out.stdout);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1, dir.to_str().unwrap());
        ids.push(lines[0].0.clone());
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "eight different trees: {ids:?}");

    // Successful writers leave no temp files behind.
    assert_eq!(tmp_entries(&store), BTreeSet::new(), "tmp/ after the adds");

    let report = assert_fsck_clean(&store, "after 8 concurrent adds");
    assert_eq!(
        report["objects_checked"].as_u64(),
        Some(expected_objects.len() as u64),
        "one object file per distinct (content, exec) pair"
    );
    assert_eq!(report["trees_checked"].as_u64(), Some(8));
    assert_eq!(check_objects_match_names(&store), expected_objects);

    // Every tree lists exactly its source; a sample of files (all large ones, the two-mode tool,
    // the empty file and every 23rd file) reads back byte for byte through `cat`.
    for ((dir, expect), id) in trees.iter().zip(&ids) {
        let files = check_listing(&store, id, dir, expect);
        for (i, (rel, obj, exec)) in files.iter().enumerate() {
            assert!(
                object_path(&store, obj, *exec).is_file(),
                "{rel} of {id}: no {} object file",
                if *exec { "-exec" } else { "plain" }
            );
            let sampled = i % 23 == 0
                || rel.starts_with("models/")
                || rel == "bin/tool"
                || rel == "empty.txt";
            if sampled {
                assert!(
                    cat(&store, obj) == fs::read(dir.join(rel)).unwrap(),
                    "cat {obj} differs from {}",
                    dir.join(rel).display()
                );
            }
        }
    }

    // A fresh process adding the same eight trees again agrees on every id.
    let mut args = vec!["add"];
    args.extend(trees.iter().map(|(d, _)| d.to_str().unwrap()));
    let again: Vec<String> = parse_add(ok(&store, &args).as_bytes())
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        again, ids,
        "re-adding in a fresh process gives the same ids"
    );
    assert_fsck_clean(&store, "after re-adding");
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 in the middle of large ingests
// ---------------------------------------------------------------------------------------------

const BIG_FILES: [(&str, usize); 4] = [
    ("models/a.safetensors", 24 * MIB),
    ("models/b.safetensors", 32 * MIB),
    ("models/c.ckpt", 48 * MIB),
    ("models/d.bin", 64 * MIB),
];
const SMALL_FILES: u64 = 300;

/// Give iteration `round` new content: a fresh 4 KiB block inside every large file (so each
/// becomes a new object that must be written in full) and 30 of the small files rewritten.
fn mutate_for_round(dir: &Path, round: u64) {
    let mut rng = Rng::new(50_000 + round);
    for (rel, len) in BIG_FILES {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join(rel))
            .unwrap();
        let at = rng.range(0, (len - 4096) as u64);
        f.write_all_at(&rng.bytes(4096), at).unwrap();
    }
    for k in 0..30 {
        let i = (round * 31 + k * 7) % SMALL_FILES;
        let len = rng.range(64, 4_000) as usize;
        write_file(
            &dir.join(format!("src/m{}/s{i}.py", i / 50)),
            &rng.bytes(len),
            i == 0,
        );
    }
}

#[test]
fn kill_9_during_large_ingests_leaves_fsck_clean() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("big-tree");
    for (k, (rel, len)) in BIG_FILES.iter().enumerate() {
        write_random_file(&src.join(rel), 4_000 + k as u64, *len);
    }
    for i in 0..SMALL_FILES {
        let mut rng = Rng::new(7_000 + i);
        let len = rng.range(64, 4_000) as usize;
        write_file(
            &src.join(format!("src/m{}/s{i}.py", i / 50)),
            &rng.bytes(len),
            i == 0,
        );
    }
    symlink("src/m0/s0.py", src.join("entry.py")).unwrap();
    init_store(&store);

    // How long one uninterrupted ingest of this tree takes here, to spread the kills over it
    // (the assertions below do not depend on it; it only keeps the test meaningful on fast and
    // slow machines alike). This first add is kept: later rounds must still write new objects.
    let started = Instant::now();
    add_tree(&store, &src, &[]);
    let full = started.elapsed();
    // Kill within the first quarter of a full ingest, so most kills land mid-write even on a
    // fast machine (later rounds are a little quicker: small files hit the stat cache).
    let span_ms = (full.as_millis() as u64 / 4).clamp(10, 300);

    const ROUNDS: u64 = 12;
    let mut delays = Rng::new(0x5eed);
    let mut killed_running = 0;
    let mut left_temp_files = 0;
    let mut finished_first = Vec::new();
    for round in 1..=ROUNDS {
        mutate_for_round(&src, round);
        let temps_before = tmp_entries(&store);
        let mut child = command(&store, &["add", src.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn add");
        thread::sleep(Duration::from_millis(5 + delays.range(0, span_ms)));
        let running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        if running {
            killed_running += 1;
            assert_eq!(status.signal(), Some(9), "round {round}: {status}");
        } else {
            finished_first.push(round);
            assert!(status.success(), "round {round}: add failed: {status}");
        }
        if tmp_entries(&store)
            .difference(&temps_before)
            .next()
            .is_some()
        {
            // A temp file that was never published: the kill landed mid-write.
            left_temp_files += 1;
        }
        // The store, its index included, opens and answers after every kill.
        ok(&store, &["stats"]);
    }
    eprintln!(
        "full ingest {full:?}; {killed_running} of {ROUNDS} adds killed while running, \
         {left_temp_files} left unpublished temp files"
    );
    assert!(
        killed_running >= ROUNDS as usize / 2,
        "only {killed_running} of {ROUNDS} adds were still running when killed \
         (finished first: {finished_first:?}, full ingest took {full:?})"
    );
    assert!(
        left_temp_files >= 3,
        "only {left_temp_files} kills left an unpublished temp file (full ingest took {full:?}); \
         the kills did not land mid-ingest"
    );

    // The invariant: whatever was published holds exactly the bytes its name says.
    assert_fsck_clean(&store, "after the kills");
    let objects = check_objects_match_names(&store);
    assert!(!objects.is_empty());
    // The large objects that exist have the full size of one of the source versions.
    let sizes: BTreeSet<u64> = BIG_FILES.iter().map(|(_, l)| *l as u64).collect();
    let large: Vec<_> = objects
        .iter()
        .map(|(id, exec)| fs::metadata(object_path(&store, id, *exec)).unwrap().len())
        .filter(|len| *len > 4 * MIB as u64)
        .collect();
    assert!(
        large.iter().all(|l| sizes.contains(l)),
        "large objects of unexpected sizes: {large:?}"
    );

    // gc with no grace period removes the leftover temp files (and the unrooted content).
    assert!(!tmp_entries(&store).is_empty());
    ok(&store, &["gc", "--grace", "0"]);
    assert_eq!(
        tmp_entries(&store),
        BTreeSet::new(),
        "tmp/ after gc --grace 0"
    );
    assert_fsck_clean(&store, "after gc");

    // A final add that runs to the end stores the current tree completely.
    let id = add_tree(&store, &src, &[]);
    let mut expect: BTreeMap<String, Expect> = BIG_FILES
        .iter()
        .map(|(rel, _)| (rel.to_string(), Expect::File { exec: false }))
        .collect();
    for i in 0..SMALL_FILES {
        expect.insert(
            format!("src/m{}/s{i}.py", i / 50),
            Expect::File { exec: i == 0 },
        );
    }
    expect.insert(
        "entry.py".into(),
        Expect::Symlink {
            target: "src/m0/s0.py".into(),
        },
    );
    for (rel, obj, exec) in check_listing(&store, &id, &src, &expect) {
        let p = object_path(&store, &obj, exec);
        assert_eq!(
            fs::metadata(&p).map(|m| m.len()).ok(),
            Some(fs::metadata(src.join(&rel)).unwrap().len()),
            "{rel}: object {}",
            p.display()
        );
    }
    assert_fsck_clean(&store, "after the final add");
    check_objects_match_names(&store);
}

// ---------------------------------------------------------------------------------------------
// 3. A flipped byte
// ---------------------------------------------------------------------------------------------

#[test]
fn flipped_byte_in_object_is_reported_by_fsck() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("tree");
    let victim = "nodes/victim.py";
    let victim_bytes = Rng::new(31).bytes(50_000);
    write_file(&src.join(victim), &victim_bytes, false);
    write_file(
        &src.join("nodes/other.py"),
        &Rng::new(32).bytes(9_000),
        false,
    );
    write_file(&src.join("run.sh"), b"#!/bin/sh\nexit 0\n", true);
    write_file(&src.join("big.bin"), &Rng::new(33).bytes(5 * MIB), false);

    let tree = add_tree(&store, &src, &[]);
    assert_fsck_clean(&store, "after add");
    let obj_id = b3_file(&src.join(victim));
    let obj = object_path(&store, &obj_id, false);
    assert!(obj.is_file());

    // Flip one bit in the middle, keeping size and mode (0444) as they were.
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&obj, &bytes).unwrap();
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o444)).unwrap();

    let out = comfystore(&store, &["fsck"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&["fsck"], &out));
    let problems = fsck_lines(&out.stdout);
    let obj_str = obj.to_str().unwrap();
    assert!(
        problems
            .iter()
            .any(|(k, p, _)| k == "corrupt-object" && p == obj_str),
        "fsck does not name {obj_str} as corrupt:\n{}",
        describe(&["fsck"], &out)
    );
    assert_eq!(
        problems
            .iter()
            .filter(|(k, _, _)| k == "corrupt-object")
            .count(),
        1,
        "exactly one corrupt object\n{}",
        describe(&["fsck"], &out)
    );

    // --repair moves it to quarantine/ (still reporting the problem).
    let out = comfystore(&store, &["fsck", "--repair"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe(&["fsck", "--repair"], &out)
    );
    assert!(!obj.exists(), "{obj_str} is still in objects/");
    let quarantined: Vec<PathBuf> = fs::read_dir(store.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(
        fs::read(&quarantined[0]).unwrap(),
        bytes,
        "the damaged bytes"
    );

    // Now the tree misses that object, and nothing else is wrong.
    let out = comfystore(&store, &["fsck"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&["fsck"], &out));
    let problems = fsck_lines(&out.stdout);
    assert_eq!(problems.len(), 1, "{}", describe(&["fsck"], &out));
    let (kind, path, detail) = &problems[0];
    assert_eq!(kind, "missing-object");
    assert_eq!(path, tree_path(&store, &tree).to_str().unwrap());
    assert!(
        detail.contains(victim) && detail.contains(&obj_id),
        "{detail}"
    );
    assert!(!comfystore(&store, &["cat", &obj_id]).status.success());

    // Adding the original tree again brings the object back, and the store is clean.
    assert_eq!(add_tree(&store, &src, &[]), tree);
    assert_eq!(fs::read(&obj).unwrap(), victim_bytes);
    assert_eq!(
        fs::metadata(&obj).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert_eq!(cat(&store, &obj_id), victim_bytes);
    let out = comfystore(&store, &["fsck"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&["fsck"], &out));
    assert!(out.stdout.is_empty(), "{}", describe(&["fsck"], &out));
    check_objects_match_names(&store);
}

// ---------------------------------------------------------------------------------------------
// 4. gc beside a writer
// ---------------------------------------------------------------------------------------------

/// Trees for the gc race: 30 files shared by all, 20 of their own, an executable, a symlink.
fn gc_race_tree(dir: &Path, t: u64) -> BTreeMap<String, Expect> {
    let mut expect = BTreeMap::new();
    for i in 0..30u64 {
        let rel = format!("shared/s{i}.py");
        let mut rng = Rng::new(60_000 + i);
        let len = rng.range(100, 6_000) as usize;
        write_file(&dir.join(&rel), &rng.bytes(len), false);
        expect.insert(rel, Expect::File { exec: false });
    }
    for i in 0..20u64 {
        let rel = format!("own/o{i}.bin");
        let mut rng = Rng::new(70_000 + t * 100 + i);
        let len = rng.range(100, 60_000) as usize;
        write_file(&dir.join(&rel), &rng.bytes(len), false);
        expect.insert(rel, Expect::File { exec: false });
    }
    write_file(
        &dir.join("bin/run"),
        format!("#!/bin/sh\n# {t}\n").as_bytes(),
        true,
    );
    expect.insert("bin/run".into(), Expect::File { exec: true });
    symlink("shared/s0.py", dir.join("link")).unwrap();
    expect.insert(
        "link".into(),
        Expect::Symlink {
            target: "shared/s0.py".into(),
        },
    );
    expect
}

#[test]
fn concurrent_gc_and_add_do_not_lose_rooted_content() {
    const TREES: u64 = 16;
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let mut trees = Vec::new();
    for i in 0..TREES {
        let dir = t.path().join(format!("src/tree{i:02}"));
        let expect = gc_race_tree(&dir, i);
        trees.push((dir, expect));
    }
    // Unrooted scratch trees give gc something to delete while it races the writer.
    let scratch = t.path().join("src/scratch");
    init_store(&store);

    let done = AtomicBool::new(false);
    let mut scratch_ids = Vec::new();
    let (adds, gcs) = thread::scope(|s| {
        let gc = s.spawn(|| {
            let mut runs = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                runs.push(comfystore(&store, &["gc", "--grace", "0"]));
                if finished {
                    break runs;
                }
            }
        });
        let mut adds = Vec::new();
        for (i, (dir, _)) in trees.iter().enumerate() {
            let name = format!("race/r{i:02}");
            let args = ["add", "--root", &name, dir.to_str().unwrap()];
            adds.push((name.clone(), comfystore(&store, &args)));
            let scratch_dir = scratch.join(format!("{i}"));
            write_file(
                &scratch_dir.join("junk.bin"),
                &Rng::new(80_000 + i as u64).bytes(20_000),
                false,
            );
            scratch_ids.push(add_tree(&store, &scratch_dir, &[]));
        }
        done.store(true, Ordering::SeqCst);
        (adds, gc.join().unwrap())
    });

    for (i, out) in gcs.iter().enumerate() {
        assert!(
            out.status.success(),
            "gc run {i}: {}",
            describe(&["gc"], out)
        );
    }
    let failed: Vec<String> = adds
        .iter()
        .filter(|(_, out)| !out.status.success())
        .map(|(name, out)| describe(&["add", "--root", name], out))
        .collect();

    // One more gc after the writer stopped must not change anything either.
    ok(&store, &["gc", "--grace", "0"]);
    assert_fsck_clean(&store, "after gc raced the writer");
    // gc did collect: the unrooted scratch trees are gone, so surviving trees survived on merit.
    let scratch_left: Vec<String> = (0..TREES)
        .filter_map(|i| {
            let out = comfystore(&store, &["ls", &scratch_ids[i as usize]]);
            out.status
                .success()
                .then(|| scratch_ids[i as usize].clone())
        })
        .collect();
    assert_eq!(
        scratch_left,
        Vec::<String>::new(),
        "unrooted trees survived gc"
    );
    eprintln!("{} gc runs raced {} adds", gcs.len(), 2 * TREES);

    let roots: Vec<Value> = serde_json::from_str(&ok(&store, &["--json", "root", "ls"])).unwrap();
    let mut lost = Vec::new();
    for (i, ((dir, expect), (name, out))) in trees.iter().zip(&adds).enumerate() {
        if !out.status.success() {
            continue;
        }
        let added = parse_add(&out.stdout);
        let id = &added[0].0;
        let root = roots
            .iter()
            .find(|r| r["name"] == name.as_str())
            .unwrap_or_else(|| panic!("root {name} missing from `root ls`"));
        assert_eq!(root["ids"][0].as_str(), Some(id.as_str()), "root {name}");
        if !tree_path(&store, id).is_file() {
            lost.push(format!("{name}: tree {id} is gone"));
            continue;
        }
        let files = check_listing(&store, id, dir, expect);
        for (k, (rel, obj, exec)) in files.iter().enumerate() {
            let p = object_path(&store, obj, *exec);
            if fs::read(&p).ok() != Some(fs::read(dir.join(rel)).unwrap()) {
                lost.push(format!("{name}: {rel} ({obj}) is gone or wrong"));
            } else if (k + i) % 5 == 0 {
                assert!(cat(&store, obj) == fs::read(dir.join(rel)).unwrap());
            }
        }
    }
    assert!(
        failed.is_empty() && lost.is_empty(),
        "gc racing `add --root` lost rooted content: {} of {TREES} adds failed, {} rooted items \
         missing.\nmissing:\n{}\nfailed adds:\n{}",
        failed.len(),
        lost.len(),
        lost.join("\n"),
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 5 and 6. Creating a store
// ---------------------------------------------------------------------------------------------

#[test]
fn eight_processes_creating_one_new_store_all_succeed() {
    let t = tempfile::tempdir().unwrap();
    let mut srcs = Vec::new();
    for p in 0..8u64 {
        let dir = t.path().join(format!("src{p}"));
        for i in 0..20u64 {
            let mut rng = Rng::new(90_000 + p * 100 + i);
            write_file(&dir.join(format!("f{i}")), &rng.bytes(500), false);
        }
        srcs.push(dir);
    }
    for round in 0..3 {
        // The store directory does not exist yet: every process finds it missing and creates it.
        let store = t.path().join(format!("store{round}"));
        let children: Vec<Child> = srcs
            .iter()
            .map(|d| spawn(&store, &["add", d.to_str().unwrap()]))
            .collect();
        let failed: Vec<String> = children
            .into_iter()
            .zip(&srcs)
            .map(|(c, d)| (wait_output(c, "add on a new store"), d))
            .filter(|(out, _)| !out.status.success())
            .map(|(out, d)| describe(&["add", d.to_str().unwrap()], &out))
            .collect();
        assert!(
            failed.is_empty(),
            "round {round}: {} of 8 processes opening a new store at once failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
        assert_fsck_clean(&store, "after concurrent creation");
    }
}

#[test]
fn kill_9_during_store_creation_leaves_a_usable_store() {
    let t = tempfile::tempdir().unwrap();
    let mut unusable = Vec::new();
    for (k, delay_ms) in [0u64, 1, 2, 3, 5, 8, 13, 21, 34].into_iter().enumerate() {
        let store = t.path().join(format!("store{k}"));
        let mut child = command(&store, &["stats"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let partial = store.is_dir() && !store.join("comfystore-store.json").exists();
        let out = comfystore(&store, &["stats"]);
        if !out.status.success() {
            unusable.push(format!(
                "killed after {delay_ms} ms (layout partly created: {partial}): {}",
                describe(&["stats"], &out)
            ));
        }
    }
    assert!(
        unusable.is_empty(),
        "a store whose creation was killed cannot be opened again:\n{}",
        unusable.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 7. kill -9 during gc
// ---------------------------------------------------------------------------------------------

/// Every file under `dir` (path → BLAKE3, symlink → its target): a sentinel folder outside the
/// store, compared before and after the kills, shows the killed runs changed nothing there.
fn snapshot_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.expect("walk sentinel");
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let what = if e.file_type().is_symlink() {
            format!("-> {}", fs::read_link(e.path()).unwrap().display())
        } else if e.file_type().is_file() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
            format!("{} {mode:o}", b3_file(e.path()))
        } else {
            "dir".into()
        };
        out.insert(rel, what);
    }
    out
}

/// A batch of unrooted trees of small files for gc to delete, new content each `round`.
fn gc_fodder(store: &Path, base: &Path, round: u64) {
    for k in 0..3u64 {
        let dir = base.join(format!("r{round}/t{k}"));
        for i in 0..120u64 {
            let mut rng = Rng::new(round * 1_000_000 + k * 1_000 + i);
            let len = rng.range(16, 2_000) as usize;
            write_file(
                &dir.join(format!("d{}/f{i}", i / 40)),
                &rng.bytes(len),
                i == 0,
            );
        }
        add_tree(store, &dir, &[]);
    }
}

#[test]
fn kill_9_during_gc_leaves_every_remaining_tree_complete() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let fodder = t.path().join("fodder");
    let kept = t.path().join("kept");
    let expect = gc_race_tree(&kept, 7);
    init_store(&store);
    let kept_id = add_tree(&store, &kept, &["--root", "kept"]);

    // Span the kills over one uninterrupted gc of a batch like the ones below (only to place
    // the kills; nothing asserts on time).
    gc_fodder(&store, &fodder, 0);
    let started = Instant::now();
    ok(&store, &["gc", "--grace", "0"]);
    let span_ms = (started.elapsed().as_millis() as u64).clamp(10, 500);
    let sentinel = snapshot_files(t.path().join("fodder").as_path());
    let kept_before = snapshot_files(&kept);

    const KILLS: usize = 20;
    let mut delays = Rng::new(0x9c);
    let mut killed = 0;
    let mut round = 0;
    let mut span_ms = span_ms;
    while killed < KILLS {
        round += 1;
        assert!(
            round <= 10 * KILLS as u64,
            "only {killed} gc runs were killed while running"
        );
        gc_fodder(&store, &fodder, round);
        let mut child = command(&store, &["gc", "--grace", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gc");
        thread::sleep(Duration::from_millis(delays.range(0, span_ms + 1)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        // Killed, or it had finished by the time the signal came (then it must have succeeded).
        if status.signal() == Some(9) {
            killed += 1;
        } else {
            assert!(status.success(), "round {round}: gc failed: {status}");
            span_ms = (span_ms * 3 / 4).max(2);
        }
        // After every kill, not only after a rerun: every tree still present is complete.
        assert_fsck_clean(&store, &format!("after gc killed in round {round}"));
    }
    eprintln!("{killed} of {round} gc runs killed while running (span {span_ms} ms)");

    // The rerun completes and leaves only the rooted content.
    ok(&store, &["gc", "--grace", "0"]);
    assert_fsck_clean(&store, "after the rerun");
    check_listing(&store, &kept_id, &kept, &expect);
    assert_eq!(
        snapshot_files(&kept),
        kept_before,
        "files outside the store changed"
    );
    let mut now = snapshot_files(&fodder);
    now.retain(|k, _| sentinel.contains_key(k));
    assert_eq!(now, sentinel, "files outside the store changed");
}

// ---------------------------------------------------------------------------------------------
// 8. Temp files of killed writers
// ---------------------------------------------------------------------------------------------

#[test]
fn gc_removes_temp_files_of_a_killed_writer_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (src_store, store) = (t.path().join("src-store"), t.path().join("store"));
    let dir = t.path().join("content");
    write_random_file(&dir.join("big.bin"), 77, 3 * MIB);
    for i in 0..20u64 {
        write_file(
            &dir.join(format!("s/f{i}")),
            &Rng::new(900 + i).bytes(3_000),
            false,
        );
    }
    let tree = add_tree(&src_store, &dir, &[]);
    let bundle = t.path().join("v.bundle");
    ok(
        &src_store,
        &["export", &tree, "-o", bundle.to_str().unwrap()],
    );
    let bytes = fs::read(&bundle).unwrap();
    init_store(&store);

    // An import stalled before the end of its bundle: its staged files are in tmp/.
    let mut child = command(&store, &["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn import");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &bytes[..bytes.len() - 64]).unwrap();
    std::io::Write::flush(&mut stdin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tmp_entries(&store).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "import staged nothing: {:?}",
            tmp_entries(&store)
        );
        thread::sleep(Duration::from_millis(20));
    }
    // (A live writer holds the gc lock shared, so gc waits for it; its temp files are not
    // at stake here.) Killed, it leaves them: gc with the default grace period removes them
    // at once, young as they are.
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    drop(stdin);
    assert!(!tmp_entries(&store).is_empty());
    ok(&store, &["gc"]);
    assert_eq!(tmp_entries(&store), BTreeSet::new(), "tmp/ after gc");
    let writers: Vec<_> = fs::read_dir(store.join("locks/writers"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        writers.is_empty(),
        "lock files of gone writers: {writers:?}"
    );
    assert_fsck_clean(&store, "after gc");
    // The import runs to the end afterwards.
    let out = command(&store, &["import", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&["import"], &out));
    assert_fsck_clean(&store, "after the import");
}

// ---------------------------------------------------------------------------------------------
// 9. kill -9 during materialize and import
// ---------------------------------------------------------------------------------------------

/// A tree worth killing a run in: 300 small files, two 2 MiB ones, an executable, a symlink.
fn kill_tree(dir: &Path) {
    for i in 0..300u64 {
        let mut rng = Rng::new(50_000 + i);
        let len = rng.range(100, 3_000) as usize;
        write_file(
            &dir.join(format!("m{}/f{i}.py", i / 60)),
            &rng.bytes(len),
            i == 7,
        );
    }
    write_random_file(&dir.join("big/a.bin"), 51, 2 * MIB);
    write_random_file(&dir.join("big/b.bin"), 52, 2 * MIB);
    symlink("m0/f0.py", dir.join("entry.py")).unwrap();
}

/// Spawn `args`, kill it after `delay_ms`; whether the kill cut it short.
fn spawn_and_kill(store: &Path, args: &[&str], delay_ms: u64) -> bool {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = command(store, args)
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .expect("spawn");
    thread::sleep(Duration::from_millis(delay_ms));
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    // Killed, or it had finished by the time the signal came (then it must have succeeded).
    let killed = status.signal() == Some(9);
    if !killed {
        assert!(
            status.success(),
            "{args:?} failed: {status}\n{}",
            fs::read_to_string(err.path()).unwrap_or_default()
        );
    }
    killed
}

#[test]
fn kill_9_during_materialize_leaves_fsck_clean_and_nothing_else_touched() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("src");
    kill_tree(&src);
    let sentinel = t.path().join("sentinel");
    write_file(&sentinel.join("keep.txt"), b"not comfystore's", false);
    symlink("../src", sentinel.join("link")).unwrap();
    let tree = add_tree(&store, &src, &[]);
    let outside = || (snapshot_files(&src), snapshot_files(&sentinel));
    let before = outside();

    let scratch = t.path().join("scratch");
    let started = Instant::now();
    ok(
        &store,
        &[
            "materialize",
            &tree,
            scratch.to_str().unwrap(),
            "--link",
            "copy",
        ],
    );
    let span_ms = (started.elapsed().as_millis() as u64).clamp(10, 800);

    let dest = t.path().join("dest");
    let args = [
        "materialize",
        &tree,
        dest.to_str().unwrap(),
        "--link",
        "copy",
    ];
    let mut delays = Rng::new(0x3a7);
    let (mut killed, mut round, mut span_ms) = (0, 0, span_ms);
    while killed < 20 {
        round += 1;
        assert!(
            round <= 200,
            "only {killed} materialize runs were killed while running"
        );
        if round % 3 == 0 {
            // Sometimes from scratch, mostly over what the last kill left.
            let _ = fs::remove_dir_all(&dest);
        }
        if spawn_and_kill(&store, &args, delays.range(0, span_ms + 1)) {
            killed += 1;
        } else {
            // It finished first: a rerun over what a kill left is quicker than the first run
            // the span was measured on, so aim earlier.
            span_ms = (span_ms * 3 / 4).max(2);
        }
        assert_fsck_clean(
            &store,
            &format!("after materialize killed in round {round}"),
        );
        assert!(
            outside() == before,
            "round {round}: files outside the store and DEST changed"
        );
    }
    eprintln!("{killed} of {round} materialize runs killed while running (span {span_ms} ms)");
    ok(
        &store,
        &[
            "materialize",
            &tree,
            dest.to_str().unwrap(),
            "--link",
            "copy",
        ],
    );
    ok(&store, &["status", "--verify", dest.to_str().unwrap()]);
    assert_fsck_clean(&store, "after the rerun");
    assert!(outside() == before);
}

#[test]
fn kill_9_during_import_leaves_fsck_clean_and_gc_clears_its_temp_files() {
    let t = tempfile::tempdir().unwrap();
    let (src_store, store) = (t.path().join("src-store"), t.path().join("store"));
    let src = t.path().join("src");
    kill_tree(&src);
    let tree = add_tree(&src_store, &src, &[]);
    let bundle = t.path().join("v.bundle");
    ok(
        &src_store,
        &["export", &tree, "-o", bundle.to_str().unwrap()],
    );
    let before = snapshot_files(&src);
    init_store(&store);

    let scratch = t.path().join("scratch-store");
    let started = Instant::now();
    ok(&scratch, &["import", bundle.to_str().unwrap()]);
    let span_ms = (started.elapsed().as_millis() as u64).clamp(10, 800);

    let args = ["import", bundle.to_str().unwrap(), "--root", "v"];
    let mut delays = Rng::new(0x1b9);
    let (mut killed, mut round, mut span_ms) = (0, 0, span_ms);
    while killed < 20 {
        round += 1;
        assert!(
            round <= 200,
            "only {killed} imports were killed while running"
        );
        if spawn_and_kill(&store, &args, delays.range(0, span_ms + 1)) {
            killed += 1;
        } else {
            // It finished first: aim earlier (the span was measured on a slower first run).
            span_ms = (span_ms * 3 / 4).max(2);
            // It finished: start again from an empty store so later kills land mid-import.
            ok(&store, &["root", "rm", "v"]);
            ok(&store, &["gc", "--grace", "0"]);
        }
        assert_fsck_clean(&store, &format!("after import killed in round {round}"));
        // (A kill between publishing the content and writing its root leaves the content
        // unrooted: fsck does not count that, and gc removes it after the grace period.)
        // gc (default grace period) clears the killed import's temp files at once.
        ok(&store, &["gc"]);
        assert_eq!(
            tmp_entries(&store),
            BTreeSet::new(),
            "round {round}: tmp/ after gc"
        );
    }
    eprintln!("{killed} of {round} imports killed while running (span {span_ms} ms)");
    ok(&store, &["import", bundle.to_str().unwrap(), "--root", "v"]);
    assert_fsck_clean(&store, "after the rerun");
    check_listing(&store, &tree, &src, &{
        let mut m: BTreeMap<String, Expect> = (0..300u64)
            .map(|i| {
                (
                    format!("m{}/f{i}.py", i / 60),
                    Expect::File { exec: i == 7 },
                )
            })
            .collect();
        m.insert("big/a.bin".into(), Expect::File { exec: false });
        m.insert("big/b.bin".into(), Expect::File { exec: false });
        m.insert(
            "entry.py".into(),
            Expect::Symlink {
                target: "m0/f0.py".into(),
            },
        );
        m
    });
    assert_eq!(snapshot_files(&src), before, "the source changed");
}

#[test]
fn materialize_killed_while_writing_its_first_marker_can_be_run_again() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("src");
    write_file(&src.join("a.txt"), b"a", false);
    let tree = add_tree(&store, &src, &[]);
    // What a kill during the marker's first write leaves: DEST with only its temp file.
    let dest = t.path().join("dest");
    write_file(&dest.join(format!(".tmp-{}", "5a".repeat(16))), b"{", false);
    ok(&store, &["materialize", &tree, dest.to_str().unwrap()]);
    ok(&store, &["status", "--verify", dest.to_str().unwrap()]);
    // Anything else in an unmarked DEST is still refused.
    let other = t.path().join("other");
    write_file(&other.join("mine.txt"), b"user", false);
    let out = comfystore(&store, &["materialize", &tree, other.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe(&["materialize"], &out)
    );
}
