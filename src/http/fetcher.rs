//! The download engine's face: a client and runtime, many downloads at once, and one
//! download's sources tried in order.

use super::download::{Download, Downloaded};
use super::options::HttpOptions;
use super::FILE_SCHEME;
use crate::http::error::{Error, Result};
use crate::report::{self, Unit};
use crate::secret::redact_url;
use crate::store::Store;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Downloads into a store.
pub struct Fetcher {
    pub(super) client: reqwest::Client,
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) opts: HttpOptions,
}

/// Why one source failed, and the requests it took.
pub(super) type SourceFailed = (String, u32);

/// One download in progress: where it goes, what it must be, where it is shown.
pub(super) struct Job<'a> {
    pub(super) store: &'a Store,
    pub(super) d: &'a Download,
    pub(super) bar: &'a dyn report::Progress,
}

impl Fetcher {
    pub fn new(opts: HttpOptions) -> Result<Fetcher> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            .user_agent(concat!("comfystore/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Download {
                what: "client".into(),
                reason: e.to_string(),
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Download {
                what: "runtime".into(),
                reason: e.to_string(),
            })?;
        Ok(Fetcher { client, rt, opts })
    }

    /// Download every item, `jobs` at a time; one result per item, in order.
    pub fn download_all(&self, store: &Store, items: &[Download]) -> Vec<Result<Downloaded>> {
        let total: u64 = items.iter().filter_map(|d| d.expect.size).sum();
        // The total moves with every download's bytes as they come (an item of unknown size
        // is not in it); one item, or items of unknown sizes, have no total ("0 B/0 B, eta 0s"
        // it said) but their own bars.
        let total_bar = report::Total::new(if items.len() > 1 && total > 0 {
            store.reporter().start("total", Some(total), Unit::Transfer)
        } else {
            Box::new(report::Nothing)
        });
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<Downloaded>>>> =
            items.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.opts.jobs.clamp(1, 64).min(items.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let bar = store
                        .reporter()
                        .start(&item.label, item.expect.size, Unit::Transfer);
                    let r = match item.expect.size {
                        Some(size) => {
                            let part = total_bar.part(bar.as_ref());
                            let r = self.download(store, item, &part);
                            part.settle(size);
                            r
                        }
                        None => self.download(store, item, bar.as_ref()),
                    };
                    bar.finish();
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                });
            }
        });
        total_bar.finish();
        results
            .into_iter()
            .map(|m| {
                m.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(Error::Download {
                        what: "?".into(),
                        reason: "a download thread panicked".into(),
                    })
                })
            })
            .collect()
    }

    /// Download one item, trying its sources in order. The source that worked is recorded in
    /// the store.
    pub fn download(
        &self,
        store: &Store,
        d: &Download,
        bar: &dyn report::Progress,
    ) -> Result<Downloaded> {
        let sources = self.sources_to_try(d)?;
        // Held until the download is stored and recorded: gc must not take it meanwhile.
        let _writer = store.lock_shared()?;
        // One process at a time per content; a waiter finds it stored and downloads nothing.
        let _single = match d.lock_key() {
            Some(key) => {
                let lock = store.lock_named(&key)?;
                if let Some(done) = already_stored(store, d)? {
                    return Ok(done);
                }
                Some(lock)
            }
            None => None,
        };
        let job = Job { store, d, bar };
        let mut errors = Vec::new();
        let mut attempts = 0;
        for url in sources {
            let shown = redact_url(url);
            match self.try_one(&job, url) {
                Ok(mut r) => {
                    r.attempts += attempts;
                    // A local mirror is where this machine found it, not a source to lock.
                    if !url.starts_with(FILE_SCHEME) {
                        store.add_source(&r.id, &shown)?;
                    }
                    return Ok(r);
                }
                Err((reason, n)) => {
                    attempts += n;
                    errors.push(source_failed(d, &shown, reason));
                }
            }
        }
        Err(Error::Download {
            what: d.label.clone(),
            reason: errors.join("; "),
        })
    }

    /// The sources this fetcher may use: local mirrors (`file://`) are not the network, so
    /// offline still reads them.
    fn sources_to_try<'d>(&self, d: &'d Download) -> Result<Vec<&'d String>> {
        let sources: Vec<&String> = d
            .sources
            .iter()
            .filter(|u| !self.opts.offline || u.starts_with(FILE_SCHEME))
            .collect();
        let fail = |reason: String| Error::Download {
            what: d.label.clone(),
            reason,
        };
        if self.opts.offline && sources.is_empty() {
            return Err(fail(format!(
                "offline: would download it from {}",
                d.sources
                    .first()
                    .map_or("(no source)".to_string(), |u| redact_url(u))
            )));
        }
        if sources.is_empty() {
            return Err(fail("no source URL is known".into()));
        }
        Ok(sources)
    }

    /// One source: a local file or a URL.
    fn try_one(&self, job: &Job, url: &str) -> std::result::Result<Downloaded, SourceFailed> {
        match url.strip_prefix(FILE_SCHEME) {
            Some(path) => self.try_file(job, Path::new(path)),
            None => self.try_source(job, url),
        }
    }
}

/// The item as the store already holds it (stored by another process while this one waited
/// for the download lock): found by its BLAKE3, else its SHA-256, and checked against the size.
fn already_stored(store: &Store, d: &Download) -> Result<Option<Downloaded>> {
    let id = match (d.expect.blake3, d.expect.sha256) {
        (Some(b3), _) if store.has_object(&b3) => b3,
        (_, Some(sha)) => match store.lookup_sha256(&sha)? {
            Some(id) => id,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let Some(path) = store.find_object(&id, false) else {
        return Ok(None);
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).ok();
    if d.expect.size.is_some_and(|want| Some(want) != size) {
        return Ok(None);
    }
    let sha256 = match d.expect.sha256 {
        Some(sha) => Some(sha),
        None => store.sha256_of(&id)?,
    };
    tracing::info!("{}: stored meanwhile by another process", d.label);
    Ok(Some(Downloaded {
        label: d.label.clone(),
        id,
        sha256: sha256.map(|s| s.hex()).unwrap_or_default(),
        size: size.unwrap_or(0),
        url: "(stored meanwhile by another process)".into(),
        attempts: 0,
        resumed_bytes: 0,
        new: false,
    }))
}

/// A failed source as the final error lists it (warned about at once when more follow).
fn source_failed(d: &Download, shown: &str, reason: String) -> String {
    if d.sources.len() > 1 {
        tracing::warn!("{}: {shown}: {reason}", d.label);
    }
    if shown == d.label {
        reason
    } else {
        format!("{shown}: {reason}")
    }
}
