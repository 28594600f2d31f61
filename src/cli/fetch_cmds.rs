//! Handlers of the commands that get what the store lacks: `add-url`, `fetch`, `verify`,
//! `mirror`.

use super::{open_store, AddUrlArgs, Cli, HttpArgs, SourceArgs, VerifyArgs, EXIT_FAILURE};
use anyhow::{bail, Context, Result};
use comfystore::http::{Download, Expect, Fetcher, HttpOptions};
use comfystore::pipeline::fetch::{FetchOptions, FetchReport};
use comfystore::pipeline::verify::{
    HashedPart, PartState, VerifyOptions, VerifyReport, VerifyState,
};
use comfystore::place::LinkMode;
use comfystore::store::{ObjectId, Sha256};
use std::path::{Path, PathBuf};

/// `verify` exit codes (after e2fsck's: problems fixed, problems left).
pub const EXIT_FIXED: u8 = 3;
pub const EXIT_BROKEN: u8 = 4;

impl SourceArgs {
    pub(crate) fn options(&self) -> Result<FetchOptions> {
        let remote = match self.remote.as_deref().filter(|r| !r.is_empty()) {
            Some(url) => Some(self.remote_gcs.remote(url)?),
            None => None,
        };
        Ok(FetchOptions {
            remote,
            only: self.only,
            mirror_urls: self.mirror_url.clone(),
            mirror_dirs: self.mirror.clone(),
            http: self.http.options(),
            all_wheels: false,
            intact: Vec::new(),
        })
    }
}

impl HttpArgs {
    pub fn options(&self) -> HttpOptions {
        HttpOptions {
            retries: self.retries,
            stall_timeout: self.timeout,
            jobs: self.jobs,
            offline: self.offline,
            connections: self.connections.clamp(1, 32),
            file_roots: Some(self.allow_file.clone()),
            ..comfystore::pipeline::http_env::http_options()
        }
    }
}

pub fn add_url(cli: &Cli, a: &AddUrlArgs) -> Result<u8> {
    let expect = expected(a)?;
    let dest = place_at(a)?;
    let (url, http) = (&a.url, &a.http);
    let store = open_store(cli)?;
    // The URL is the user's own, typed here: a file:// one is read as given.
    let fetcher = Fetcher::new(HttpOptions {
        file_roots: None,
        ..http.options()
    })?;
    let item = Download {
        label: comfystore::secret::redact_url(url),
        sources: vec![url.to_string()],
        expect,
    };
    let got = fetcher
        .download_all(&store, std::slice::from_ref(&item))
        .pop()
        .context("no result")??;
    // Placed beneath the ComfyUI folder through handles that never follow a symlink: a
    // planted `models -> /elsewhere` is refused, not written through.
    let placed = match (&dest, &a.path, &a.comfy) {
        (Some(_), Some(rel), Some(comfy)) => Some(comfystore::place::place_object(
            &store,
            &got.id,
            comfy,
            rel,
            LinkMode::Auto,
        )?),
        _ => None,
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

/// What `--sha256` and `--blake3` promise.
fn expected(a: &AddUrlArgs) -> Result<Expect> {
    Ok(Expect {
        sha256: a
            .sha256
            .as_deref()
            .map(|s| {
                Sha256::from_hex(&s.to_ascii_lowercase())
                    .context("--sha256: expected 64 hex digits")
            })
            .transpose()?,
        blake3: a
            .blake3
            .as_deref()
            .map(|s| {
                s.parse::<ObjectId>()
                    .context("--blake3: expected 64 hex digits")
            })
            .transpose()?,
        size: None,
    })
}

/// Where `--path` places the file in the ComfyUI folder: somewhere nothing is yet.
fn place_at(a: &AddUrlArgs) -> Result<Option<PathBuf>> {
    let Some(p) = &a.path else { return Ok(None) };
    comfystore::store::check_rel_path(p).map_err(|e| anyhow::anyhow!("--path {p:?}: {e}"))?;
    let Some(dir) = &a.comfy else {
        bail!("--path needs the ComfyUI folder: --comfy DIR or $COMFY_HOME");
    };
    let dest = dir.join(p);
    if dest.exists() {
        bail!("{}: already exists", dest.display());
    }
    Ok(Some(dest))
}

pub fn fetch(cli: &Cli, lock: &Path, sources: &SourceArgs, update_lock: bool) -> Result<u8> {
    use comfystore::pipeline::{fetch::fetch_lock, version::complete_models};
    let lockfile = comfystore::lockfile::Lockfile::read(lock)?;
    let store = open_store(cli)?;
    let report = fetch_lock(&store, &lockfile, &sources.options()?)?;
    // Models the lock names by sha256 alone whose file the store now has.
    let completed = complete_models(&store, &lockfile)?;
    let count =
        |l: &comfystore::lockfile::Lockfile| l.models.iter().filter(|m| m.blake3.is_none()).count();
    let (unknown_before, unknown_after) = (count(&lockfile), count(&completed));
    let filled = unknown_before - unknown_after;
    if update_lock && filled > 0 {
        completed.write(lock)?;
    }
    if cli.json {
        let mut v = serde_json::to_value(&report)?;
        if update_lock {
            v["lock_updated"] =
                serde_json::json!({ "blake3_filled": filled, "blake3_unknown": unknown_after });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_fetch(cli, lock, &report);
        if update_lock && filled > 0 {
            eprintln!(
                "{}: wrote the blake3 of {filled} model(s) into the lock",
                lock.display()
            );
        } else if !update_lock && filled > 0 {
            eprintln!(
                "{}: {filled} model(s) named by sha256 alone are in the store; \
                 `fetch --update-lock` writes their blake3 into the lock",
                lock.display()
            );
        }
    }
    Ok(if report.complete() {
        0
    } else {
        super::EXIT_FAILURE
    })
}

/// What a fetch did, for people: one line per item got or missing, then a summary.
fn print_fetch(cli: &Cli, lock: &Path, report: &FetchReport) {
    if let Some(r) = &report.remote {
        println!(
            "pulled {} tree(s) and {} object(s) ({} bytes) from {}",
            r.trees, r.objects, r.bytes, r.remote
        );
    }
    for b in &report.imported {
        println!("imported {}", b.display());
    }
    for t in &report.trees {
        println!(
            "fetched {} {} from {}@{}",
            t.label, t.tree, t.repo, t.commit
        );
    }
    for d in &report.downloaded {
        println!("downloaded {} ({} bytes) from {}", d.label, d.size, d.url);
    }
    for (what, why) in &report.failed {
        eprintln!("missing {what}: {why}");
    }
    if !cli.quiet {
        eprintln!(
            "{}: needed {} item(s) ({} bytes of files), got {} tree(s) and {} file(s), still missing {}",
            lock.display(),
            report.needed.len(),
            report.needed_bytes,
            report.trees.len(),
            report.downloaded.len(),
            report.failed.len()
        );
    }
}

pub fn verify(cli: &Cli, a: &VerifyArgs) -> Result<u8> {
    let (lock, dest, fix) = (&a.lock, &a.dest, a.fix);
    let lockfile = comfystore::lockfile::Lockfile::read(lock)?;
    if !dest.is_dir() {
        bail!("{}: not a folder", dest.display());
    }
    let store = open_store(cli)?;
    let opts = VerifyOptions {
        full: a.full,
        fix,
        fetch: a.sources.options()?,
    };
    let r = comfystore::pipeline::verify::verify(&store, &lockfile, dest, &opts)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_verify(cli, lock, dest, fix, &r);
    }
    Ok(match r.state {
        VerifyState::Clean => 0,
        VerifyState::Fixed => EXIT_FIXED,
        VerifyState::Broken => EXIT_BROKEN,
    })
}

/// What verify found (and fixed), for people: one line per path, then a summary.
fn print_verify(cli: &Cli, lock: &Path, dest: &Path, fix: bool, r: &VerifyReport) {
    if let Some(f) = &r.fetched {
        print_fetch(cli, lock, f);
    }
    let list = |what: &str, v: &[String]| {
        for p in v {
            println!("{what}\t{p}");
        }
    };
    print_by_hash(&r.by_hash);
    list("missing", &r.found.missing);
    list("modified", &r.found.modified);
    list("store-object-changed", &r.found.store_objects_changed);
    list("extra-model", &r.extra_models);
    list("unchecked", &r.unchecked);
    if let Some(after) = &r.after {
        list("still-missing", &after.missing);
        list("still-modified", &after.modified);
    }
    if !cli.quiet {
        let f = &r.found;
        eprintln!(
            "{}: {} entries, {} ok, {} missing, {} modified, {} extra model(s), {} rehashed, {} part(s) checked by hash: {}",
            dest.display(),
            f.entries,
            f.ok,
            f.missing.len(),
            f.modified.len() + f.store_objects_changed.len(),
            r.extra_models.len(),
            f.rehashed,
            r.by_hash.len(),
            match r.state {
                VerifyState::Clean => "clean",
                VerifyState::Fixed => "fixed",
                VerifyState::Broken if fix => "still broken",
                VerifyState::Broken => "broken (--fix restores it)",
            }
        );
    }
}

/// The parts checked by hash that DEST does not match: one line each, with both ids.
fn print_by_hash(parts: &[HashedPart]) {
    for p in parts {
        match (p.state, &p.got) {
            (PartState::Modified, Some(got)) => println!(
                "modified\t{}\ttree differs: expected {}, got {got}",
                p.part, p.expected
            ),
            (PartState::Ok, _) => {}
            _ => println!("missing\t{}", p.part),
        }
    }
}

pub fn mirror(cli: &Cli, lock: &Path, dir: &Path, sources: &SourceArgs) -> Result<u8> {
    let lockfile = comfystore::lockfile::Lockfile::read(lock)?;
    let store = open_store(cli)?;
    let r =
        comfystore::pipeline::mirror::write_mirror(&store, &lockfile, dir, &sources.options()?)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_fetch(cli, lock, &r.fetch);
        if let Some(b) = &r.bundle {
            println!("bundle {} ({} bytes)", b.display(), r.bundle_bytes);
        }
        if !cli.quiet {
            eprintln!(
                "{}: {} file(s) written, {} already there, {} bytes",
                dir.display(),
                r.written,
                r.present,
                r.bytes
            );
        }
    }
    Ok(if r.fetch.complete() {
        0
    } else {
        super::EXIT_FAILURE
    })
}

/// `import-hf-cache [DIR…]`.
pub fn import_hf_cache(cli: &Cli, dirs: &[PathBuf]) -> Result<u8> {
    let hubs: Vec<PathBuf> = if dirs.is_empty() {
        comfystore::pipeline::lock::default_hf_caches()
            .into_iter()
            .filter(|d| d.is_dir())
            .collect()
    } else {
        dirs.to_vec()
    };
    if hubs.is_empty() {
        anyhow::bail!("no Hugging Face hub cache found ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub); name one");
    }
    let store = open_store(cli)?;
    let reports = comfystore::pipeline::hf_cache::import_hf_caches(&store, &hubs)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            for d in &r.damaged {
                eprintln!(
                    "warning: {d}: its bytes do not have the SHA-256 its name says; not stored"
                );
            }
            if !cli.quiet {
                println!(
                    "{}: {} file(s) added ({}), {} already in the store, {} without a source (no snapshot links to them); root {}",
                    r.hub.display(),
                    r.added,
                    indicatif::HumanBytes(r.added_bytes),
                    r.present,
                    r.without_source,
                    r.root
                );
            }
        }
    }
    Ok(if reports.iter().any(|r| !r.damaged.is_empty()) {
        EXIT_FAILURE
    } else {
        0
    })
}
