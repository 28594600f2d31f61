//! Where objects can be downloaded from: URL records kept beside the objects.
//!
//! `lock` writes the sources it learns (from `--sources`, Hugging Face caches) and later
//! downloads add theirs, so the next `lock` of the same bytes knows a URL. Each (object, URL)
//! pair is its own small file, `sources/<2 hex>/<64 hex>.<16 hex of BLAKE3(url)>`, so concurrent
//! writers never lose each other's records and adding a known URL is a no-op. A source is a
//! hint: the bytes behind a URL are always verified against the object id.

use super::durable;
use super::id::ObjectId;
use super::Store;
use crate::store::error::{IoContext, Result};
use std::fs;
use std::io::Write;
use std::path::PathBuf;

impl Store {
    fn sources_shard(&self, id: &ObjectId) -> PathBuf {
        self.root().join("sources").join(&id.hex()[..2])
    }

    /// Remember that `id` can be downloaded from `url`.
    pub fn add_source(&self, id: &ObjectId, url: &str) -> Result<()> {
        let shard = self.sources_shard(id);
        let key = blake3::hash(url.as_bytes()).to_hex();
        let dest = shard.join(format!("{}.{}", id.hex(), &key[..16]));
        if dest.exists() {
            return Ok(());
        }
        super::durable::create_dirs(&shard).ctx("create", &shard)?;
        let (mut f, tmp) = self.create_temp()?;
        if let Err(e) = f
            .write_all(format!("{url}\n").as_bytes())
            .ctx("write", &tmp)
        {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        drop(f);
        durable::publish_no_replace(&tmp, &dest)?;
        Ok(())
    }

    /// The URLs recorded for `id`, sorted (so locks that use them are deterministic).
    pub fn sources_of(&self, id: &ObjectId) -> Result<Vec<String>> {
        let shard = self.sources_shard(id);
        let prefix = format!("{}.", id.hex());
        let entries = match fs::read_dir(&shard) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("list", &shard),
        };
        let mut urls = Vec::new();
        for e in entries {
            let e = e.ctx("list", &shard)?;
            if !e.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let text = fs::read_to_string(e.path()).ctx("read", &e.path())?;
            let url = text.trim();
            if !url.is_empty() {
                urls.push(url.to_string());
            }
        }
        urls.sort();
        urls.dedup();
        Ok(urls)
    }

    /// Every source record: its file, and the object it is about (`None` for a stray file).
    fn source_records(&self) -> Result<Vec<(PathBuf, Option<ObjectId>)>> {
        let dir = self.root().join("sources");
        let mut out = Vec::new();
        let shards = match fs::read_dir(&dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).ctx("list", &dir),
        };
        for shard in shards {
            let shard = shard.ctx("list", &dir)?.path();
            if !shard.is_dir() {
                continue;
            }
            for e in fs::read_dir(&shard).ctx("list", &shard)? {
                let e = e.ctx("list", &shard)?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(durable::TEMP_PREFIX) {
                    continue;
                }
                let id = name.split('.').next().and_then(ObjectId::from_hex);
                out.push((e.path(), id));
            }
        }
        Ok(out)
    }

    /// Source records whose object is gone (gc removes them with the object).
    pub(crate) fn orphan_sources(&self) -> Result<Vec<PathBuf>> {
        Ok(self
            .source_records()?
            .into_iter()
            .filter(|(_, id)| id.is_none_or(|id| !self.has_object(&id)))
            .map(|(p, _)| p)
            .collect())
    }

    /// Every (object, URL) the store knows, for objects it holds: how `pin --offline` finds
    /// the wheels it has by their file names.
    pub fn all_sources(&self) -> Result<Vec<(ObjectId, String)>> {
        let mut out = Vec::new();
        for (path, id) in self.source_records()? {
            let Some(id) = id.filter(|id| self.has_object(id)) else {
                continue;
            };
            let text = fs::read_to_string(&path).ctx("read", &path)?;
            if !text.trim().is_empty() {
                out.push((id, text.trim().to_string()));
            }
        }
        out.sort();
        Ok(out)
    }
}
