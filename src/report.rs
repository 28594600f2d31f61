//! How long operations tell their caller how far they are, without knowing who listens.
//!
//! The library counts (files hashed, bytes checked, bytes downloaded) through [`Reporter`];
//! the command line turns that into progress bars on a terminal, and everything else (tests,
//! `--json`, the worker) gets [`Silent`]. This keeps terminals, and the crates that draw on
//! them, out of the library, as uv's `Reporter` does.

use std::io::Read;
use std::sync::Arc;

/// What a count counts, which decides how it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Files, entries, objects.
    Items,
    /// Bytes of one operation (hashing, checking, copying).
    Bytes,
    /// Bytes of one transfer among several running at once (a download and the total).
    Transfer,
    /// The bytes of many files (a tree's hashing, a materialize's placing): the total given to
    /// [`Reporter::start`] is their bytes, `files` how many there are, and each file counts
    /// `per_file` bytes' worth of work beside its own bytes (its open, stat and publish cost
    /// that whatever its size: see [`HASH_FILE_COST`]). The bar and its eta follow that work;
    /// the text shows the real bytes and files. Bytes come through [`Progress::inc`], files
    /// through [`Progress::inc_files`].
    Files { files: u64, per_file: u64 },
    /// A step with nothing to count (a sync, an index commit, planning): a spinner with its
    /// elapsed time, so the screen never sits still on a finished bar.
    Wait,
}

/// The work of one file beside its bytes when a tree is hashed into the store (`add`,
/// `lock`): open, stat, hash, write, publish. Calibrated on the 20k-file tree of
/// `scripts/bench/gen_tree.py` (see docs/performance.md, "Honest etas"): its add spends as
/// long on the files as on that many bytes of a big model.
pub const HASH_FILE_COST: u64 = 256 << 10;

/// The work of one entry beside its bytes when a materialize places it (create, copy or
/// link, chmod, stat), calibrated as [`HASH_FILE_COST`] on `materialize --link copy`.
pub const PLACE_FILE_COST: u64 = 256 << 10;

/// The work a [`Unit::Files`] count stands for: its bytes plus `per_file` for each file.
pub fn work(bytes: u64, files: u64, per_file: u64) -> u64 {
    bytes.saturating_add(files.saturating_mul(per_file))
}

/// One running count, started by [`Reporter::start`]. Dropping it without [`Progress::finish`]
/// is allowed (an operation that fails part-way).
pub trait Progress: Send + Sync {
    /// `n` more units done.
    fn inc(&self, n: u64);
    /// `pos` units done in all (a transfer that restarts or resumes moves back or forward).
    fn set_position(&self, pos: u64);
    /// The total became known (a download whose size the server just told), or changed.
    fn set_total(&self, _total: u64) {}
    /// `n` more files done ([`Unit::Files`]; their bytes go through [`Progress::inc`]).
    fn inc_files(&self, _n: u64) {}
    /// The count is over: clear it.
    fn finish(&self);
}

/// Where an operation reports its counts.
pub trait Reporter: Send + Sync {
    /// A new count of `total` units (unknown when `None`), shown as `label`.
    fn start(&self, label: &str, total: Option<u64>, unit: Unit) -> Box<dyn Progress>;
}

/// A reporter that shows nothing: the default everywhere outside a terminal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

/// A count nobody sees: for callers that have no bar to move.
pub struct Nothing;

impl Progress for Nothing {
    fn inc(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn finish(&self) {}
}

impl Reporter for Silent {
    fn start(&self, _: &str, _: Option<u64>, _: Unit) -> Box<dyn Progress> {
        Box::new(Nothing)
    }
}

/// The reporter a new [`crate::Store`] starts with.
pub fn silent() -> Arc<dyn Reporter> {
    Arc::new(Silent)
}

thread_local! {
    /// The count that [`nested`] counts on this thread also move, and by how much they did.
    static WITHIN: std::cell::RefCell<Option<(Arc<dyn Progress>, u64)>> =
        const { std::cell::RefCell::new(None) };
}

/// Run `f` with `outer` as the count that [`nested`] counts started in it (on this thread) also
/// move: a tree's `hashing` bar moves with a big file's bytes as they are read, not once the
/// whole model is in (its own bar is the file's). Returns `f`'s result and the bytes they moved
/// `outer` by, so the caller counts only the rest. Nests (a rayon thread may run another
/// file's job while it waits): the enclosing count is put back after `f`.
pub fn within<T>(outer: &Arc<dyn Progress>, f: impl FnOnce() -> T) -> (T, u64) {
    let saved = WITHIN.with(|w| w.replace(Some((outer.clone(), 0))));
    let out = f();
    let moved = WITHIN.with(|w| std::mem::replace(&mut *w.borrow_mut(), saved));
    (out, moved.map_or(0, |(_, n)| n))
}

/// `own`, also moving the count [`within`] set on this thread (if any) by what moves it.
pub fn nested(own: Box<dyn Progress>) -> Box<dyn Progress> {
    Box::new(Nested {
        own,
        at: std::sync::atomic::AtomicU64::new(0),
    })
}

struct Nested {
    own: Box<dyn Progress>,
    /// This count's position, so a `set_position` moves the enclosing one by the difference.
    at: std::sync::atomic::AtomicU64,
}

impl Nested {
    fn forward(&self, n: u64) {
        if n == 0 {
            return;
        }
        WITHIN.with(|w| {
            if let Some((outer, moved)) = w.borrow_mut().as_mut() {
                outer.inc(n);
                *moved += n;
            }
        });
    }
}

impl Progress for Nested {
    fn inc(&self, n: u64) {
        self.own.inc(n);
        self.at.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.forward(n);
    }
    fn set_position(&self, pos: u64) {
        self.own.set_position(pos);
        let before = self.at.swap(pos, std::sync::atomic::Ordering::Relaxed);
        // Forward only: the enclosing count is of work done, and its caller settles the rest.
        self.forward(pos.saturating_sub(before));
    }
    fn set_total(&self, total: u64) {
        self.own.set_total(total);
    }
    fn finish(&self) {
        self.own.finish();
    }
}

/// A reader that counts what passes through it on a [`Progress`].
pub struct ProgressRead<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<'a, R: Read> ProgressRead<'a, R> {
    pub fn new(inner: R, progress: &'a dyn Progress) -> Self {
        ProgressRead { inner, progress }
    }
}

impl<R: Read> Read for ProgressRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// A writer that counts what passes through it on a [`Progress`]: a download's bytes as they
/// land, not once the whole file is in.
pub struct ProgressWrite<'a, W> {
    inner: W,
    progress: &'a dyn Progress,
}

impl<'a, W: std::io::Write> ProgressWrite<'a, W> {
    pub fn new(inner: W, progress: &'a dyn Progress) -> Self {
        ProgressWrite { inner, progress }
    }
}

impl<W: std::io::Write> std::io::Write for ProgressWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A count shared by several transfers running at once (a fetch's "total"): each [`Part`]
/// moves it by what moved its own bar, so the total goes with the bytes, not once per file.
pub struct Total {
    bar: Box<dyn Progress>,
    pos: std::sync::atomic::AtomicU64,
}

impl Total {
    pub fn new(bar: Box<dyn Progress>) -> Total {
        Total { bar, pos: 0.into() }
    }

    /// A transfer's own count (`own`), that also moves this total.
    pub fn part<'a>(&'a self, own: &'a dyn Progress) -> Part<'a> {
        Part {
            own,
            total: self,
            at: 0.into(),
        }
    }

    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// One transfer's count within a [`Total`].
pub struct Part<'a> {
    own: &'a dyn Progress,
    total: &'a Total,
    /// What this part added to the total.
    at: std::sync::atomic::AtomicU64,
}

impl Part<'_> {
    /// Make this part's share of the total exactly `pos` (a finished transfer its whole size,
    /// whether or not its bytes were counted as they came), leaving its own bar alone.
    pub fn settle(&self, pos: u64) {
        use std::sync::atomic::Ordering;
        let before = self.at.swap(pos, Ordering::Relaxed);
        let now = if pos >= before {
            self.total.pos.fetch_add(pos - before, Ordering::Relaxed) + (pos - before)
        } else {
            self.total.pos.fetch_sub(before - pos, Ordering::Relaxed) - (before - pos)
        };
        self.total.bar.set_position(now);
    }
}

impl Progress for Part<'_> {
    fn inc(&self, n: u64) {
        self.own.inc(n);
        let at = self.at.load(std::sync::atomic::Ordering::Relaxed);
        self.settle(at.saturating_add(n));
    }
    fn set_position(&self, pos: u64) {
        self.own.set_position(pos);
        self.settle(pos);
    }
    fn set_total(&self, total: u64) {
        self.own.set_total(total);
    }
    fn finish(&self) {
        self.own.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A bar that remembers every position it was set to.
    #[derive(Default)]
    struct Seen(Arc<Mutex<Vec<u64>>>);

    impl Progress for Seen {
        fn inc(&self, _: u64) {}
        fn set_position(&self, pos: u64) {
            self.0.lock().unwrap().push(pos);
        }
        fn finish(&self) {}
    }

    /// Inside `within`, a nested count moves the enclosing one too, and says by how much; a
    /// `within` run inside another (a rayon thread stealing a job) leaves the outer one as it
    /// was; outside, a nested count moves only itself.
    #[test]
    fn a_nested_count_moves_the_enclosing_one() {
        let outer_seen = Arc::new(Mutex::new(Vec::new()));
        let outer: Arc<dyn Progress> = Arc::new(Incs(outer_seen.clone()));
        let inner_seen = Arc::new(Mutex::new(Vec::new()));
        let ((), moved) = within(&outer, || {
            let big = nested(Box::new(Incs(Arc::new(Mutex::new(Vec::new())))));
            big.inc(3);
            let stealer: Arc<dyn Progress> = Arc::new(Incs(inner_seen.clone()));
            let ((), stolen) = within(&stealer, || {
                nested(Box::new(Nothing)).inc(100);
            });
            assert_eq!(stolen, 100);
            big.set_position(10);
            big.set_position(4);
        });
        assert_eq!(moved, 10);
        assert_eq!(*outer_seen.lock().unwrap(), [3, 7]);
        assert_eq!(*inner_seen.lock().unwrap(), [100]);
        nested(Box::new(Nothing)).inc(5);
        assert_eq!(*outer_seen.lock().unwrap(), [3, 7]);
    }

    /// A bar that remembers every increment.
    struct Incs(Arc<Mutex<Vec<u64>>>);

    impl Progress for Incs {
        fn inc(&self, n: u64) {
            self.0.lock().unwrap().push(n);
        }
        fn set_position(&self, _: u64) {}
        fn finish(&self) {}
    }

    /// The total moves with each part's bytes as they come, back when a part restarts, and a
    /// part settled at its size counts exactly that.
    #[test]
    fn a_total_moves_with_its_parts_bytes() {
        let seen = Seen::default();
        let log = seen.0.clone();
        let total = Total::new(Box::new(seen));
        let (a_bar, b_bar) = (Seen::default(), Seen::default());
        let (a, b) = (total.part(&a_bar), total.part(&b_bar));
        a.inc(10);
        b.set_position(5);
        a.set_position(3);
        a.inc(4);
        a.settle(20);
        b.settle(5);
        assert_eq!(*log.lock().unwrap(), [10, 15, 8, 12, 25, 25]);
        assert_eq!(*a_bar.0.lock().unwrap(), [3]);
    }
}
