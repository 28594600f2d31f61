//! The channel from the async transfer to the store's pipeline thread, which writes and
//! hashes what arrives: one pass, whatever the mix of streams, resumes and ranges.

use super::state::{Fail, Transfer};
use crate::report;
use bytes::Bytes;
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};

/// Bytes for the pipeline thread, or the reason the transfer was abandoned.
pub(crate) type Chunk = std::result::Result<Bytes, String>;

/// A `Read` over the chunks the async side sends.
pub(crate) struct ChannelReader {
    rx: Receiver<Chunk>,
    cur: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: Receiver<Chunk>) -> ChannelReader {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(reason)) => return Err(io::Error::other(reason)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// A `Write` into the channel a [`ChannelReader`] reads: for bytes that come as writes (a
/// GCS download's sink). Sending blocks when the reader is the channel's bound behind, so
/// the writer waits for the disk rather than fill memory.
pub(crate) struct ChannelWriter(pub(crate) SyncSender<Chunk>);

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::other("the store stopped reading (see the error above)"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a transfer's bytes go: the pipeline, with the transfer's state and bar kept in step.
pub(super) struct Sink<'a> {
    pub(super) tx: &'a SyncSender<Chunk>,
    pub(super) at: &'a mut Transfer,
    pub(super) bar: &'a dyn report::Progress,
}

impl Sink<'_> {
    /// Hand `chunk` to the pipeline and move the transfer (and its bar) past it; its length.
    pub(super) fn deliver(&mut self, chunk: Bytes) -> Result<u64, Fail> {
        let n = chunk.len() as u64;
        if self.tx.send(Ok(chunk)).is_err() {
            return Err(Fail::Final(
                "the store stopped reading (see the error above)".into(),
            ));
        }
        self.at.offset += n;
        if let Some(t) = self.at.total {
            // A size the lock did not give is known once the server answered: the bar gets
            // its length (and an eta) then.
            self.bar.set_total(t);
        }
        self.bar.set_position(self.at.offset);
        Ok(n)
    }
}
