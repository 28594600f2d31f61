//! Handlers of the store commands.

use super::{AddArgs, Cli, RootCommand, EXIT_FAILURE};
use anyhow::{bail, Context, Result};
use comfystore::store::{AddOptions, AnyId, FsckOptions, GcOptions, Node, ObjectId, Root, Store};
use serde_json::json;
use std::io::Write;
use std::path::Path;

pub fn fsck(cli: &Cli, store: &Store, opts: &FsckOptions) -> Result<u8> {
    let report = store.fsck(opts)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            println!("{}\t{}\t{}", p.kind, p.path.display(), p.detail);
        }
        for q in &report.quarantined {
            eprintln!("quarantined: {}", q.display());
        }
        if !cli.quiet {
            eprintln!(
                "checked {} objects ({} bytes) and {} trees: {}",
                report.objects_checked,
                report.bytes_checked,
                report.trees_checked,
                if report.is_clean() {
                    "clean".to_string()
                } else {
                    format!("{} problems", report.problems.len())
                }
            );
        }
    }
    Ok(if report.is_clean() { 0 } else { EXIT_FAILURE })
}

pub fn gc(store: &Store, opts: &GcOptions, json: bool) -> Result<u8> {
    let report = store.gc(opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if opts.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        println!(
            "{verb} {} objects and {} trees ({} bytes); kept {} live objects and {} live trees from {} roots; {} unreachable but younger than the grace period",
            report.deleted_objects, report.deleted_trees, report.freed_bytes,
            report.live_objects, report.live_trees, report.roots, report.kept_young
        );
        for item in &report.would_free {
            println!(
                "would delete {} {} ({} bytes): {}",
                item.kind, item.id, item.size, item.why
            );
        }
        for r in &report.dangling_roots {
            eprintln!("warning: root {r:?} names ids the store does not have");
        }
    }
    Ok(0)
}

pub fn rebuild_index(store: &Store, json: bool) -> Result<u8> {
    let (index_path, stats) = store
        .rebuild_index()?
        .context("the store was opened without an index")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "rebuilt {}: {} objects, {} trees",
            index_path.display(),
            stats.objects,
            stats.trees
        );
    }
    Ok(0)
}

pub fn export(cli: &Cli, store: &Store, ids: &[String], output: &Path) -> Result<u8> {
    let ids = resolve_all(store, ids)?;
    let report = if output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        store.export(&ids, &mut lock)?
    } else {
        store.export_to_file(&ids, output)?
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet {
        eprintln!(
            "exported {} trees and {} objects ({} bytes)",
            report.trees, report.objects, report.bytes
        );
    }
    Ok(0)
}

pub fn import(
    cli: &Cli,
    store: &Store,
    file: &Path,
    dry_run: bool,
    root: Option<&str>,
) -> Result<u8> {
    let report = if file.as_os_str() == "-" {
        store.import_rooted(
            &mut std::io::stdin().lock(),
            Path::new("(stdin)"),
            dry_run,
            root,
        )?
    } else {
        let mut f =
            std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
        store.import_rooted(&mut f, file, dry_run, root)?
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report.roots {
            println!("{r}");
        }
        if !cli.quiet {
            let verb = if dry_run { "verified" } else { "imported" };
            eprintln!(
                "{verb} {} trees and {} objects ({} new, {} bytes)",
                report.trees, report.objects, report.new_objects, report.bytes
            );
        }
    }
    Ok(0)
}

pub(super) fn resolve_all(store: &Store, ids: &[String]) -> Result<Vec<ObjectId>> {
    ids.iter()
        .map(|s| Ok(store.resolve(&s.parse::<AnyId>()?)?))
        .collect()
}

pub fn add(store: &Store, args: &AddArgs, json: bool) -> Result<u8> {
    let opts = AddOptions {
        exclude: args.exclude.clone(),
        exclude_names: args.exclude_name.clone(),
        tree_sha256: args.sha256,
        ..Default::default()
    };
    // Held until the root is written: gc must not collect what we add before it is rooted.
    let _writer = store.lock_shared()?;
    let mut reports = Vec::new();
    for path in &args.paths {
        let report = store.add_path(path, &opts)?;
        if !json {
            println!("{}\t{}", report.id, path.display());
        }
        reports.push(json!({ "path": path, "report": report }));
    }
    if let Some(name) = &args.root {
        let ids = reports
            .iter()
            .filter_map(|r| r["report"]["id"].as_str().and_then(|s| s.parse().ok()))
            .collect();
        store.add_root(
            name,
            &Root {
                ids,
                path: None,
                ..Default::default()
            },
        )?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(0)
}

pub fn cat(store: &Store, id: &str) -> Result<u8> {
    let id = store.resolve(&id.parse::<AnyId>()?)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let res = if store.has_tree(&id) {
        out.write_all(&store.tree_bytes(&id)?)
    } else {
        let mut f = store.open_object(&id)?;
        std::io::copy(&mut f, &mut out).map(|_| ())
    };
    match res.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(0),
    }
}

pub fn ls(store: &Store, id: &str, json: bool) -> Result<u8> {
    let id = store.resolve(&id.parse::<AnyId>()?)?;
    if !store.has_tree(&id) {
        bail!("{id} is not a tree (use `comfystore cat` for objects)");
    }
    let manifest = store.read_tree(&id)?;
    if json {
        let rows: Vec<_> = manifest
            .entries
            .iter()
            .map(|e| match &e.node {
                Node::File { exec, size, id } => json!({"path": e.path, "kind": if *exec {"exec"} else {"file"}, "size": size, "id": id}),
                Node::Symlink { target } => json!({"path": e.path, "kind": "symlink", "target": target}),
                Node::Dir => json!({"path": e.path, "kind": "dir"}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for e in &manifest.entries {
        let line = match &e.node {
            Node::File { exec, size, id } => format!(
                "{}\t{size}\t{id}\t{}",
                if *exec { "exec" } else { "file" },
                e.path
            ),
            Node::Symlink { target } => format!("symlink\t-\t-\t{} -> {target}", e.path),
            Node::Dir => format!("dir\t-\t-\t{}", e.path),
        };
        if writeln!(out, "{line}").is_err() {
            break; // reader went away (e.g. `| head`)
        }
    }
    Ok(0)
}

pub fn stats(store: &Store, json: bool) -> Result<u8> {
    let (index_path, s) = store
        .index_stats()?
        .context("the store was opened without an index")?;
    let ratio = if s.stored_bytes > 0 {
        s.logical_bytes_added as f64 / s.stored_bytes as f64
    } else {
        1.0
    };
    if json {
        let mut v = serde_json::to_value(s)?;
        v["dedup_ratio"] = json!(ratio);
        v["store"] = json!(store.root());
        v["index"] = json!(index_path);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("store               {}", store.root().display());
        println!("objects             {}", s.objects);
        println!("trees               {}", s.trees);
        println!("stored bytes        {}", s.stored_bytes);
        println!("logical bytes added {}", s.logical_bytes_added);
        println!("dedup ratio         {ratio:.2}");
    }
    Ok(0)
}

pub fn root(store: &Store, cmd: &RootCommand, json: bool) -> Result<u8> {
    match cmd {
        RootCommand::Add { name, ids } => {
            let ids = resolve_all(store, ids)?;
            store.add_root(
                name,
                &Root {
                    ids,
                    path: None,
                    ..Default::default()
                },
            )?;
        }
        RootCommand::Rm { name } => {
            if !store.remove_root(name)? {
                bail!("no root named {name:?}");
            }
        }
        RootCommand::Ls => {
            let roots = store.list_roots()?;
            if json {
                let rows: Vec<_> = roots
                    .iter()
                    .map(|(n, r)| json!({"name": n, "ids": r.ids, "path": r.path}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for (n, r) in roots {
                    let ids: Vec<String> = r.ids.iter().map(|i| i.to_string()).collect();
                    println!("{n}\t{}", ids.join(" "));
                }
            }
        }
    }
    Ok(0)
}
