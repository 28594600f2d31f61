//! Progress bars (indicatif) for the library's [`Reporter`]: shown on a terminal, silent
//! everywhere else (CI, pipes, `--json`, `--quiet`).

use comfystore::report::{Progress, Reporter, Silent, Unit};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;

/// The reporter the command line hands the library: bars when `quiet` is off and stderr is a
/// terminal, nothing otherwise.
pub fn reporter(quiet: bool) -> Arc<dyn Reporter> {
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
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
