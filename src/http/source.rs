//! One HTTP source: a pipeline thread stores what the transfer streams into it, and the
//! transfer retries and resumes until the file is complete or hopeless.

use super::download::Downloaded;
use super::fetcher::{Fetcher, Job, SourceFailed};
use super::pipe::{ChannelReader, Chunk, Sink};
use super::state::{backoff, Fail, Transfer};
use crate::http::error::Error;
use crate::secret::redact_url;
use std::path::Path;
use std::sync::mpsc::sync_channel;

impl Fetcher {
    /// Download `url` into the store, checked against what `d` expects.
    pub(super) fn try_source(
        &self,
        job: &Job,
        url: &str,
    ) -> std::result::Result<Downloaded, SourceFailed> {
        let Job { store, d, bar } = *job;
        let shown = redact_url(url);
        let (tx, rx) = sync_channel::<Chunk>(16);
        let mut progress = Transfer {
            total: d.expect.size,
            ..Default::default()
        };
        let (transfer, put) = std::thread::scope(|s| {
            let pipe = s.spawn(|| {
                let mut reader = ChannelReader::new(rx);
                store.put_reader_checked(&mut reader, false, true, Path::new(&shown), &|dg| {
                    d.expect.check(dg, "downloaded bytes")
                })
            });
            let sink = Sink {
                tx: &tx,
                at: &mut progress,
                bar,
            };
            let transfer = self.rt.block_on(self.transfer(url, sink));
            if let Err(e) = &transfer {
                let _ = tx.send(Err(e.clone()));
            }
            drop(tx);
            let put = match pipe.join() {
                Ok(put) => put.map_err(Error::from),
                Err(_) => Err(Error::Download {
                    what: d.label.clone(),
                    reason: "the store pipeline panicked".into(),
                }),
            };
            (transfer, put)
        });
        let attempts = progress.attempts;
        match (transfer, put) {
            (Err(reason), _) => Err((reason, attempts)),
            (Ok(()), Err(e)) => Err((e.to_string(), attempts)),
            (Ok(()), Ok(put)) => {
                store
                    .record_object(&put)
                    .map_err(|e| (e.to_string(), attempts))?;
                Ok(Downloaded::of(d, &put, shown, attempts, progress.resumed))
            }
        }
    }

    /// Stream `url` into `tx`, retrying and resuming until it is complete or hopeless.
    async fn transfer(&self, url: &str, mut sink: Sink<'_>) -> std::result::Result<(), String> {
        let mut retries = 0;
        loop {
            sink.at.attempts += 1;
            match self.attempt(url, &mut sink).await {
                Ok(()) => return Ok(()),
                Err(Fail::Final(m)) => return Err(m),
                Err(Fail::Retry(m, after)) => {
                    if retries >= self.opts.retries {
                        return Err(format!("gave up after {} attempts: {m}", sink.at.attempts));
                    }
                    retries += 1;
                    let delay = after.unwrap_or_else(|| backoff(self.opts.backoff, retries));
                    tracing::info!("{}: {m}; retrying in {:?}", redact_url(url), delay);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
