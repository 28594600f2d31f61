//! Offline mirrors: everything a lockfile needs, in a folder another machine can use with no
//! network.
//!
//! ```text
//! DIR/mirror.json                    what is here (schema comfystore.mirror/1)
//! DIR/lockfiles/comfy-TAG.lock.json  the locks mirrored
//! DIR/bundles/TAG.bundle             the lock's trees with their files (`import` format)
//! DIR/models/...                     models under their lock paths
//! DIR/wheels/*.whl                   wheels, flat: pip install --no-index --find-links DIR/wheels
//! DIR/simple/NAME/index.html         the same wheels as a PEP 503 index: --index-url file://DIR/simple
//! DIR/sha256/HEX                     symlinks by SHA-256, so `fetch --mirror-url` works over HTTP
//! ```
//!
//! Files are linked from the store where the filesystem allows (reflink, else hardlink), else
//! copied; every file is published by rename, so an interrupted run leaves no partial file
//! under its final name. Several locks can share one mirror.

pub mod layout;

pub use layout::{import_bundles, wheel_path, MirrorFile, MirrorManifest, MANIFEST, MIRROR_SCHEMA};

use super::fetch::{fetch_lock, FetchOptions, FetchReport};
use crate::lockfile::{normalize_package_name, Lockfile, Part};
use crate::pipeline::error::{Error, IoContext, Result};
use crate::place::beneath::Beneath;
use crate::place::{place_object, LinkMode};
use crate::store::{ObjectId, Sha256, Store};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What `mirror` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MirrorReport {
    pub dir: PathBuf,
    pub fetch: FetchReport,
    pub bundle: Option<PathBuf>,
    pub bundle_bytes: u64,
    /// Files written (linked or copied) now, and already present.
    pub written: u64,
    pub present: u64,
    pub bytes: u64,
}

/// Write (or add to) an offline mirror of `lock` at `dir`, fetching what the store lacks.
pub fn write_mirror(
    store: &Store,
    lock: &Lockfile,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<MirrorReport> {
    let fetch = fetch_lock(
        store,
        lock,
        &FetchOptions {
            all_wheels: true,
            ..opts.clone()
        },
    )?;
    fs::create_dir_all(dir).ctx("create", dir)?;
    // Every folder of the mirror is opened beneath DIR without following a symlink: a planted
    // `models -> /elsewhere` is refused, never written through.
    let top = Beneath::open(dir)?;
    let mut report = MirrorReport {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let _writer = store.lock_shared()?;
    let mut manifest = read_manifest(dir)?;
    let (files, wheels) = mirror_files(store, lock, dir, opts)?;
    top.create_dirs("sha256")?;
    let bar = store.reporter().start(
        "mirror",
        Some(files.len() as u64),
        crate::report::Unit::Items,
    );
    for file in &files {
        place_file(store, &top, file, &mut manifest, &mut report)?;
        bar.inc(1);
    }
    bar.finish();
    write_simple_index(&top, &wheels)?;
    write_bundle(store, lock, &top, &fetch, &mut report)?;
    write_lock_and_manifest(lock, &top, manifest)?;
    report.fetch = fetch;
    Ok(report)
}

/// A file of the mirror: its path there, its object and its SHA-256.
type MirrorEntry = (String, ObjectId, Sha256);

/// Wheel files with their SHA-256, by project: what the PEP 503 index lists.
type WheelsByProject = BTreeMap<String, Vec<(String, Sha256)>>;

/// Files: models at their paths, wheels flat (and the wheels by project, for the index).
fn mirror_files(
    store: &Store,
    lock: &Lockfile,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<(Vec<MirrorEntry>, WheelsByProject)> {
    let mut files: Vec<MirrorEntry> = Vec::new();
    if opts.wants(Part::Models) {
        for m in &lock.models {
            let id = match m.blake3 {
                Some(id) => Some(id).filter(|id| store.has_object(id)),
                None => store.lookup_sha256(&m.sha256)?,
            };
            if let Some(id) = id {
                files.push((m.path.clone(), id, m.sha256));
            }
        }
    }
    let mut wheels = WheelsByProject::new();
    if opts.wants(Part::Python) {
        for (file, sha, _) in lock.pinned_wheels() {
            if let Some(id) = store.lookup_sha256(&sha)?.filter(|b| store.has_object(b)) {
                if file.contains('/') || crate::store::check_rel_path(&file).is_err() {
                    return Err(Error::bad_input(
                        dir,
                        format!("wheel name {file:?} is not a plain file name"),
                    ));
                }
                files.push((format!("wheels/{file}"), id, sha));
                let project = normalize_package_name(file.split('-').next().unwrap_or(&file));
                wheels.entry(project).or_default().push((file, sha));
            }
        }
    }
    Ok((files, wheels))
}

/// One file into the mirror (unless the manifest says it is there already), with its
/// `sha256/HEX` link and its manifest entry.
fn place_file(
    store: &Store,
    top: &Beneath,
    (rel, id, sha): &MirrorEntry,
    manifest: &mut MirrorManifest,
    report: &mut MirrorReport,
) -> Result<()> {
    let dir = top.path();
    let dest = dir.join(rel);
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
    let pdir = top.create_dirs(parent)?;
    // Checked: a changed object must not spread into the mirror.
    let src = store.checked_object(id, false)?;
    let size = fs::metadata(&src).ctx("stat", &src)?.len();
    if fs::symlink_metadata(pdir.name_path(name)).is_ok_and(|m| m.is_file() && m.len() == size)
        && manifest
            .files
            .iter()
            .any(|f| f.path == *rel && f.blake3 == *id)
    {
        report.present += 1;
    } else {
        let tmp = crate::store::unique_name(crate::store::TEMP_PREFIX);
        let tmp_rel = match parent {
            "" => tmp.clone(),
            p => format!("{p}/{tmp}"),
        };
        place_object(store, id, dir, &tmp_rel, LinkMode::Auto)?;
        pdir.rename(&tmp, name).ctx("publish", &dest)?;
        report.written += 1;
    }
    report.bytes += size;
    // By SHA-256, for HTTP mirrors: `python -m http.server` in DIR, then
    // `fetch --mirror-url http://host:port/sha256`.
    let sdir = top.dir("sha256")?;
    let link = dir.join("sha256").join(sha.hex());
    let target = PathBuf::from("..").join(rel);
    if fs::read_link(sdir.name_path(&sha.hex())).ok().as_deref() != Some(target.as_path()) {
        let tmp = crate::store::unique_name(crate::store::TEMP_PREFIX);
        sdir.symlink(&target.to_string_lossy(), &tmp)
            .ctx("symlink", &link)?;
        sdir.rename(&tmp, &sha.hex()).ctx("publish", &link)?;
    }
    manifest.files.retain(|f| f.path != *rel);
    manifest.files.push(MirrorFile {
        path: rel.clone(),
        size,
        sha256: sha.hex(),
        blake3: *id,
    });
    Ok(())
}

/// Trees (source, nodes, environment) with everything they hold, in one verified bundle.
fn write_bundle(
    store: &Store,
    lock: &Lockfile,
    top: &Beneath,
    fetch: &FetchReport,
    report: &mut MirrorReport,
) -> Result<()> {
    let trees: Vec<ObjectId> = lock
        .store_ids()
        .into_iter()
        .chain(fetch.trees.iter().map(|t| t.tree))
        .filter(|id| store.has_tree(id))
        .collect();
    if trees.is_empty() {
        return Ok(());
    }
    let name = format!("{}.bundle", lock.tag);
    let path = top.path().join("bundles").join(&name);
    let bdir = top.create_dirs("bundles")?;
    let at = bdir.name_path(&name);
    let exported = store.export_to_file(&trees, &at)?;
    report.bundle_bytes = fs::metadata(&at).map_or(exported.bytes, |m| m.len());
    report.bundle = Some(path);
    Ok(())
}

/// The lockfile, then the manifest that lists it (written last: it says what is here).
fn write_lock_and_manifest(
    lock: &Lockfile,
    top: &Beneath,
    mut manifest: MirrorManifest,
) -> Result<()> {
    let dir = top.path();
    let ldir = top.create_dirs("lockfiles")?;
    lock.write(&ldir.name_path(&format!("comfy-{}.lock.json", lock.tag)))?;
    manifest.schema = MIRROR_SCHEMA.into();
    manifest.locks.push(lock.tag.clone());
    manifest.locks.sort();
    manifest.locks.dedup();
    manifest.files.sort();
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::bad_input(dir.join(MANIFEST), e.to_string()))?;
    Ok(crate::store::write_file_atomic(
        &top.dir("")?.name_path(MANIFEST),
        &bytes,
        0o644,
    )?)
}

fn read_manifest(dir: &Path) -> Result<MirrorManifest> {
    let path = dir.join(MANIFEST);
    match fs::read(&path) {
        Ok(b) => {
            let m: MirrorManifest = serde_json::from_slice(&b)
                .map_err(|e| Error::bad_input(&path, format!("not a mirror manifest: {e}")))?;
            if m.schema != MIRROR_SCHEMA {
                return Err(Error::bad_input(
                    &path,
                    format!("schema {:?}, expected {MIRROR_SCHEMA:?}", m.schema),
                ));
            }
            Ok(m)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MirrorManifest::default()),
        Err(e) => Err(e).ctx("read", &path),
    }
}

/// PEP 503 pages for the wheels now in `DIR/wheels` (merged with projects already listed).
fn write_simple_index(top: &Beneath, wheels: &WheelsByProject) -> Result<()> {
    if wheels.is_empty() && top.dir("simple").is_err() {
        return Ok(());
    }
    let simple_dir = top.create_dirs("simple")?;
    let simple = simple_dir.handle_path();
    for (project, files) in wheels {
        crate::store::check_rel_path(project)
            .map_err(|e| Error::bad_input(top.path().join("simple"), e))?;
        let pdir = top.create_dirs(&format!("simple/{project}"))?;
        // Keep links other locks wrote for this project.
        let page = pdir.name_path("index.html");
        let mut links: BTreeMap<String, String> = fs::read_to_string(&page)
            .map(|t| parse_links(&t))
            .unwrap_or_default();
        for (file, sha) in files {
            links.insert(file.clone(), sha.hex());
        }
        let mut html = format!(
            "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"><title>Links for {project}</title></head><body>\n<h1>Links for {project}</h1>\n"
        );
        for (file, sha) in &links {
            html.push_str(&format!(
                "<a href=\"../../wheels/{file}#sha256={sha}\">{file}</a><br/>\n"
            ));
        }
        html.push_str("</body></html>\n");
        crate::store::write_file_atomic(&page, html.as_bytes(), 0o644)?;
    }
    let mut projects: Vec<String> = match fs::read_dir(&simple) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Ok(()),
    };
    projects.sort();
    let mut html = String::from("<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"><title>Simple index</title></head><body>\n");
    for p in projects {
        html.push_str(&format!("<a href=\"{p}/\">{p}</a><br/>\n"));
    }
    html.push_str("</body></html>\n");
    Ok(crate::store::write_file_atomic(
        &simple.join("index.html"),
        html.as_bytes(),
        0o644,
    )?)
}

/// The (file, sha256) links of a project page this module wrote.
fn parse_links(html: &str) -> BTreeMap<String, String> {
    html.split("<a href=\"../../wheels/")
        .skip(1)
        .filter_map(|s| {
            let (file, rest) = s.split_once("#sha256=")?;
            let (sha, _) = rest.split_once('"')?;
            Some((file.to_string(), sha.to_string()))
        })
        .collect()
}
