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
        match unit {
            Unit::Files { files, per_file } => {
                let counts = Arc::new(FileCounts {
                    bytes: AtomicU64::new(0),
                    total: AtomicU64::new(total.unwrap_or(0)),
                    files: AtomicU64::new(0),
                    files_total: files,
                    per_file,
                });
                let bar = self.multi.add(ProgressBar::new(counts.work_total()));
                bar.set_style(files_style(counts.clone()));
                bar.set_message(label.to_string());
                Box::new(FilesBar { bar, counts })
            }
            Unit::Wait => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{msg:>10} {spinner} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(label.to_string());
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                Box::new(Bar(bar))
            }
            _ => {
                let bar = self.multi.add(ProgressBar::new(total.unwrap_or(0)));
                bar.set_style(style(unit));
                bar.set_message(label.to_string());
                Box::new(Bar(bar))
            }
        }
    }
}

/// The look of each kind of count.
fn style(unit: Unit) -> ProgressStyle {
    let template = match unit {
        Unit::Items => "{msg:>10} [{bar:30}] {human_pos}/{human_len} {rate} eta {eta}",
        Unit::Bytes => "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        Unit::Transfer => "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        Unit::Files { .. } | Unit::Wait => "{msg:>10} [{bar:30}] {pos}/{len} eta {eta}",
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

/// A [`Unit::Files`] count as the screen shows it: the real bytes and files beside the work
/// (bytes plus a cost per file) that the bar's position, length and eta are in.
struct FileCounts {
    bytes: AtomicU64,
    total: AtomicU64,
    files: AtomicU64,
    files_total: u64,
    per_file: u64,
}

impl FileCounts {
    fn work(&self) -> u64 {
        comfystore::report::work(
            self.bytes.load(Ordering::Relaxed),
            self.files.load(Ordering::Relaxed),
            self.per_file,
        )
    }
    fn work_total(&self) -> u64 {
        comfystore::report::work(
            self.total.load(Ordering::Relaxed),
            self.files_total,
            self.per_file,
        )
    }
}

/// The look of a [`Unit::Files`] count: "1.2 GiB/6.3 GiB 4,210/20,001 files 95 MiB/s eta
/// 40s". The bar and the eta are indicatif's own, on the work; the bytes, files and rate are
/// the real ones (the rate an average since the start: the recent rate of work is what the eta
/// uses, and a byte rate over the last second swings from GiB/s on a model to KiB/s on small
/// files).
fn files_style(counts: Arc<FileCounts>) -> ProgressStyle {
    let c = counts.clone();
    ProgressStyle::with_template("{msg:>10} [{bar:30}] {done} {speed} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "done",
            move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let total = c.total.load(Ordering::Relaxed);
                if total > 0 {
                    let _ = write!(
                        w,
                        "{}/{} ",
                        indicatif::HumanBytes(c.bytes.load(Ordering::Relaxed)),
                        indicatif::HumanBytes(total),
                    );
                }
                let _ = write!(
                    w,
                    "{}/{} files",
                    indicatif::HumanCount(c.files.load(Ordering::Relaxed)),
                    indicatif::HumanCount(c.files_total),
                );
            },
        )
        .with_key(
            "speed",
            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let secs = s.elapsed().as_secs_f64().max(1e-3);
                let _ = if counts.total.load(Ordering::Relaxed) > 0 {
                    let bytes = counts.bytes.load(Ordering::Relaxed) as f64;
                    write!(w, "{}/s", indicatif::HumanBytes((bytes / secs) as u64))
                } else {
                    let files = counts.files.load(Ordering::Relaxed) as f64;
                    write!(
                        w,
                        "{} files/s",
                        indicatif::HumanCount((files / secs) as u64)
                    )
                };
            },
        )
        .progress_chars("=> ")
}

struct FilesBar {
    bar: ProgressBar,
    counts: Arc<FileCounts>,
}

impl Progress for FilesBar {
    fn inc(&self, n: u64) {
        self.counts.bytes.fetch_add(n, Ordering::Relaxed);
        self.bar.inc(n);
    }
    fn inc_files(&self, n: u64) {
        self.counts.files.fetch_add(n, Ordering::Relaxed);
        self.bar.inc(n.saturating_mul(self.counts.per_file));
    }
    fn set_position(&self, pos: u64) {
        self.counts.bytes.store(pos, Ordering::Relaxed);
        self.bar.set_position(self.counts.work());
    }
    fn set_total(&self, total: u64) {
        self.counts.total.store(total, Ordering::Relaxed);
        self.bar.set_length(self.counts.work_total());
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
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

/// Counts as JSON lines (`{"bar", "label", "unit", "total", "pos", "done"}`, and for a
/// [`Unit::Files`] count also `files`, `files_total`, `work` and `work_total`), one when a bar
/// starts, then whenever it moved by 1 % of its total (of its work for a count of files, or by
/// any amount when the total is unknown), and one when it finishes: at most about a hundred
/// lines a bar.
struct Log {
    file: Arc<Mutex<std::fs::File>>,
    next: AtomicU64,
}

impl Reporter for Log {
    fn start(&self, label: &str, total: Option<u64>, unit: Unit) -> Box<dyn Progress> {
        let (files_total, per_file) = match unit {
            Unit::Files { files, per_file } => (Some(files), per_file),
            _ => (None, 0),
        };
        let bar = LogBar {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            label: label.to_string(),
            unit: match unit {
                Unit::Items => "items",
                Unit::Bytes => "bytes",
                Unit::Transfer => "transfer",
                Unit::Files { .. } => "files",
                Unit::Wait => "wait",
            },
            state: Mutex::new(LogState {
                pos: 0,
                files: 0,
                written: 0,
                total,
                files_total,
                per_file,
            }),
            file: self.file.clone(),
        };
        if let Ok(st) = bar.state.lock() {
            bar.write(&st, false);
        }
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
    /// Files done (a [`Unit::Files`] count).
    files: u64,
    /// The work last written.
    written: u64,
    total: Option<u64>,
    /// How many files (a [`Unit::Files`] count only).
    files_total: Option<u64>,
    per_file: u64,
}

impl LogState {
    fn work(&self) -> u64 {
        comfystore::report::work(self.pos, self.files, self.per_file)
    }
    fn work_total(&self) -> Option<u64> {
        let total = self.total?;
        Some(comfystore::report::work(
            total,
            self.files_total.unwrap_or(0),
            self.per_file,
        ))
    }
}

impl LogBar {
    fn write(&self, st: &LogState, done: bool) {
        let mut line = serde_json::json!({
            "bar": self.id, "label": self.label, "unit": self.unit,
            "total": st.total, "pos": st.pos, "done": done,
        });
        if let Some(files_total) = st.files_total {
            line["files"] = st.files.into();
            line["files_total"] = files_total.into();
            line["work"] = st.work().into();
            line["work_total"] = st.work_total().into();
        }
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Move the count; write a line once its work moved by 1 % of the total since the last one.
    fn moved(&self, f: impl FnOnce(&mut LogState)) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        f(&mut st);
        let step = st.work_total().map_or(1, |t| (t / 100).max(1));
        let work = st.work();
        if work.abs_diff(st.written) >= step {
            st.written = work;
            self.write(&st, false);
        }
    }
}

impl Progress for LogBar {
    fn inc(&self, n: u64) {
        self.moved(|st| st.pos = st.pos.saturating_add(n));
    }
    fn inc_files(&self, n: u64) {
        self.moved(|st| st.files = st.files.saturating_add(n));
    }
    fn set_position(&self, pos: u64) {
        self.moved(|st| st.pos = pos);
    }
    fn set_total(&self, total: u64) {
        self.moved(|st| st.total = Some(total));
    }
    fn finish(&self) {
        if let Ok(st) = self.state.lock() {
            self.write(&st, true);
        }
    }
}
