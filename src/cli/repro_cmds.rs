//! `repro`: is a version the same on two machines, or in two folders?

use super::{open_store, Cli, EXIT_FAILURE, EXIT_USAGE};
use anyhow::Result;
use clap::Subcommand;
use comfystore::lockfile::diff::Change;
use comfystore::pipeline::repro::{compare, version_of, Kind};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum ReproCommand {
    /// Compare two versions by what decides their bytes: exit 0 when the same, 1 when they
    /// differ, 2 on error (like diff).
    ///
    /// A and B are each a lockfile or a folder: a ComfyUI install or a materialized DEST, which
    /// is scanned as `lock` scans it (its parts go into the store; no lockfile is written).
    /// Compared: ComfyUI's and each node's commit (where both sides have one) and tree id, the
    /// Python version, packages and environment id, and every model's hash. Model sources and
    /// repo remotes are left out: they change no byte.
    #[command(
        after_help = "Examples:\n  comfystore repro env lockfiles/comfy-v1.lock.json /workspace/ComfyUI   # did the install drift from its lock?\n  comfystore repro env /workspace/v1 /workspace/v1-rebuilt\n\nLines read: + added, - removed, ~ changed (moved, tree, upgraded, …), with from -> to."
    )]
    Env { a: PathBuf, b: PathBuf },
}

/// `repro env A B`.
pub fn env(cli: &Cli, a: &Path, b: &Path) -> Result<u8> {
    let side = |p: &Path| version_of(p, || open_store(cli));
    let (ka, la, kb, lb) = match (side(a), side(b)) {
        (Ok((ka, la)), Ok((kb, lb))) => (ka, la, kb, lb),
        // Like diff(1): trouble is 2, so that 1 always means "they differ".
        (Err(e), _) | (_, Err(e)) => {
            if cli.json {
                println!("{}", json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let changes = compare(&la, &lb);
    if cli.json {
        let v = json!({
            "equal": changes.is_empty(),
            "a": { "path": a, "kind": ka },
            "b": { "path": b, "kind": kb },
            "changes": changes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_changes(&changes, ka, kb);
    }
    Ok(if changes.is_empty() { 0 } else { EXIT_FAILURE })
}

/// One line per difference; a summary on stderr when they are the same.
fn print_changes(changes: &[Change], ka: Kind, kb: Kind) {
    if changes.is_empty() {
        let kind = |k| if k == Kind::Lock { "lock" } else { "install" };
        eprintln!("same version ({} vs {})", kind(ka), kind(kb));
    }
    for c in changes {
        let fromto = c
            .from
            .as_ref()
            .zip(c.to.as_ref())
            .map(|(f, t)| format!(": {f} -> {t}"));
        println!(
            "{} {} {} {}{}",
            c.sign(),
            c.part,
            c.name,
            c.change,
            fromto.unwrap_or_default()
        );
    }
}
