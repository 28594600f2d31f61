//! Hashing an installer's output while the installer still runs.
//!
//! A cold environment build is uv unpacking wheels into a cache of ours (in the store's
//! `tmp/`) and hard-linking the files into a venv, then the store adopting the venv's files
//! as objects ([`Store::adopt_tree`]). uv keeps the two cores busy for most of its run but not
//! all of it, so hashing every file after uv ends puts the whole hashing on the critical path.
//! [`Prehash::watch`] hashes each finished cache entry while uv goes on (uv renames an
//! unpacked wheel into its archive folder only once it is complete), and asks the kernel to
//! start writing it back, so the `syncfs` that makes the objects durable finds little left.
//!
//! A hash taken early is only a hint keyed by the inode: `adopt_tree` uses it for a venv file
//! only when that file is the same inode with the same size and mtime, as the store's other
//! adoptions do (`adopt`'s `try_share`). Anything else is hashed again.

use super::durable;
use super::hash::{self, Digests};
use super::Store;
use crate::store::error::{IoContext, Result};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How often [`Prehash::watch`] looks for new entries.
const POLL: Duration = Duration::from_millis(50);

/// A file's identity and the stat its hash was taken with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Inode {
    dev: u64,
    ino: u64,
}

#[derive(Clone, Copy, Debug)]
struct Known {
    size: u64,
    mtime_ns: i64,
    digests: Digests,
}

/// Hashes of files in one of the store's temp folders, taken ahead of [`Store::adopt_tree`].
#[derive(Default)]
pub struct Prehash {
    known: Mutex<HashMap<Inode, Known>>,
}

/// What [`Prehash::watch`] did, for the build's log.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrehashReport {
    pub files: u64,
    pub bytes: u64,
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

impl Prehash {
    pub fn new() -> Prehash {
        Prehash::default()
    }

    /// The BLAKE3 of a file taken earlier, if `m` (its stat now) is the very inode hashed,
    /// unchanged in size and mtime.
    pub(super) fn digests(&self, m: &fs::Metadata) -> Option<Digests> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let k = known.get(&Inode {
            dev: m.dev(),
            ino: m.ino(),
        })?;
        (k.size == m.len() && k.mtime_ns == mtime_ns(m)).then_some(k.digests)
    }

    /// Whether this inode was found (and hashed) in the watched folder: a second link to it
    /// there is ours, not somebody else's.
    pub(super) fn holds(&self, m: &fs::Metadata) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.contains_key(&Inode {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Run `work` (the installer) while hashing, on a thread beside it, each new entry that
    /// appears in `dir` ([`Prehash::watch_until`]).
    pub fn watch<R: Send>(
        &self,
        store: &Store,
        dir: &Path,
        work: impl FnOnce() -> R + Send,
    ) -> (R, PrehashReport) {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let watcher = s.spawn(|| self.watch_until(store, dir, &done));
            let out = work();
            done.store(true, Ordering::Relaxed);
            (out, watcher.join().unwrap_or_default())
        })
    }

    /// Hash, one at a time, each new entry that appears in `dir` (a folder in the store's
    /// `tmp/`), until `done`. Entries must appear complete (renamed into `dir`), as uv's
    /// archive entries do. What was not reached is hashed by `adopt_tree` as before.
    pub fn watch_until(&self, store: &Store, dir: &Path, done: &AtomicBool) -> PrehashReport {
        let mut report = PrehashReport::default();
        let mut seen = HashSet::new();
        // Only a folder in the store's tmp/ is watched: its files are ours.
        if !dir.starts_with(store.tmp_dir()) {
            return report;
        }
        while !done.load(Ordering::Relaxed) {
            let names: Vec<_> = fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| !seen.contains(p))
                .collect();
            for entry in names {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                self.hash_entry(&entry, done, &mut report);
                seen.insert(entry);
            }
            std::thread::sleep(POLL);
        }
        report
    }

    /// Hash the regular files under `entry` (symlinks not followed), until `done`.
    fn hash_entry(&self, entry: &Path, done: &AtomicBool, report: &mut PrehashReport) {
        for e in walkdir::WalkDir::new(entry).follow_links(false) {
            if done.load(Ordering::Relaxed) {
                return;
            }
            let Ok(e) = e else { continue };
            if !e.file_type().is_file() {
                continue;
            }
            if let Ok(Some((inode, known))) = hash_one(e.path()) {
                report.files += 1;
                report.bytes += known.size;
                let mut map = self.known.lock().unwrap_or_else(|e| e.into_inner());
                map.insert(inode, known);
            }
        }
    }
}

/// BLAKE3 of one file, if it did not change while read; its writeback is started.
fn hash_one(path: &Path) -> Result<Option<(Inode, Known)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx("open", path)?;
    let before = file.metadata().ctx("stat", path)?;
    let digests = hash::stream(&mut file, None, false).ctx("read", path)?;
    let after = file.metadata().ctx("stat", path)?;
    let same = |m: &fs::Metadata| (m.ino(), m.len(), mtime_ns(m), m.ctime_nsec(), m.ctime());
    if same(&before) != same(&after) || digests.size != after.len() {
        return Ok(None);
    }
    durable::start_writeback(&file, 0, 0);
    Ok(Some((
        Inode {
            dev: after.dev(),
            ino: after.ino(),
        },
        Known {
            size: after.len(),
            mtime_ns: mtime_ns(&after),
            digests,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AddOptions, Node, StoreOptions};
    use std::path::PathBuf;

    /// What `watch` hashed while the work ran (entries renamed into the watched folder) is
    /// used by `adopt_tree` only for the very inode, unchanged: a venv file linked to a hashed
    /// cache entry is adopted although it has a second link (the object is that inode); one
    /// whose bytes changed after it was hashed gets its true id; a file with a second link
    /// outside the stage is copied, not adopted.
    #[test]
    fn adopt_uses_hashes_taken_while_the_installer_ran_only_for_unchanged_inodes() {
        let t = tempfile::tempdir().expect("temp dir");
        let store = Store::open(t.path().join("store"), &StoreOptions::default()).expect("store");
        let stage = store.tmp_dir().join(".tmp-stage");
        let (unpack, cache, venv) = (
            stage.join("unpack"),
            stage.join("cache"),
            stage.join("venv"),
        );
        for d in [&unpack, &cache, &venv] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let names = ["a.py", "big.bin", "changed.txt"];
        fs::write(unpack.join("a.py"), b"print(1)\n").expect("write");
        fs::write(unpack.join("big.bin"), vec![7u8; 3 << 20]).expect("write");
        fs::write(unpack.join("changed.txt"), b"old\n").expect("write");
        let entry = cache.join("e1");

        let pre = Prehash::new();
        let (held, report) = pre.watch(&store, &cache, || {
            fs::rename(&unpack, &entry).expect("rename");
            // Wait (bounded) until the watcher has hashed the entry.
            let all = || {
                names
                    .iter()
                    .all(|n| fs::metadata(entry.join(n)).is_ok_and(|m| pre.holds(&m)))
            };
            let start = std::time::Instant::now();
            while !all() && start.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(10));
            }
            all()
        });
        assert!(held, "the watcher did not hash the renamed entry");
        assert_eq!(report.files, 3);

        for n in names {
            fs::hard_link(entry.join(n), venv.join(n)).expect("link");
        }
        // Changed after it was hashed (past the timestamps' granularity): its mtime moves.
        std::thread::sleep(Duration::from_millis(50));
        fs::write(venv.join("changed.txt"), b"new\n").expect("write");
        // A second link outside the stage: not ours to adopt.
        fs::write(venv.join("shared.txt"), b"shared\n").expect("write");
        let outside: PathBuf = t.path().join("outside-name");
        fs::hard_link(venv.join("shared.txt"), &outside).expect("link");

        let got = store
            .adopt_tree(&venv, &AddOptions::default(), Some(&pre))
            .expect("adopt");
        let manifest = store.read_tree(&got.id).expect("tree");
        let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
        for e in &manifest.entries {
            let Node::File { id, exec, .. } = &e.node else {
                continue;
            };
            let file = venv.join(&e.path);
            let obj = store.object_path(id, *exec);
            assert_eq!(
                hash::b3_file(&file).expect("hash").0,
                *id,
                "{} has the id of other bytes",
                e.path
            );
            let adopted = ino(&obj) == ino(&file);
            assert_eq!(
                adopted,
                e.path != "shared.txt",
                "{}: adopted {adopted}",
                e.path
            );
        }
        assert_eq!(
            fs::read(&outside).expect("read"),
            b"shared\n",
            "the outside name changed"
        );
    }
}
