//! Handlers of `materialize`, `status` and `remove`.

use super::EXIT_FAILURE;
use crate::materialize::{self, LinkMode, LinkPolicy, PrefixRule};
use crate::store::{AnyId, Store};
use anyhow::Result;
use std::path::Path;

pub fn materialize(
    store: &Store,
    tree: &str,
    dest: &Path,
    link: LinkMode,
    rules: Vec<PrefixRule>,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let id = store.resolve(&tree.parse::<AnyId>()?)?;
    let policy = LinkPolicy {
        default: link,
        rules,
    };
    let report = materialize::materialize(store, &id, dest, &policy)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !quiet {
        let methods: Vec<String> = report
            .methods
            .iter()
            .map(|(m, n)| format!("{n} {m:?}").to_lowercase())
            .collect();
        println!(
            "{}: wrote {} entries ({}), {} unchanged, {} removed from the previous version, {} user files kept",
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
    }
    Ok(0)
}

pub fn status(store: &Store, dest: &Path, verify: bool, json: bool) -> Result<u8> {
    let r = materialize::status(store, dest, verify)?;
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
    let r = materialize::remove(store, dest, all)?;
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
