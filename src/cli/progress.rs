//! Progress bars (indicatif) for the library's [`Reporter`]: shown on a terminal, silent
//! everywhere else (CI, pipes, `--json`, `--quiet`).

use comfystore::report::{Progress, Reporter, Silent, Unit};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The reporter the command line hands the library: bars when `quiet` is off and stderr is a
/// terminal, nothing otherwise.
///
/// `COMFYSTORE_PROGRESS_LOG=FILE` instead appends every count to FILE as JSON lines, terminal or
/// not: for wrappers that draw their own progress, and for the tests that check each bar moves
/// with the bytes (not once per file).
pub fn reporter(quiet: bool) -> Arc<dyn Reporter> {
    if let Some(path) = std::env::var_os("COMFYSTORE_PROGRESS_LOG").filter(|p| !p.is_empty()) {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => {
                return Arc::new(Log {
                    file: Arc::new(Mutex::new(f)),
                    next: AtomicU64::new(0),
                })
            }
            Err(e) => tracing::warn!(
                "COMFYSTORE_PROGRESS_LOG={}: {e}; no progress log",
                path.to_string_lossy()
            ),
        }
    }
    if quiet || !std::io::stderr().is_terminal() {
        Arc::new(Silent)
    } else {
        Arc::new(Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        })
    }
}

/// Every bar of the process in one [`MultiProgress`], so concurrent downloads each get a line.
struct Bars {
    multi: MultiProgress,
}

impl Reporter for Bars {
    fn start(&self, label: &str, total: Option<u64>, unit: Unit) -> Box<dyn Progress> {
        let bar = self.multi.add(ProgressBar::new(total.unwrap_or(0)));
        bar.set_style(style(unit));
        bar.set_message(label.to_string());
        Box::new(Bar(bar))
    }
}

/// The look of each kind of count.
fn style(unit: Unit) -> ProgressStyle {
    let template = match unit {
        Unit::Items => "{msg:>10} [{bar:30}] {human_pos}/{human_len} {rate} eta {eta}",
        Unit::Bytes => "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        Unit::Transfer => "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        // Whole items a second: "1,991/s", not indicatif's "1,990.6794/s".
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", indicatif::HumanCount(s.per_sec() as u64));
            },
        )
        .progress_chars("=> ")
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn set_position(&self, pos: u64) {
        self.0.set_position(pos);
    }
    fn set_total(&self, total: u64) {
        if self.0.length() != Some(total) {
            self.0.set_length(total);
        }
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Counts as JSON lines (`{"bar", "label", "unit", "total", "pos", "done"}`), one when a bar
/// starts, then whenever it moved by 1 % of its total (or by any amount when the total is
/// unknown), and one when it finishes: at most about a hundred lines a bar.
struct Log {
    file: Arc<Mutex<std::fs::File>>,
    next: AtomicU64,
}

impl Reporter for Log {
    fn start(&self, label: &str, total: Option<u64>, unit: Unit) -> Box<dyn Progress> {
        let bar = LogBar {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            label: label.to_string(),
            unit: match unit {
                Unit::Items => "items",
                Unit::Bytes => "bytes",
                Unit::Transfer => "transfer",
            },
            state: Mutex::new(LogState {
                pos: 0,
                written: 0,
                total,
            }),
            file: self.file.clone(),
        };
        bar.write(0, total, false);
        Box::new(bar)
    }
}

struct LogBar {
    id: u64,
    label: String,
    unit: &'static str,
    state: Mutex<LogState>,
    file: Arc<Mutex<std::fs::File>>,
}

struct LogState {
    pos: u64,
    /// The position last written.
    written: u64,
    total: Option<u64>,
}

impl LogBar {
    fn write(&self, pos: u64, total: Option<u64>, done: bool) {
        let line = serde_json::json!({
            "bar": self.id, "label": self.label, "unit": self.unit,
            "total": total, "pos": pos, "done": done,
        });
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Move the count; write a line once it moved by 1 % of the total since the last one.
    fn moved(&self, f: impl FnOnce(&mut LogState)) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        f(&mut st);
        let step = st.total.map_or(1, |t| (t / 100).max(1));
        if st.pos.abs_diff(st.written) >= step {
            st.written = st.pos;
            self.write(st.pos, st.total, false);
        }
    }
}

impl Progress for LogBar {
    fn inc(&self, n: u64) {
        self.moved(|st| st.pos = st.pos.saturating_add(n));
    }
    fn set_position(&self, pos: u64) {
        self.moved(|st| st.pos = pos);
    }
    fn set_total(&self, total: u64) {
        self.moved(|st| st.total = Some(total));
    }
    fn finish(&self) {
        if let Ok(st) = self.state.lock() {
            self.write(st.pos, st.total, true);
        }
    }
}
