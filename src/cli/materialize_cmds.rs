//! Handlers of `materialize`, `status` and `remove`.

use super::MaterializeArgs;
use super::EXIT_FAILURE;
use anyhow::{Context, Result};
use comfystore::lockfile::Lockfile;
use comfystore::pipeline::materialize::{self, LockOptions};
use comfystore::place::{self, LinkPolicy, MaterializeReport};
use comfystore::store::{AnyId, Store};
use std::path::Path;

pub fn materialize(store: &Store, a: &MaterializeArgs, json: bool, quiet: bool) -> Result<u8> {
    let as_lock = Path::new(&a.source);
    if as_lock.is_file() {
        let lock = Lockfile::read(as_lock)?;
        let opts = LockOptions {
            venv: a.venv.clone(),
            models_dir: a.models_dir.clone(),
            link: a.link,
            venv_link: a.venv_link,
            models_link: a.models_link,
            rules: a.link_prefix.clone(),
            python: a.python.clone(),
            installer: a.installer,
            fetch: a.sources.options()?,
            force: a.force,
        };
        let report = materialize::materialize_lock(store, &lock, &a.dest, &opts)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else if !quiet {
            if !report.fetched.downloaded.is_empty() || !report.fetched.trees.is_empty() {
                eprintln!(
                    "fetched {} files and {} trees",
                    report.fetched.downloaded.len(),
                    report.fetched.trees.len()
                );
            }
            if let Some(env) = &report.env {
                eprintln!(
                    "environment {}: {}",
                    env.tree,
                    match env.installer {
                        Some(i) => format!("installed now with {i} (later versions link it)"),
                        None => "from the store".into(),
                    }
                );
            }
            print_report(&report.version);
            for r in report.venv.iter().chain(report.models.iter()) {
                print_report(r);
            }
            if let Some(py) = &report.python {
                let venv = a.venv.clone().unwrap_or_else(|| a.dest.join("venv"));
                eprintln!(
                    "run: {}/bin/python {}/main.py   (base interpreter {})",
                    venv.display(),
                    a.dest.display(),
                    py.display()
                );
            }
        }
        return Ok(0);
    }
    let id = store.resolve(
        &a.source
            .parse::<AnyId>()
            .with_context(|| format!("{}: neither a lockfile nor a tree id", a.source))?,
    )?;
    let policy = LinkPolicy {
        default: a.link,
        rules: a.link_prefix.clone(),
    };
    let report = place::materialize_force(store, &id, &a.dest, &policy, a.force)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !quiet {
        print_report(&report);
    }
    Ok(0)
}

fn print_report(report: &MaterializeReport) {
    let methods: Vec<String> = report
        .methods
        .iter()
        .map(|(m, n)| format!("{n} {m:?}").to_lowercase())
        .collect();
    println!(
        "{}: wrote {} entries ({}), {} unchanged, {} removed from the previous version, {} other files (in no version) left alone",
        report.dest.display(),
        report.written,
        if methods.is_empty() { "none".to_string() } else { methods.join(", ") },
        report.unchanged,
        report.removed,
        report.extra
    );
    for p in &report.kept_modified {
        eprintln!("kept (modified, not in the new tree): {p}");
    }
    for k in &report.kept_edits {
        eprintln!(
            "kept your edit of {} as {} (--force; the new version's file replaced it)",
            k.path, k.kept_as
        );
    }
}

pub fn status(store: &Store, dest: &Path, verify: bool, json: bool) -> Result<u8> {
    let r = place::status(store, dest, verify)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        if !r.complete {
            println!("incomplete\t(materialize was interrupted; run it again)");
        }
        for p in &r.missing {
            println!("missing\t{p}");
        }
        for p in &r.modified {
            println!("modified\t{p}");
        }
        for p in &r.store_objects_changed {
            println!("store-object-changed\t{p}\t(written through a link: run `comfystore fsck --repair`)");
        }
        for p in &r.extra {
            println!("extra\t{p}");
        }
    }
    Ok(if r.is_clean() { 0 } else { EXIT_FAILURE })
}

pub fn remove(store: &Store, dest: &Path, all: bool, json: bool) -> Result<u8> {
    let r = place::remove(store, dest, all)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for p in &r.kept {
            println!("kept\t{p}");
        }
        eprintln!(
            "removed {} entries and {} directories{}",
            r.removed_entries,
            r.removed_dirs,
            if r.dest_removed {
                format!("; {} is gone", dest.display())
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}
