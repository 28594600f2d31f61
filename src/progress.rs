//! Progress bars that show on a terminal and stay silent everywhere else (CI, pipes, `--json`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence every bar made after this call (for `--quiet` and `--json`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn visible() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// A bar counting `len` items, labelled `msg`; hidden when stderr is not a terminal.
pub fn items(len: u64, msg: &'static str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

/// A bar counting bytes, labelled `msg`; hidden when stderr is not a terminal.
pub fn bytes(len: u64, msg: &'static str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(byte_style("{msg:>10}"));
    bar.set_message(msg);
    bar
}

/// The look of every byte-counting bar; `msg` is the label's template field.
fn byte_style(msg: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{msg} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Bars for several transfers at once (one line per file plus a total); hidden off a terminal.
pub fn multi() -> indicatif::MultiProgress {
    if visible() {
        indicatif::MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    } else {
        indicatif::MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    }
}

/// A byte bar for one file, named `name`, in `multi`.
pub fn file_bar(multi: &indicatif::MultiProgress, len: Option<u64>, name: String) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len.unwrap_or(0)));
    bar.set_style(byte_style("{msg:30!}"));
    bar.set_message(name);
    bar
}
