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
