//! Handlers of `lock`, `diff`, `show`, `import-snapshot` and `export-snapshot`.

use super::{open_store, Cli, LockArgs, EXIT_FAILURE, EXIT_USAGE};
use anyhow::{Context, Result};
use comfystore::lockfile::{detect, diff, snapshot, Lockfile};
use comfystore::pipeline::lock::{self, LockOptions};
use comfystore::store::{ObjectId, Root, Store, StoreOptions};
use indicatif::HumanBytes;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn lock(cli: &Cli, a: &LockArgs) -> Result<u8> {
    let store = open_store(cli)?;
    let out = a.output.clone().unwrap_or_else(|| {
        Path::new(lock::LOCKFILES_DIR).join(format!("comfy-{}.lock.json", a.tag))
    });
    let root = format!("lock/{}", a.tag);
    let abs = std::path::absolute(&out).unwrap_or(out.clone());
    let (lockfile, report) = lock::lock(&store, &lock_options(a, &out)?)?;
    let previous = if a.no_root {
        None
    } else {
        check_tag_root(&store, &root, &abs, &lockfile.store_ids(), a.force)?
    };
    let gaps = lockfile.not_portable();
    if a.portable && !gaps.is_empty() {
        anyhow::bail!(
            "not portable, so {} was not written; {} item(s) cannot be rebuilt from the lock's own sources:\n  {}",
            out.display(),
            gaps.len(),
            gaps.join("\n  ")
        );
    }
    let unchanged = !lockfile.write(&out)?;
    if !a.no_root {
        if let Some(old) = &previous {
            let new: std::collections::HashSet<_> = lockfile.store_ids().into_iter().collect();
            let dropped = old.ids.iter().filter(|id| !new.contains(id)).count();
            if dropped > 0 {
                eprintln!(
                    "warning: root {root} replaced: it kept {dropped} id(s) the new lock does not name (its lockfile {} {}); gc may free them",
                    old.path.as_deref().unwrap_or(Path::new("(none recorded)")).display(),
                    match old.path.as_deref() {
                        Some(p) if p == abs.as_path() => "was rewritten",
                        Some(p) if p.is_file() => "still exists: replaced by --force",
                        Some(_) => "is gone",
                        None => "",
                    },
                );
            }
        }
        store.add_root(
            &root,
            &Root {
                ids: lockfile.store_ids(),
                path: Some(abs),
                ..Default::default()
            },
        )?;
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "lockfile": out,
                "unchanged": unchanged,
                "root": (!a.no_root).then_some(root),
                "report": report,
            }))?
        );
    } else {
        print_lock_report(cli, &report);
        println!(
            "{}{}",
            out.display(),
            if unchanged { " (unchanged)" } else { "" }
        );
    }
    Ok(0)
}

/// The root `lock/TAG` as it is before this run. Refused (no lockfile written, the root
/// unchanged) when it keeps another lockfile that still exists and ids the new lock does not
/// name, unless `force`: a tag reused for another install must never silently drop the old
/// version's protection from gc.
fn check_tag_root(
    store: &Store,
    root: &str,
    out: &Path,
    new: &[ObjectId],
    force: bool,
) -> Result<Option<Root>> {
    let Some(old) = store.read_root(root)? else {
        return Ok(None);
    };
    let drops = old.ids.iter().any(|id| !new.contains(id));
    if let Some(other) = old.path.as_deref().filter(|p| *p != out && p.is_file()) {
        if drops && !force {
            anyhow::bail!(
                "root {root} keeps {} (another lockfile, still there); locking into {} would drop its protection from gc. Give another --tag, or --force to replace the root",
                other.display(),
                out.display()
            );
        }
    }
    Ok(Some(old))
}

/// What `lock` scans and how, from its flags; `out` is where the lock goes.
fn lock_options(a: &LockArgs, out: &Path) -> Result<LockOptions> {
    let comfy_dir = a
        .comfy_dir
        .clone()
        .context("no ComfyUI folder: give COMFY_DIR or set $COMFY_HOME")?;
    Ok(LockOptions {
        comfy_dir,
        tag: a.tag.clone(),
        venv: a.venv.clone(),
        no_python: a.no_python,
        drop_python: a.drop_python,
        models_dir: a.models_dir.clone(),
        sources: a.sources.clone(),
        hf_caches: a.hf_cache.clone(),
        adopt: a.adopt,
        pin_wheels: (!a.no_pin_wheels).then(|| comfystore::python::PinOptions {
            index_url: a.index_url.clone(),
            extra_index_urls: a.extra_index_url.clone(),
            wheels_dirs: a.wheels_dir.clone(),
            offline: a.offline,
            http: comfystore::pipeline::http_env::http_options(),
            ..Default::default()
        }),
        output: Some(out.to_path_buf()),
    })
}

/// Warnings, and (unless quiet) a summary of what was locked.
fn print_lock_report(cli: &Cli, report: &lock::LockReport) {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if cli.quiet {
        return;
    }
    let adoption: Vec<String> = report
        .model_adoption
        .iter()
        .map(|(how, n)| format!("{n} {how}"))
        .collect();
    eprintln!(
        "{} nodes, {} packages, {} models ({}; {}); {} files hashed, {} unchanged by stat",
        report.custom_nodes,
        report.packages,
        report.models,
        HumanBytes(report.model_bytes),
        if adoption.is_empty() {
            "none".into()
        } else {
            adoption.join(", ")
        },
        report.hashed_files,
        report.cached_files,
    );
}

pub fn diff(cli: &Cli, a: &Path, b: &Path) -> Result<u8> {
    match (Lockfile::read(a), Lockfile::read(b)) {
        (Ok(la), Ok(lb)) => {
            let changes = diff::diff(&la, &lb);
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "equal": changes.is_empty(), "changes": changes })
                    )?
                );
            } else {
                for c in &changes {
                    let values = match (&c.from, &c.to) {
                        (Some(f), Some(t)) => format!(": {f} -> {t}"),
                        _ => String::new(),
                    };
                    println!("{} {} {} {}{}", c.sign(), c.part, c.name, c.change, values);
                }
            }
            Ok(if changes.is_empty() { 0 } else { EXIT_FAILURE })
        }
        // Like diff(1): trouble is 2, so that 1 always means "they differ".
        (Err(e), _) | (_, Err(e)) => {
            if cli.json {
                println!("{}", json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            Ok(EXIT_USAGE)
        }
    }
}

pub fn import_snapshot(
    cli: &Cli,
    path: &Path,
    tag: &str,
    output: Option<&Path>,
    comfyui_repo: Option<&str>,
    resolve_refs: bool,
) -> Result<u8> {
    comfystore::lockfile::check_tag(tag).map_err(anyhow::Error::msg)?;
    let mut imported = detect::import_file(path, tag, comfyui_repo)?;
    if resolve_refs {
        comfystore::pipeline::import::resolve_refs(&mut imported)
            .with_context(|| format!("{}: --resolve-refs", path.display()))?;
    }
    let detect::Imported {
        format,
        lock: lockfile,
        warnings,
        ..
    } = imported;
    if !cli.json && !cli.quiet {
        eprintln!("{}: read as a {format}", path.display());
    }
    let out = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("lockfiles/comfy-{tag}.lock.json")));
    lockfile.write(&out)?;
    report_warnings(cli.json, &out, &format.to_string(), &warnings)?;
    Ok(0)
}

/// What `export-snapshot` writes: the two files ComfyUI-Manager saves and restores a
/// snapshot from, or comfy-cli's build definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotFormat {
    Json,
    Yaml,
    /// comfy-cli's build definition (`distribution-definition/0`, YAML): models with sha256,
    /// size and source.
    ComfyBuild,
}

pub fn export_snapshot(
    lock: &Path,
    output: Option<&Path>,
    format: Option<SnapshotFormat>,
) -> Result<u8> {
    let lockfile = Lockfile::read(lock)?;
    let mut warnings = Vec::new();
    let name = output
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let yaml_name = name.ends_with(".yaml") || name.ends_with(".yml");
    let format = format.unwrap_or(if name.starts_with("comfy-build.") && yaml_name {
        SnapshotFormat::ComfyBuild
    } else if yaml_name {
        SnapshotFormat::Yaml
    } else {
        SnapshotFormat::Json
    });
    let bytes = match format {
        SnapshotFormat::ComfyBuild => {
            let d = comfystore::lockfile::comfy_build::export(&lockfile, &mut warnings);
            serde_saphyr::to_string(&d)
                .context("write the build definition as YAML")?
                .into_bytes()
        }
        SnapshotFormat::Yaml => snapshot::export(&lockfile, &mut warnings).to_yaml(),
        SnapshotFormat::Json => snapshot::export(&lockfile, &mut warnings).to_json(),
    };
    match output {
        Some(p) if p.as_os_str() != "-" => comfystore::store::write_file_atomic(p, &bytes, 0o644)?,
        _ => std::io::stdout().write_all(&bytes)?,
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

fn report_warnings(json: bool, out: &Path, format: &str, warnings: &[String]) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "lockfile": out, "format": format, "warnings": warnings })
            )?
        );
    } else {
        for w in warnings {
            eprintln!("warning: {w}");
        }
        println!("{}", out.display());
    }
    Ok(())
}

/// A readable summary, and what the store would need to download.
pub fn show(cli: &Cli, path: &Path) -> Result<u8> {
    let l = Lockfile::read(path)?;
    // Only look at an existing store: `show` must not create one.
    let dir = cli.store.clone().unwrap_or_else(super::default_store_dir);
    let store = if dir.join(comfystore::store::MARKER).exists() {
        Some(Store::open(&dir, &StoreOptions::default())?)
    } else {
        None
    };
    let present = Present::of(&l, store.as_ref())?;
    if cli.json {
        show_json(path, &l, &present)?;
    } else {
        show_text(path, &l, &present);
    }
    Ok(0)
}

/// What of a lock the store holds (nothing, without a store).
struct Present<'l> {
    comfyui: bool,
    nodes_missing: Vec<&'l str>,
    models_missing: Vec<&'l comfystore::lockfile::Model>,
    model_bytes: u64,
    missing_bytes: u64,
    /// The lock's own environment tree, or one installed earlier for the same wheels.
    env_in_store: bool,
    wheels_missing: Vec<String>,
}

impl<'l> Present<'l> {
    fn of(l: &'l Lockfile, store: Option<&Store>) -> Result<Present<'l>> {
        // A snapshot lock names no trees: the one `fetch` recorded for its repo and commit
        // stands in.
        let has_tree = |id: &Option<ObjectId>,
                        repo: &Option<String>,
                        commit: &Option<String>,
                        excludes: &[String]|
         -> Result<bool> {
            let Some(s) = store else { return Ok(false) };
            let tree = comfystore::pipeline::version::source_tree(
                s,
                *id,
                repo.as_deref(),
                commit.as_deref(),
                excludes,
            )?;
            Ok(tree.is_some_and(|t| s.has_tree(&t)))
        };
        let has_obj = |id: &ObjectId| store.is_some_and(|s| s.has_object(id));
        let mut nodes_missing = Vec::new();
        for n in &l.custom_nodes {
            let present = match n.file {
                Some(f) => has_obj(&f),
                None => has_tree(&n.tree, &n.repo, &n.commit, &[])?,
            };
            if !present {
                nodes_missing.push(n.name.as_str());
            }
        }
        let has_model = |m: &comfystore::lockfile::Model| match m.blake3 {
            Some(id) => has_obj(&id),
            None => store.is_some_and(|s| s.lookup_sha256(&m.sha256).ok().flatten().is_some()),
        };
        let models_missing: Vec<&comfystore::lockfile::Model> =
            l.models.iter().filter(|m| !has_model(m)).collect();
        let py = l.python.as_ref();
        let env_in_store = match (py, store) {
            (Some(p), Some(s)) => comfystore::python::find_env(s, &p.into())?.is_some(),
            _ => false,
        };
        let wheels_missing = match (py, store) {
            (Some(p), Some(s)) if !env_in_store => {
                comfystore::python::missing_wheels(s, &p.into())?
            }
            (Some(p), None) => p.packages.iter().map(|p| p.name.clone()).collect(),
            _ => Vec::new(),
        };
        Ok(Present {
            comfyui: has_tree(
                &l.comfyui.tree,
                &l.comfyui.repo,
                &l.comfyui.commit,
                &comfystore::lockfile::comfyui_excludes(),
            )?,
            nodes_missing,
            model_bytes: l.models.iter().filter_map(|m| m.size).sum(),
            missing_bytes: models_missing.iter().filter_map(|m| m.size).sum(),
            models_missing,
            env_in_store,
            wheels_missing,
        })
    }
}

fn show_json(path: &Path, l: &Lockfile, p: &Present) -> Result<()> {
    let (env_in_store, wheels_missing) = (p.env_in_store, &p.wheels_missing);
    let not_portable = l.not_portable();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "lockfile": path,
            "tag": l.tag,
            "comfyui": { "repo": l.comfyui.repo, "commit": l.comfyui.commit, "dirty": l.comfyui.dirty, "in_store": p.comfyui },
            "custom_nodes": { "count": l.custom_nodes.len(), "disabled": l.custom_nodes.iter().filter(|n| n.disabled).count(), "missing": p.nodes_missing },
            "python": l.python.as_ref().map(|p| json!({ "version": p.version, "platform": p.platform, "packages": p.packages.len(), "environment_in_store": env_in_store, "wheels_missing": wheels_missing })),
            "models": { "count": l.models.len(), "bytes": p.model_bytes, "missing": p.models_missing.iter().map(|m| &m.path).collect::<Vec<_>>(), "missing_bytes": p.missing_bytes },
            "portable": not_portable.is_empty(),
            "not_portable": not_portable,
        }))?
    );
    Ok(())
}

fn show_text(path: &Path, l: &Lockfile, p: &Present) {
    let mark = |present: bool| if present { "in store" } else { "missing" };
    println!("{} (tag {})", path.display(), l.tag);
    println!(
        "comfyui   {} @ {}{}  [{}]",
        l.comfyui.repo.as_deref().unwrap_or("(no repo)"),
        l.comfyui
            .commit
            .as_deref()
            .map_or("(no commit)", |c| &c[..12.min(c.len())]),
        if l.comfyui.dirty { " (dirty)" } else { "" },
        mark(p.comfyui)
    );
    let git = l.custom_nodes.iter().filter(|n| n.commit.is_some()).count();
    println!(
        "nodes     {} ({} git, {} disabled), {} missing{}",
        l.custom_nodes.len(),
        git,
        l.custom_nodes.iter().filter(|n| n.disabled).count(),
        p.nodes_missing.len(),
        if p.nodes_missing.is_empty() {
            String::new()
        } else {
            format!(": {}", p.nodes_missing.join(", "))
        }
    );
    show_python(l, p);
    println!(
        "models    {} ({}), {} to download ({})",
        l.models.len(),
        HumanBytes(p.model_bytes),
        p.models_missing.len(),
        HumanBytes(p.missing_bytes)
    );
    for m in &p.models_missing {
        println!(
            "  missing {} ({}){}",
            m.path,
            m.size
                .map_or_else(|| "size unknown".to_string(), |n| HumanBytes(n).to_string()),
            if m.sources.is_empty() {
                " — no known source"
            } else {
                ""
            }
        );
    }
    let gaps = l.not_portable();
    if gaps.is_empty() {
        println!("portable  yes: everything can be rebuilt from the lock's own sources");
    } else {
        println!(
            "portable  no: {} item(s) cannot be rebuilt from the lock's own sources",
            gaps.len()
        );
        for g in &gaps {
            println!("  {g}");
        }
    }
}

fn show_python(l: &Lockfile, present: &Present) {
    let Some(p) = &l.python else {
        println!("python    (none)");
        return;
    };
    let (env_in_store, wheels_missing) = (present.env_in_store, &present.wheels_missing);
    println!(
        "python    {} {} {}, {} packages, environment [{}]{}",
        p.version.as_deref().unwrap_or("?"),
        p.abi.as_deref().unwrap_or("?"),
        p.platform.as_deref().unwrap_or("?"),
        p.packages.len(),
        if env_in_store {
            "in store"
        } else if wheels_missing.is_empty() {
            "installed from the stored wheels when needed"
        } else {
            "missing"
        },
        if wheels_missing.is_empty() || env_in_store {
            String::new()
        } else {
            format!(", {} wheels to fetch", wheels_missing.len())
        }
    );
}
