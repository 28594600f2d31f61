//! Handlers of the download commands (`add-url`).

use super::{open_store, Cli, HttpArgs};
use crate::fetch::{Download, Expect, Fetcher, HttpOptions};
use crate::materialize::{self, LinkMode};
use crate::store::{ObjectId, Sha256};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

impl HttpArgs {
    pub fn options(&self) -> HttpOptions {
        HttpOptions {
            retries: self.retries,
            stall_timeout: self.timeout,
            jobs: self.jobs,
            offline: self.offline,
            ..HttpOptions::default()
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn add_url(
    cli: &Cli,
    url: &str,
    sha256: Option<&str>,
    blake3: Option<&str>,
    path: Option<&str>,
    comfy_dir: Option<PathBuf>,
    http: &HttpArgs,
) -> Result<u8> {
    let expect = Expect {
        sha256: sha256
            .map(|s| {
                Sha256::from_hex(&s.to_ascii_lowercase())
                    .context("--sha256: expected 64 hex digits")
            })
            .transpose()?,
        blake3: blake3
            .map(|s| {
                s.parse::<ObjectId>()
                    .context("--blake3: expected 64 hex digits")
            })
            .transpose()?,
        size: None,
    };
    let dest = match path {
        Some(p) => {
            crate::store::check_rel_path(p).map_err(|e| anyhow::anyhow!("--path {p:?}: {e}"))?;
            let Some(dir) = comfy_dir else {
                bail!("--path needs the ComfyUI folder: --comfy DIR or $COMFY_HOME");
            };
            let dest = dir.join(p);
            if dest.exists() {
                bail!("{}: already exists", dest.display());
            }
            Some(dest)
        }
        None => None,
    };
    let store = open_store(cli)?;
    let fetcher = Fetcher::new(http.options())?;
    let item = Download {
        label: crate::lock::redact_url(url),
        sources: vec![url.to_string()],
        expect,
    };
    let got = fetcher
        .download_all(&store, std::slice::from_ref(&item))
        .pop()
        .context("no result")??;
    let placed = match &dest {
        Some(d) => Some(materialize::place_object(
            &store,
            &got.id,
            d,
            LinkMode::Auto,
        )?),
        None => None,
    };
    if cli.json {
        let mut v = serde_json::to_value(&got)?;
        if let Some(d) = &dest {
            v["path"] = serde_json::json!(d);
            v["placed"] = serde_json::json!(format!("{:?}", placed).to_lowercase());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}\t{}", got.id, got.url);
        if let Some(d) = &dest {
            if !cli.quiet {
                eprintln!("placed at {}", d.display());
            }
        }
    }
    Ok(0)
}

pub fn fetch(
    cli: &Cli,
    lock: &Path,
    only: Option<crate::fetch::Part>,
    mirrors: &[String],
    http: &HttpArgs,
) -> Result<u8> {
    let lockfile = crate::lock::Lockfile::read(lock)?;
    let store = open_store(cli)?;
    let report = crate::fetch::fetch_lock(&store, &lockfile, only, mirrors, http.options())?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report.downloaded {
            println!("downloaded {} ({} bytes) from {}", d.label, d.size, d.url);
        }
        for (what, why) in &report.failed {
            eprintln!("missing {what}: {why}");
        }
        if !cli.quiet {
            eprintln!(
                "{}: needed {} item(s) ({} bytes of models), downloaded {}, still missing {}",
                lock.display(),
                report.needed.len(),
                report.needed_bytes,
                report.downloaded.len(),
                report.failed.len()
            );
        }
    }
    Ok(if report.complete() {
        0
    } else {
        super::EXIT_FAILURE
    })
}
