//! Tree manifests: a directory as a sorted list of entries, serialised canonically.
//!
//! The tree id is the BLAKE3 of the canonical, uncompressed manifest bytes. At rest the file may
//! be zstd-compressed (when that saves space), which does not change the id: an id must not
//! depend on the zstd version that wrote it.

use super::durable;
use super::id::ObjectId;
use super::object::MODE_PLAIN;
use super::Store;
use crate::store::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

/// The schema line every manifest starts with.
pub const TREE_SCHEMA: &str = "comfystore.tree/1";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Manifests larger than this are compressed at rest when zstd saves at least a tenth.
const COMPRESS_OVER: usize = 4096;

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path with `/` separators; never absolute, never `..` (see [`check_rel_path`]).
    pub path: String,
    pub node: Node,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file; `exec` when any execute bit was set.
    File { exec: bool, size: u64, id: ObjectId },
    /// A symbolic link, recorded as its target text and never followed.
    Symlink { target: String },
    /// An empty directory (directories with entries are implied by their entries' paths).
    Dir,
}

/// A tree: entries sorted by path bytes, no duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

/// The JSON shape of one entry. Field order here is the canonical key order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    path: String,
    kind: RawKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<ObjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    File,
    Exec,
    Symlink,
    Dir,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    schema: String,
    entries: Vec<RawEntry>,
}

impl Entry {
    fn to_raw(&self) -> RawEntry {
        let (kind, size, id, target) = match &self.node {
            Node::File { exec, size, id } => (
                if *exec { RawKind::Exec } else { RawKind::File },
                Some(*size),
                Some(*id),
                None,
            ),
            Node::Symlink { target } => (RawKind::Symlink, None, None, Some(target.clone())),
            Node::Dir => (RawKind::Dir, None, None, None),
        };
        RawEntry {
            path: self.path.clone(),
            kind,
            size,
            id,
            target,
        }
    }

    fn from_raw(raw: RawEntry) -> std::result::Result<Entry, String> {
        let p = &raw.path;
        let node = match (raw.kind, raw.size, raw.id, raw.target) {
            (RawKind::File | RawKind::Exec, Some(size), Some(id), None) => Node::File {
                exec: raw.kind == RawKind::Exec,
                size,
                id,
            },
            (RawKind::Symlink, None, None, Some(target)) => {
                if target.is_empty() || target.contains('\0') {
                    return Err(format!("{p:?}: symlink target is empty or contains NUL"));
                }
                Node::Symlink { target }
            }
            (RawKind::Dir, None, None, None) => Node::Dir,
            _ => return Err(format!("{p:?}: fields do not match its kind")),
        };
        Ok(Entry {
            path: raw.path,
            node,
        })
    }

    /// Size in bytes for files, 0 otherwise.
    pub fn size(&self) -> u64 {
        match self.node {
            Node::File { size, .. } => size,
            _ => 0,
        }
    }
}

/// Check that `p` is a safe relative path: not empty, not absolute, no `.`/`..`/empty
/// components, no NUL. Used for manifests here and for lockfile paths later.
pub fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.len() > 4096 {
        return Err(format!("{p:?}: path longer than 4096 bytes"));
    }
    if p.starts_with('/') {
        return Err(format!("{p:?}: absolute path"));
    }
    // One pass over the bytes (every manifest entry is checked on every read: `split` and a
    // separate NUL search were 9 % of a `verify`).
    let bytes = p.as_bytes();
    let mut start = 0;
    for i in 0..=bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(b'/');
        if b == 0 {
            return Err(format!("{p:?}: contains NUL"));
        }
        if b != b'/' {
            continue;
        }
        match &bytes[start..i] {
            b"" => return Err(format!("{p:?}: empty path component")),
            c @ (b"." | b"..") => {
                let c = if c.len() == 1 { "." } else { ".." };
                return Err(format!("{p:?}: contains a {c:?} component"));
            }
            _ => {}
        }
        start = i + 1;
    }
    Ok(())
}

impl Manifest {
    /// Sort entries into canonical order (by path bytes).
    pub fn sort(&mut self) {
        self.entries
            .sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    }

    /// Canonical bytes: the schema, then one compact JSON entry per line, in path order.
    pub fn to_canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 120);
        out.extend_from_slice(b"{\"schema\":\"");
        out.extend_from_slice(TREE_SCHEMA.as_bytes());
        out.extend_from_slice(b"\",\"entries\":[\n");
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",\n");
            }
            // Serialising a plain struct of strings and numbers into a Vec cannot fail.
            serde_json::to_writer(&mut out, &e.to_raw()).expect("serialise manifest entry");
        }
        out.extend_from_slice(b"\n]}\n");
        out
    }

    /// The paths whose entries differ from `other`'s, marked `+` (only in `other`), `-` (only
    /// here) or `~` (changed), in path order: what makes two tree ids differ.
    pub fn differences(&self, other: &Manifest) -> Vec<String> {
        let mine: std::collections::BTreeMap<&str, &Node> = self
            .entries
            .iter()
            .map(|e| (e.path.as_str(), &e.node))
            .collect();
        let theirs: std::collections::BTreeMap<&str, &Node> = other
            .entries
            .iter()
            .map(|e| (e.path.as_str(), &e.node))
            .collect();
        let mut paths: Vec<&str> = mine.keys().chain(theirs.keys()).copied().collect();
        paths.sort_unstable();
        paths.dedup();
        paths
            .into_iter()
            .filter_map(|p| match (mine.get(p), theirs.get(p)) {
                (Some(a), Some(b)) if a == b => None,
                (Some(_), Some(_)) => Some(format!("~ {p}")),
                (Some(_), None) => Some(format!("- {p}")),
                _ => Some(format!("+ {p}")),
            })
            .collect()
    }

    /// The tree id: BLAKE3 of the canonical bytes.
    pub fn id(&self) -> ObjectId {
        ObjectId(*blake3::hash(&self.to_canonical()).as_bytes())
    }

    /// Parse and validate manifest bytes (zstd-compressed or not). `id` names the tree in errors.
    pub fn parse(bytes: &[u8], id: &str) -> Result<Manifest> {
        let bad = |reason: String| Error::BadManifest {
            id: id.to_string(),
            reason,
        };
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if raw.schema != TREE_SCHEMA {
            return Err(bad(format!(
                "schema {:?} is not supported (expected {TREE_SCHEMA:?})",
                raw.schema
            )));
        }
        let mut entries = Vec::with_capacity(raw.entries.len());
        for r in raw.entries {
            entries.push(Entry::from_raw(r).map_err(bad)?);
        }
        let m = Manifest { entries };
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Every rule a manifest must follow before anything acts on it: safe paths, strict order
    /// (so no duplicates), and nothing beneath a file or a symlink (which would let a hostile
    /// tree write through a link it planted).
    pub fn validate(&self) -> std::result::Result<(), String> {
        type Set<'a> = std::collections::HashSet<&'a str, foldhash::fast::RandomState>;
        let mut leaves = Set::default();
        // Folders already found to lie beneath no leaf. Entries are sorted, so a leaf comes
        // before anything beneath it: once a folder is here, no later leaf can be it, and only
        // the ancestors not yet here are looked up (about one per entry, not one per level).
        let mut folders = Set::default();
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            check_rel_path(&e.path)?;
            if let Some(p) = prev {
                if p.as_bytes() >= e.path.as_bytes() {
                    return Err(format!("{:?}: entries not sorted or duplicated", e.path));
                }
            }
            prev = Some(&e.path);
            let mut ancestor = e.path.as_str();
            while let Some(i) = ancestor.rfind('/') {
                ancestor = &ancestor[..i];
                if folders.contains(ancestor) {
                    break;
                }
                if leaves.contains(ancestor) {
                    return Err(format!(
                        "{:?}: lies beneath {ancestor:?}, which is a file or symlink",
                        e.path
                    ));
                }
                folders.insert(ancestor);
            }
            if !matches!(e.node, Node::Dir) {
                leaves.insert(&e.path);
            }
        }
        Ok(())
    }

    /// Total bytes of the files (what a copy of the tree would take).
    pub fn logical_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size).sum()
    }

    /// Distinct objects the tree refers to, with whether some entry needs the exec variant.
    pub fn objects(&self) -> Vec<(ObjectId, u64, bool)> {
        let mut v: Vec<(ObjectId, u64, bool)> = self
            .entries
            .iter()
            .filter_map(|e| match e.node {
                Node::File { exec, size, id } => Some((id, size, exec)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|(id, _, exec)| (*id, !*exec));
        v.dedup_by_key(|(id, _, _)| *id);
        v
    }
}

/// Decompress manifest bytes read from disk if they are zstd; canonical bytes pass through.
pub(crate) fn decode_at_rest(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    if bytes.starts_with(&ZSTD_MAGIC) {
        zstd::stream::decode_all(&bytes[..]).map_err(|e| Error::BadManifest {
            id: what.to_string(),
            reason: format!("zstd: {e}"),
        })
    } else {
        Ok(bytes)
    }
}

impl Store {
    /// Canonical bytes of a stored tree, checked against its id.
    pub fn tree_bytes(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let path = self.tree_path(id);
        let raw = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("tree {id}")),
            _ => Error::io("read", path.clone(), e),
        })?;
        let bytes = decode_at_rest(raw, &id.to_string())?;
        let actual = ObjectId(*blake3::hash(&bytes).as_bytes());
        if actual != *id {
            return Err(Error::Mismatch {
                what: path.display().to_string(),
                expected: id.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Read, verify and parse a stored tree.
    pub fn read_tree(&self, id: &ObjectId) -> Result<Manifest> {
        Manifest::parse(&self.tree_bytes(id)?, &id.to_string())
    }

    /// Store a manifest; returns its id and whether it was new. The caller must have made the
    /// objects it names durable first ([`Store::sync`]); the manifest itself is fsynced.
    pub fn put_tree(&self, manifest: &Manifest) -> Result<(ObjectId, bool)> {
        manifest.validate().map_err(|reason| Error::BadManifest {
            id: "(new tree)".into(),
            reason,
        })?;
        let canonical = manifest.to_canonical();
        let id = ObjectId(*blake3::hash(&canonical).as_bytes());
        let dest = self.tree_path(&id);
        // Stored before, so checked before: a materialize composes the same version tree every
        // run, and checking its 25k objects again cost a stat each.
        if let Ok(m) = fs::symlink_metadata(&dest) {
            // (What this handle put is still made durable and indexed, as below.)
            self.flush_pending(false)?;
            durable::freshen(&dest, m.modified().unwrap_or(std::time::UNIX_EPOCH));
            return Ok((id, false));
        }
        // A tree never gives a file a size its stored object does not have (it could never be
        // materialized correctly: every run would "repair" the file again).
        for e in &manifest.entries {
            let Node::File {
                id: oid,
                size,
                exec,
            } = e.node
            else {
                continue;
            };
            let actual = [exec, !exec]
                .into_iter()
                .find_map(|v| self.object_lstat(&oid, v).ok())
                .map(|m| m.key.size);
            if let Some(actual) = actual.filter(|a| *a != size) {
                // The object may be the one that lies (changed through a hardlink): then it
                // goes to quarantine, and the tree waits for it to be fetched again.
                match self.checked_object(&oid, exec) {
                    Err(Error::Corrupt { .. }) | Err(Error::NotFound(_)) => continue,
                    Err(other) => return Err(other),
                    Ok(_) => {}
                }
                return Err(Error::BadManifest {
                    id: "(new tree)".into(),
                    reason: format!(
                        "{:?} is given {size} bytes, but its object {oid} has {actual}",
                        e.path
                    ),
                });
            }
        }
        // The objects it names: durable and in the index before the tree is.
        self.flush_pending(false)?;
        let mut body = canonical;
        if body.len() > COMPRESS_OVER {
            if let Ok(z) = zstd::bulk::compress(&body, 3) {
                if z.len() < body.len() - body.len() / 10 {
                    body = z;
                }
            }
        }
        let (mut f, tmp) = self.create_temp()?;
        let written = f
            .write_all(&body)
            .ctx("write", &tmp)
            .and_then(|()| {
                f.set_permissions(fs::Permissions::from_mode(MODE_PLAIN))
                    .ctx("chmod", &tmp)
            })
            .and_then(|()| f.sync_all().ctx("fsync", &tmp));
        drop(f);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let new = durable::publish_no_replace(&tmp, &dest)? == durable::Published::New;
        Ok((id, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, n: u8) -> Entry {
        Entry {
            path: path.into(),
            node: Node::File {
                exec: false,
                size: 1,
                id: ObjectId([n; 32]),
            },
        }
    }

    #[test]
    fn canonical_bytes_parse_back_to_the_same_manifest() {
        let mut m = Manifest {
            entries: vec![
                file("b/c", 1),
                Entry {
                    path: "a".into(),
                    node: Node::Dir,
                },
                Entry {
                    path: "l".into(),
                    node: Node::Symlink {
                        target: "../x".into(),
                    },
                },
                Entry {
                    path: "run.sh".into(),
                    node: Node::File {
                        exec: true,
                        size: 9,
                        id: ObjectId([7; 32]),
                    },
                },
            ],
        };
        m.sort();
        let bytes = m.to_canonical();
        let back = Manifest::parse(&bytes, "t").unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_canonical(), bytes);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        for bad in [
            vec![file("../etc/passwd", 1)],
            vec![file("/abs", 1)],
            vec![file("a/./b", 1)],
            vec![file("a//b", 1)],
            vec![file("b", 1), file("a", 2)],
            vec![file("a", 1), file("a", 2)],
            vec![
                Entry {
                    path: "l".into(),
                    node: Node::Symlink {
                        target: "/tmp".into(),
                    },
                },
                file("l/x", 1),
            ],
            vec![file("f", 1), file("f/x", 2)],
            // Beneath a file whose folder is already known (the validation's shortcut).
            vec![file("d/e/f", 1), file("d/g", 2), file("d/g/h", 3)],
            vec![
                file("d/e", 1),
                file("d/f", 2),
                file("d/f-g", 3),
                file("d/f/x/y", 4),
            ],
            vec![file("a/", 1)],
            vec![file(".", 1)],
            vec![file("a/..", 1)],
            vec![file("a/b\0", 1)],
        ] {
            let m = Manifest { entries: bad };
            assert!(Manifest::parse(&m.to_canonical(), "t").is_err(), "{m:?}");
        }
        // Folders whose names sort around other entries are fine.
        let m = Manifest {
            entries: vec![
                file("a-b", 1),
                file("a/c", 2),
                file("a/d/e", 3),
                file("a/d/f", 4),
            ],
        };
        assert!(m.validate().is_ok());
        for (p, why) in [("..a/...", None), ("a/.b", None), ("", Some("empty path"))] {
            assert_eq!(check_rel_path(p).err().as_deref(), why, "{p:?}");
        }
        let unknown =
            br#"{"schema":"comfystore.tree/1","entries":[{"path":"a","kind":"dir","x":1}]}"#;
        assert!(Manifest::parse(unknown, "t").is_err());
        let schema = br#"{"schema":"comfystore.tree/9","entries":[]}"#;
        assert!(Manifest::parse(schema, "t").is_err());
    }
}
