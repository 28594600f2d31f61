//! `fetch LOCK`: make the store complete for a lockfile.
//!
//! Models the store lacks are downloaded from their sources, in parallel, verified against the
//! lock's SHA-256, BLAKE3 and size. Trees the store lacks are listed: rebuilding them from git
//! (or a mirror) is the next step of this module.

use super::http::{Download, Downloaded, Expect, Fetcher, HttpOptions};
use crate::error::Result;
use crate::lock::Lockfile;
use crate::store::{Root, Store};
use serde::Serialize;

/// Which part of a lock to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Models,
    Nodes,
    Python,
}

/// What `fetch` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FetchReport {
    /// Everything the store lacked, as `part name`.
    pub needed: Vec<String>,
    pub needed_bytes: u64,
    pub downloaded: Vec<Downloaded>,
    /// (what, why) of everything still missing.
    pub failed: Vec<(String, String)>,
}

impl FetchReport {
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Fetch what `lock` names and the store lacks, then pin it with the root `lock/<tag>`; `only`
/// limits it to one part. `mirrors` are
/// URL prefixes tried before a model's own sources (`<mirror>/<sha256>`).
pub fn fetch_lock(
    store: &Store,
    lock: &Lockfile,
    only: Option<Part>,
    mirrors: &[String],
    http: HttpOptions,
) -> Result<FetchReport> {
    let mut report = FetchReport::default();
    let wants = |p: Part| only.is_none_or(|o| o == p);
    if wants(Part::Nodes) {
        let mut trees = vec![("comfyui".to_string(), lock.comfyui.tree)];
        for n in &lock.custom_nodes {
            trees.push((format!("custom_nodes/{}", n.name), n.tree));
        }
        for (name, tree) in trees {
            if let Some(t) = tree.filter(|t| !store.has_tree(t)) {
                report.needed.push(format!("tree {name}"));
                report
                    .failed
                    .push((name, format!("tree {t} is not in the store; fetching trees from git is not implemented yet: import a bundle")));
            }
        }
    }
    if wants(Part::Python) {
        if let Some(t) = lock
            .python
            .as_ref()
            .and_then(|p| p.tree)
            .filter(|t| !store.has_tree(t))
        {
            report.needed.push("tree python".into());
            report.failed.push((
                "python".into(),
                format!("environment tree {t} is not in the store; import a bundle"),
            ));
        }
    }
    let mut items: Vec<Download> = Vec::new();
    if wants(Part::Models) {
        let mut seen = std::collections::HashSet::new();
        for m in lock.models.iter().filter(|m| !store.has_object(&m.blake3)) {
            report.needed.push(format!("model {}", m.path));
            // Identical models (same content at two paths) are downloaded once.
            if !seen.insert(m.blake3) {
                continue;
            }
            report.needed_bytes += m.size;
            let mut sources: Vec<String> = mirrors
                .iter()
                .map(|p| format!("{}/{}", p.trim_end_matches('/'), m.sha256.hex()))
                .collect();
            sources.extend(m.sources.iter().cloned());
            items.push(Download {
                label: m.path.clone(),
                sources,
                expect: Expect {
                    sha256: Some(m.sha256),
                    blake3: Some(m.blake3),
                    size: Some(m.size),
                },
            });
        }
    }
    if !items.is_empty() {
        let fetcher = Fetcher::new(http)?;
        for (item, r) in items.iter().zip(fetcher.download_all(store, &items)) {
            match r {
                Ok(d) => report.downloaded.push(d),
                Err(e) => report.failed.push((item.label.clone(), e.to_string())),
            }
        }
    }
    // Pin what the store now holds, keeping the lockfile path a `lock` run recorded.
    let ids: Vec<_> = lock
        .store_ids()
        .into_iter()
        .filter(|id| store.has_tree(id) || store.has_object(id))
        .collect();
    if !ids.is_empty() {
        let name = format!("lock/{}", lock.tag);
        let path = store
            .list_roots()?
            .into_iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, r)| r.path);
        store.add_root(&name, &Root { ids, path })?;
    }
    Ok(report)
}
