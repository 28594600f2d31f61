//! Progress as a user sees it (issue 19): bars that move with the bytes, an eta that is right
//! on a real terminal, nothing drawn off a terminal, and `--json` left clean.

mod common;

use common::{json, write};

/// An 80 MiB file of pseudo-random bytes (no filesystem can compress or dedupe it away).
fn big_model() -> Vec<u8> {
    let block = common::comfy::pseudo_random(19, 1 << 20);
    block.iter().copied().cycle().take(80 << 20).collect()
}

/// A copy-class materialize counts the bytes it copies as they move (16 MiB a
/// `copy_file_range` call), not one entry per file: the 80 MiB model's bar is seen in its
/// middle half (with 1 GiB calls it was seen at 0 and done only). A hardlinked one draws no
/// byte bar.
#[test]
fn materialize_with_copies_counts_a_big_models_bytes_as_they_move() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let src = t.path().join("version");
    write(
        &src.join("models/checkpoints/big.safetensors"),
        &big_model(),
    );
    write(&src.join("main.py"), b"print('hi')\n");
    let id = json(&store, &["add", src.to_str().unwrap()])[0]["report"]["id"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| panic!("no tree id"));
    let dest = t.path().join("dest");
    common::moves_with_the_bytes(
        &store,
        &[
            "--json",
            "materialize",
            &id,
            dest.to_str().unwrap(),
            "--link",
            "copy",
        ],
        &[],
        "copying",
    );
    assert_eq!(
        std::fs::metadata(dest.join("models/checkpoints/big.safetensors"))
            .unwrap()
            .len(),
        80 << 20
    );
    // Hardlinks move no bytes: no byte bar at all (one whose total fell from 80 MiB to
    // "0 B/0 B" as the files were linked was drawn before).
    let log = t.path().join("linked.jsonl");
    let linked = t.path().join("linked");
    let out = common::run_env(
        &store,
        &[
            "materialize",
            &id,
            linked.to_str().unwrap(),
            "--link",
            "hardlink",
        ],
        &[("COMFYSTORE_PROGRESS_LOG", Some(log.as_os_str()))],
    );
    assert!(out.status.success(), "{}", common::describe(&out));
    let bars = common::big_bars(&log, 0);
    assert!(
        bars.iter().all(|(label, _, _)| label != "copying"),
        "a hardlinked materialize drew a byte bar: {bars:?}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains(r#""label":"placing""#),
        "no entries bar"
    );
}

/// What a command drew on a pseudo-terminal: its bytes, each chunk with the seconds since the
/// start at which it arrived, and the seconds the command took.
struct Drawn {
    chunks: Vec<(f64, Vec<u8>)>,
    ended: f64,
    ok: bool,
}

impl Drawn {
    /// The bar lines drawn (escape sequences removed), each with when it arrived: every piece
    /// of text between carriage returns, newlines and escapes, cut after each " eta N" (the
    /// lines of several bars are padded to the width and follow each other unbroken).
    fn frames(&self) -> Vec<(f64, String)> {
        let mut out = Vec::new();
        let mut seg = String::new();
        let mut in_escape = false;
        for (t, chunk) in &self.chunks {
            for &b in chunk {
                if in_escape {
                    // A CSI sequence ends at its final letter; `ESC [` goes on.
                    in_escape = !(b.is_ascii_alphabetic() || b == b'~');
                    continue;
                }
                match b {
                    0x1b | b'\r' | b'\n' => {
                        let mut rest = seg.as_str();
                        while let Some(i) = rest.find(" eta ") {
                            let after = &rest[i + 5..];
                            let end = i + 5 + after.find(' ').unwrap_or(after.len());
                            out.push((*t, rest[..end].trim().to_string()));
                            rest = &rest[end..];
                        }
                        seg.clear();
                        in_escape = b == 0x1b;
                    }
                    _ => seg.push(b as char),
                }
            }
        }
        out
    }

    fn text(&self) -> String {
        let all: Vec<u8> = self.chunks.iter().flat_map(|(_, c)| c.clone()).collect();
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// Run the shell command `cmd` on a pseudo-terminal 160 columns wide, through `script` from
/// util-linux (a real pty, as a user's terminal is; no crate needed, and it is in every Debian
/// image). `None` when `script` is missing.
fn on_a_terminal(cmd: &str) -> Option<Drawn> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let full = format!("stty cols 160 rows 40; {cmd}");
    let start = std::time::Instant::now();
    let mut child = Command::new("script")
        .args(["-qfec", &full, "/dev/null"])
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let mut chunks = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => chunks.push((start.elapsed().as_secs_f64(), buf[..n].to_vec())),
        }
    }
    let status = child.wait().ok()?;
    Some(Drawn {
        chunks,
        ended: start.elapsed().as_secs_f64(),
        ok: status.success(),
    })
}

/// indicatif's short eta ("7s", "2m", "1h") in seconds.
fn eta_seconds(frame: &str) -> Option<f64> {
    let eta = frame.rsplit(" eta ").next()?.split_whitespace().next()?;
    let (n, unit) = eta.split_at(eta.find(|c: char| !c.is_ascii_digit())?);
    let n: f64 = n.parse().ok()?;
    Some(
        n * match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        },
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// On a real terminal, a download at a steady 2 MiB/s (16 MiB, 8 s) shows an eta within a
/// factor of 2 of the time it really had left, from 2 s after the bar appeared until 1.5 s
/// before the end. The check is of the eta against the remaining time this
/// test measured, both from the same clock: with the server pacing the bytes, load on the
/// machine slows neither, and the bounds are wide (a factor of 2, plus a second for the
/// eta's rounding to whole seconds).
#[test]
fn on_a_terminal_a_downloads_eta_is_right_within_a_factor_of_two() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let server = common::http::TestServer::start();
    let rate = 2u64 << 20;
    server.add(
        "/steady.bin",
        common::comfy::pseudo_random(7, 16 << 20),
        common::http::Behavior::Throttle {
            bytes_per_sec: rate,
        },
    );
    let cmd = format!(
        "exec {} --store {} add-url {}",
        shell_quote(env!("CARGO_BIN_EXE_comfystore")),
        shell_quote(store.to_str().unwrap()),
        shell_quote(&server.url("/steady.bin")),
    );
    let Some(drawn) = on_a_terminal(&cmd) else {
        common::cannot_run(
            "on_a_terminal_a_downloads_eta_is_right_within_a_factor_of_two",
            "`script` (util-linux) is not installed",
        );
        return;
    };
    assert!(drawn.ok, "add-url failed: {}", drawn.text());
    let frames = drawn.frames();
    assert!(
        frames.iter().any(|(_, f)| f.contains("MiB/s")),
        "no bar with a rate in MiB/s was drawn: {}",
        drawn.text()
    );
    // The first seconds are the bar's own, not the process's (a debug build on a loaded
    // machine takes more than one to start).
    let shown = frames[0].0;
    let mut checked = 0;
    for (at, frame) in &frames {
        let left = drawn.ended - at;
        if *at < shown + 2.0 || left < 1.5 {
            continue;
        }
        let eta = eta_seconds(frame).unwrap_or_else(|| panic!("no eta in {frame:?}"));
        assert!(
            eta >= left / 2.0 - 1.0 && eta <= left * 2.0 + 1.0,
            "at {at:.1} s, with {left:.1} s left, the bar said eta {eta} s: {frame:?}\nall: {frames:#?}"
        );
        checked += 1;
    }
    assert!(checked > 0, "no frame between 2 s and the end: {frames:#?}");
}

/// Off a terminal nothing is drawn (stderr holds no bar), and with `--json` on a terminal the
/// bars stay off too, stdout being clean JSON.
#[test]
fn off_a_terminal_or_with_json_no_bar_is_drawn() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let big = t.path().join("model.bin");
    write(&big, &big_model());
    let out = common::run(&store, &["add", big.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::describe(&out));
    let err = common::stderr(&out);
    assert!(
        !err.contains(" eta ") && !err.contains('\r'),
        "a bar was drawn off a terminal: {err:?}"
    );
    // The same on a terminal draws its bar: the check below can fail.
    let shown = format!(
        "exec {} --store {} add {}",
        shell_quote(env!("CARGO_BIN_EXE_comfystore")),
        shell_quote(t.path().join("store3").to_str().unwrap()),
        shell_quote(big.to_str().unwrap()),
    );
    let Some(drawn) = on_a_terminal(&shown) else {
        common::cannot_run(
            "off_a_terminal_or_with_json_no_bar_is_drawn",
            "`script` (util-linux) is not installed",
        );
        return;
    };
    assert!(
        !drawn.frames().is_empty(),
        "no bar on a terminal: {:?}",
        drawn.text()
    );
    let json = t.path().join("out.json");
    let cmd = format!(
        "exec {} --store {} --json add {} > {}",
        shell_quote(env!("CARGO_BIN_EXE_comfystore")),
        shell_quote(t.path().join("store2").to_str().unwrap()),
        shell_quote(big.to_str().unwrap()),
        shell_quote(json.to_str().unwrap()),
    );
    let drawn = on_a_terminal(&cmd).expect("script ran a moment ago");
    assert!(drawn.ok, "add --json failed: {}", drawn.text());
    assert!(
        drawn.frames().is_empty(),
        "--json drew a bar on the terminal: {:?}",
        drawn.text()
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .unwrap_or_else(|e| panic!("--json stdout is not clean JSON: {e}"));
    assert!(v[0]["report"]["id"].is_string(), "{v}");
}
