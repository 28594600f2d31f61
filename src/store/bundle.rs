//! Bundles: the closure of some trees and objects in one zstd-compressed tar stream, for
//! carrying a store's content to a machine with no network.
//!
//! The first member, `index.json`, lists every member with its id and size, so an importer
//! knows what to expect before any bytes arrive and can tell a truncated bundle from a whole
//! one. Every member is verified against its name; nothing is published until the whole bundle
//! has been read and checked.

use super::durable::{self, Published};
use super::hash;
use super::id::ObjectId;
use super::index::Batch;
use super::object::{MODE_EXEC, MODE_PLAIN};
use super::tree::Manifest;
use super::Store;
use crate::report::{Progress, ProgressRead};
use crate::store::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const BUNDLE_SCHEMA: &str = "comfystore.bundle/1";
const INDEX_NAME: &str = "index.json";
/// The largest `index.json` an import reads into memory.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// The largest tree manifest an import accepts. A tree is read into memory (one at a time) to
/// check it, so a bundle declaring a huge one is refused before any of it is read.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleIndex {
    schema: String,
    roots: Vec<ObjectId>,
    trees: Vec<BundleItem>,
    objects: Vec<BundleItem>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct BundleItem {
    id: ObjectId,
    size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    exec: bool,
}

/// What `export` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub trees: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// What `import` read and added.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub roots: Vec<ObjectId>,
    pub trees: u64,
    pub objects: u64,
    pub new_objects: u64,
    pub bytes: u64,
}

fn bundle_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Bundle {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What an export holds: every tree's canonical bytes and every object's size and mode.
#[derive(Default)]
struct Closure {
    trees: BTreeMap<ObjectId, Vec<u8>>,
    /// (size, exec) by id; an object some tree names executable is exported executable.
    objects: BTreeMap<ObjectId, (u64, bool)>,
}

impl Closure {
    /// The bundle's first member: what follows it, so a reader can tell a truncated bundle.
    fn index(&self, roots: &[ObjectId]) -> BundleIndex {
        BundleIndex {
            schema: BUNDLE_SCHEMA.into(),
            roots: roots.to_vec(),
            trees: self
                .trees
                .iter()
                .map(|(id, b)| BundleItem {
                    id: *id,
                    size: b.len() as u64,
                    exec: false,
                })
                .collect(),
            objects: self
                .objects
                .iter()
                .map(|(id, (size, exec))| BundleItem {
                    id: *id,
                    size: *size,
                    exec: *exec,
                })
                .collect(),
        }
    }
}

/// An `io::Error` while writing a bundle.
fn write_err(e: std::io::Error) -> Error {
    Error::io("write bundle", PathBuf::from("(bundle)"), e)
}

impl Store {
    /// Write the closure of `ids` (trees with all their objects, or single objects) to `out`.
    pub fn export(&self, ids: &[ObjectId], out: &mut dyn Write) -> Result<ExportReport> {
        let closure = self.closure(ids)?;
        let index_bytes = serde_json::to_vec_pretty(&closure.index(ids))
            .map_err(|e| Error::bad_input("(bundle)", e.to_string()))?;
        let mut enc = zstd::stream::Encoder::new(out, 3).map_err(write_err)?;
        // Two workers: compression overlaps with reading objects.
        let _ = enc.multithread(2);
        let mut tar = tar::Builder::new(enc);
        append(
            &mut tar,
            INDEX_NAME,
            0o644,
            &mut &index_bytes[..],
            index_bytes.len() as u64,
        )
        .map_err(write_err)?;
        let bytes = self.append_objects(&mut tar, &closure.objects)?;
        for (id, b) in &closure.trees {
            append(
                &mut tar,
                &format!("trees/{}", id.hex()),
                0o444,
                &mut &b[..],
                b.len() as u64,
            )
            .map_err(write_err)?;
        }
        let enc = tar.into_inner().map_err(write_err)?;
        enc.finish()
            .map_err(write_err)?
            .flush()
            .map_err(write_err)?;
        Ok(ExportReport {
            trees: closure.trees.len() as u64,
            objects: closure.objects.len() as u64,
            bytes,
        })
    }

    /// The trees and objects `ids` reach.
    fn closure(&self, ids: &[ObjectId]) -> Result<Closure> {
        let mut c = Closure::default();
        for id in ids {
            if self.has_tree(id) {
                let bytes = self.tree_bytes(id)?;
                let m = Manifest::parse(&bytes, &id.to_string())?;
                for (oid, size, exec) in m.objects() {
                    let slot = c.objects.entry(oid).or_insert((size, false));
                    slot.1 |= exec;
                }
                c.trees.insert(*id, bytes);
            } else if self.has_object(id) {
                let path = self
                    .find_object(id, false)
                    .ok_or_else(|| Error::NotFound(id.to_string()))?;
                let size = fs::metadata(&path).ctx("stat", &path)?.len();
                c.objects.entry(*id).or_insert((size, false));
            } else {
                return Err(Error::NotFound(id.to_string()));
            }
        }
        Ok(c)
    }

    /// Every object as `objects/<hex>`, counted on a progress bar; the bytes written.
    fn append_objects<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        objects: &BTreeMap<ObjectId, (u64, bool)>,
    ) -> Result<u64> {
        let bar = self.reporter().start(
            "export",
            Some(objects.values().map(|(s, _)| s).sum()),
            crate::report::Unit::Bytes,
        );
        let mut bytes = 0;
        for (id, (size, exec)) in objects {
            let path = self.checked_object(id, *exec)?;
            let mut f = fs::File::open(&path).ctx("open", &path)?;
            let mode = if *exec { MODE_EXEC } else { MODE_PLAIN };
            // Counted as the bytes are read: a 2 GiB model moves the bar while it goes in.
            let mut counted = ProgressRead::new(&mut f, bar.as_ref());
            append(
                tar,
                &format!("objects/{}", id.hex()),
                mode,
                &mut counted,
                *size,
            )
            .map_err(|e| Error::io("read", path.clone(), e))?;
            bytes += size;
        }
        bar.finish();
        Ok(bytes)
    }

    /// Write a bundle to `path` atomically (temp file beside it, then rename).
    pub fn export_to_file(&self, ids: &[ObjectId], path: &Path) -> Result<ExportReport> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (f, tmp) = durable::create_temp(dir)?;
        let mut w = std::io::BufWriter::new(f);
        let res = self.export(ids, &mut w).and_then(|r| {
            let f = w
                .into_inner()
                .map_err(|e| e.into_error())
                .ctx("write", &tmp)?;
            f.sync_all().ctx("fsync", &tmp)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).ctx("chmod", &tmp)?;
            fs::rename(&tmp, path).ctx("rename into place", path)?;
            Ok(r)
        });
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Read a bundle, verify every member against its name and the bundle's index, and only
    /// then publish its objects and trees. `dry_run` verifies without storing anything.
    pub fn import(&self, input: &mut dyn Read, name: &Path, dry_run: bool) -> Result<ImportReport> {
        self.import_rooted(input, name, dry_run, None)
    }

    /// [`Store::import`], then a GC root `root` listing the bundle's roots. Everything is
    /// checked before anything is published (the root's name, and that each of the bundle's
    /// roots is in the bundle or the store), so a refused import leaves no unrooted content;
    /// the root is written under the same writers' lock as the content.
    pub fn import_rooted(
        &self,
        input: &mut dyn Read,
        name: &Path,
        dry_run: bool,
        root: Option<&str>,
    ) -> Result<ImportReport> {
        if let Some(r) = root {
            super::roots::check_root_name(r)?;
        }
        let _lock = self.lock_shared()?;
        let dec = zstd::stream::Decoder::new(input)
            .map_err(|e| bundle_err(name, format!("not zstd: {e}")))?;
        let mut archive = tar::Archive::new(dec);
        let mut entries = archive
            .entries()
            .map_err(|e| bundle_err(name, format!("not a tar stream: {e}")))?;
        let index = read_index(&mut entries, name)?;
        let listed_trees: HashSet<ObjectId> = index.trees.iter().map(|i| i.id).collect();
        for r in &index.roots {
            let listed = listed_trees.contains(r) || index.objects.iter().any(|i| i.id == *r);
            if !listed && !self.has_tree(r) && !self.has_object(r) {
                return Err(bundle_err(
                    name,
                    format!("root {r} is neither in the bundle nor in the store"),
                ));
            }
        }
        let mut import = Import {
            store: self,
            name,
            dry_run,
            expected: index.members(),
            sizes: index.objects.iter().map(|i| (i.id, i.size)).collect(),
            staged: Staged(Vec::new()),
            trees: Staged(Vec::new()),
        };
        let bar = self.reporter().start(
            "import",
            Some(index.objects.iter().map(|i| i.size).sum()),
            crate::report::Unit::Bytes,
        );
        for entry in entries {
            let entry = entry
                .map_err(|e| bundle_err(name, format!("unreadable member (truncated?): {e}")))?;
            import.member(entry, bar.as_ref())?;
        }
        bar.finish();
        import.check_complete()?;
        let mut report = ImportReport {
            roots: index.roots.clone(),
            trees: import.trees.0.len() as u64,
            objects: index.objects.len() as u64,
            new_objects: 0,
            bytes: index.objects.iter().map(|i| i.size).sum(),
        };
        if !dry_run {
            report.new_objects = import.publish()?;
            if let Some(r) = root {
                self.add_root(
                    r,
                    &super::roots::Root {
                        ids: index.roots.clone(),
                        path: None,
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(report)
    }
}

impl BundleIndex {
    /// Every member the index lists, by its path in the bundle, with whether it is a tree.
    fn members(&self) -> HashMap<String, (BundleItem, bool)> {
        let trees = self.trees.iter().map(|i| (i, true));
        let objects = self.objects.iter().map(|i| (i, false));
        trees
            .chain(objects)
            .map(|(item, is_tree)| {
                let kind = if is_tree { "trees" } else { "objects" };
                (format!("{kind}/{}", item.id.hex()), (item.clone(), is_tree))
            })
            .collect()
    }
}

/// The first member, `index.json`, of a supported schema.
fn read_index<R: Read>(entries: &mut tar::Entries<'_, R>, name: &Path) -> Result<BundleIndex> {
    let mut first = entries
        .next()
        .ok_or_else(|| bundle_err(name, "empty bundle"))?
        .map_err(|e| bundle_err(name, format!("unreadable member: {e}")))?;
    let path = first
        .path()
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_default();
    if path != INDEX_NAME {
        return Err(bundle_err(
            name,
            format!("first member must be {INDEX_NAME}, found {path:?}"),
        ));
    }
    if first.size() > MAX_INDEX_BYTES {
        return Err(bundle_err(
            name,
            format!(
                "{INDEX_NAME} is {} bytes, more than the {MAX_INDEX_BYTES} an import reads",
                first.size()
            ),
        ));
    }
    let mut buf = Vec::new();
    first
        .read_to_end(&mut buf)
        .map_err(|e| bundle_err(name, format!("{INDEX_NAME}: {e}")))?;
    let index: BundleIndex =
        serde_json::from_slice(&buf).map_err(|e| bundle_err(name, format!("{INDEX_NAME}: {e}")))?;
    if index.schema != BUNDLE_SCHEMA {
        return Err(bundle_err(
            name,
            format!(
                "schema {:?} is not supported (expected {BUNDLE_SCHEMA:?})",
                index.schema
            ),
        ));
    }
    if let Some(big) = index.trees.iter().find(|t| t.size > MAX_MANIFEST_BYTES) {
        return Err(bundle_err(
            name,
            format!(
                "tree {} is declared {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
                big.id, big.size
            ),
        ));
    }
    Ok(index)
}

/// An import in progress: the members still expected, the objects verified into temp files,
/// the trees read.
struct Import<'a> {
    store: &'a Store,
    name: &'a Path,
    dry_run: bool,
    expected: HashMap<String, (BundleItem, bool)>,
    /// Every object the index lists, with its size (each member is checked against it).
    sizes: HashMap<ObjectId, u64>,
    staged: Staged,
    /// Verified tree members, each in a temp file (a dry run keeps only the ids): memory
    /// holds one manifest at a time, whatever the bundle holds.
    trees: Staged,
}

impl Import<'_> {
    /// Read and verify one member against the index; an object's size, for the progress bar.
    /// One member, checked and staged; an object's bytes are counted on `bar` as they are read.
    fn member<R: Read>(&mut self, mut entry: tar::Entry<'_, R>, bar: &dyn Progress) -> Result<()> {
        let name = self.name;
        let member = entry
            .path()
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let (item, is_tree) = self.expected.remove(&member).ok_or_else(|| {
            bundle_err(
                name,
                format!("member {member:?} is not in the index, or appears twice"),
            )
        })?;
        if entry.size() != item.size {
            return Err(bundle_err(
                name,
                format!(
                    "member {member}: {} bytes, the index says {}",
                    entry.size(),
                    item.size
                ),
            ));
        }
        let tampered = |actual: ObjectId| {
            bundle_err(name, format!("member {member}: content hashes to {actual}, not {}: the bundle is corrupt or was tampered with", item.id))
        };
        if is_tree {
            // The size was capped by read_index and equals the member's: bounded memory.
            let mut buf = Vec::with_capacity(item.size as usize);
            (&mut entry)
                .take(MAX_MANIFEST_BYTES)
                .read_to_end(&mut buf)
                .map_err(|e| bundle_err(name, format!("member {member}: {e}")))?;
            let actual = hash::hash_bytes(&buf, false).b3;
            if actual != item.id {
                return Err(tampered(actual));
            }
            let m = Manifest::parse(&buf, &item.id.to_string())?;
            self.check_tree(&item.id, &m)?;
            if self.dry_run {
                self.trees.0.push((item, PathBuf::new()));
            } else {
                let (mut f, tmp) = self.store.create_temp()?;
                self.trees.0.push((item, tmp.clone()));
                f.write_all(&buf).ctx("write", &tmp)?;
            }
            return Ok(());
        }
        let digests = self
            .stage(&item, &mut ProgressRead::new(&mut entry, bar))?
            .map_err(|e| bundle_err(name, format!("member {member}: {e} (truncated?)")))?;
        if digests.b3 != item.id || digests.size != item.size {
            return Err(tampered(digests.b3));
        }
        Ok(())
    }

    /// Hash an object member, into a temp file unless this is a dry run.
    fn stage(
        &mut self,
        item: &BundleItem,
        entry: &mut dyn Read,
    ) -> Result<std::io::Result<hash::Digests>> {
        if self.dry_run {
            return Ok(hash::stream(entry, None, false));
        }
        let (mut f, tmp) = self.store.create_temp()?;
        self.staged.0.push((item.clone(), tmp.clone()));
        let d = hash::stream(entry, Some(&mut f), false);
        let mode = if item.exec { MODE_EXEC } else { MODE_PLAIN };
        f.set_permissions(fs::Permissions::from_mode(mode))
            .ctx("chmod", &tmp)?;
        Ok(d)
    }

    /// Every object a tree names is in the bundle or the store, with the size the tree says
    /// (a tree that lies about a size would be "repaired" by every materialize).
    fn check_tree(&self, tid: &ObjectId, m: &Manifest) -> Result<()> {
        for (oid, size, exec) in m.objects() {
            let actual = match self.sizes.get(&oid) {
                Some(s) => Some(*s),
                None => self
                    .store
                    .find_object(&oid, exec)
                    .and_then(|p| fs::metadata(p).ok())
                    .map(|m| m.len()),
            };
            match actual {
                None => {
                    return Err(bundle_err(
                        self.name,
                        format!(
                            "tree {tid} needs {oid}, which neither the bundle nor the store has"
                        ),
                    ))
                }
                Some(a) if a != size => {
                    return Err(bundle_err(
                        self.name,
                        format!("tree {tid} says {oid} has {size} bytes; it has {a}"),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Every listed member arrived.
    fn check_complete(&self) -> Result<()> {
        if let Some(missing) = self.expected.keys().min() {
            return Err(bundle_err(
                self.name,
                format!(
                    "truncated: {} listed members are missing (first: {missing})",
                    self.expected.len()
                ),
            ));
        }
        Ok(())
    }

    /// Everything verified: publish objects, flush once, then the trees that name them; the
    /// objects that were new.
    fn publish(mut self) -> Result<u64> {
        let store = self.store;
        let mut new_objects = 0;
        let mut batch = Batch::default();
        while let Some((item, tmp)) = self.staged.0.pop() {
            let dest = store.object_path(&item.id, item.exec);
            if durable::publish_no_replace(&tmp, &dest)? == Published::New {
                new_objects += 1;
            }
            batch.objects.push((item.id, item.size, None));
        }
        store.sync()?;
        while let Some((item, tmp)) = self.trees.0.pop() {
            let bytes = fs::read(&tmp).ctx("read", &tmp)?;
            let _ = fs::remove_file(&tmp);
            let m = Manifest::parse(&bytes, &item.id.to_string())?;
            drop(bytes);
            let (id, _) = store.put_tree(&m)?;
            batch
                .trees
                .push((id, m.entries.len() as u64, m.logical_bytes()));
        }
        if let Some(index) = store.index() {
            index.commit(&batch)?;
        }
        Ok(new_objects)
    }
}

/// Verified temp files of an import in progress; whatever is not yet published when the import
/// stops (on an error) is removed.
struct Staged(Vec<(BundleItem, PathBuf)>);

impl Drop for Staged {
    fn drop(&mut self) {
        for (_, p) in &self.0 {
            if !p.as_os_str().is_empty() {
                let _ = fs::remove_file(p);
            }
        }
    }
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &mut dyn Read,
    size: u64,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}
