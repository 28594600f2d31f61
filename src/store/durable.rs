//! Small filesystem primitives for crash safety: unique temp names, atomic no-replace publish,
//! batched durability and freshening mtimes for gc's grace period.

use crate::store::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A temp-file name that is unique across processes, containers and hosts: 128 random bits
/// (PIDs repeat between containers sharing a volume).
pub fn unique_name(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to time and pid, still far from colliding in practice.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..16].copy_from_slice(&(t ^ (std::process::id() as u128) << 64).to_le_bytes());
    }
    format!("{prefix}{}", hex::encode(bytes))
}

/// Prefix of every temp file. The leading dot keeps temp files out of root listings.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Create a fresh temp file in `dir` (mode 0600 until published).
pub fn create_temp(dir: &Path) -> Result<(File, PathBuf)> {
    create_temp_named(dir, TEMP_PREFIX)
}

/// [`create_temp`] with the name `<prefix><32 random hex>`.
pub fn create_temp_named(dir: &Path, prefix: &str) -> Result<(File, PathBuf)> {
    loop {
        let path = dir.join(unique_name(prefix));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).ctx("create temp file", &path),
        }
    }
}

/// Outcome of publishing a temp file under its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The file is now at its final name.
    New,
    /// A file was already there; the temp file was removed.
    Existed,
}

/// Move `tmp` to `dest` unless `dest` exists: atomic, never replaces. Creates the parent
/// directory if a shard is missing.
pub fn publish_no_replace(tmp: &Path, dest: &Path) -> Result<Published> {
    let published = publish_by(dest, || rename_noreplace(tmp, dest));
    if !matches!(published, Ok(Published::New)) {
        let _ = fs::remove_file(tmp);
    }
    published
}

/// Give the file at `src` the name `dest` too (a hard link) unless `dest` exists: atomic,
/// never replaces, and `src` keeps its name. Creates the parent directory if a shard is
/// missing. For a file the store already owns whose bytes are durable (an adopted temp file).
pub fn publish_link(src: &Path, dest: &Path) -> Result<Published> {
    publish_by(dest, || fs::hard_link(src, dest))
}

/// Run `op` (which makes `dest`), creating `dest`'s folder and trying once more if it is
/// missing; `dest` already there is [`Published::Existed`].
fn publish_by(dest: &Path, op: impl Fn() -> io::Result<()>) -> Result<Published> {
    for attempt in 0..2 {
        match op() {
            Ok(()) => return Ok(Published::New),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Published::Existed),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => {
                if let Some(parent) = dest.parent() {
                    create_dirs(parent).ctx("create", parent)?;
                }
            }
            Err(e) => return Err(e).ctx("publish", dest),
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound)).ctx("publish", dest)
}

/// `renameat2(RENAME_NOREPLACE)` where the kernel and filesystem support it, else `link` +
/// `unlink` (git's way: `link` fails with EEXIST instead of replacing).
fn rename_noreplace(tmp: &Path, dest: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, tmp, CWD, dest, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(e)
                if e == rustix::io::Errno::INVAL
                    || e == rustix::io::Errno::NOSYS
                    || e == rustix::io::Errno::NOTSUP => {}
            Err(e) => return Err(e.into()),
        }
    }
    fs::hard_link(tmp, dest)?;
    fs::remove_file(tmp)
}

/// Replace `dest` with `tmp` unconditionally (used to replace a damaged object).
pub fn publish_replace(tmp: &Path, dest: &Path) -> Result<()> {
    fs::rename(tmp, dest).ctx("replace", dest)
}

/// `create_dir_all`, except that a folder created in a setgid, group-writable folder (a
/// group-shared store) is made group-writable too: the umask would leave it 0755 and lock the
/// group's other members out of it. The setgid bit and the group come from the parent.
pub fn create_dirs(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    const SETGID_GROUP_RWX: u32 = 0o2070;
    let parent_mode = path
        .parent()
        .and_then(|p| fs::metadata(p).ok())
        .map_or(0, |m| m.permissions().mode());
    if parent_mode & SETGID_GROUP_RWX == SETGID_GROUP_RWX {
        let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
        fs::set_permissions(path, fs::Permissions::from_mode(mode | SETGID_GROUP_RWX))?;
    }
    Ok(())
}

/// Write `data` to `dest` atomically (temp in `dest`'s directory, fsync, rename). For small
/// metadata files: markers, roots, aliases.
/// The folder `dest` is in: `.` for a bare name (`-o out.json`), whose `parent()` is "".
fn parent_dir(dest: &Path) -> &Path {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

pub fn write_file_atomic(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(dest);
    create_dirs(dir).ctx("create", dir)?;
    let (mut f, tmp) = create_temp(dir)?;
    let res = (|| {
        f.write_all(data).ctx("write", &tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .ctx("chmod", &tmp)?;
        f.sync_all().ctx("fsync", &tmp)?;
        fs::rename(&tmp, dest).ctx("rename into place", dest)?;
        sync_dir(dir);
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// fsync a directory so a rename in it survives power loss. Best effort: some filesystems
/// refuse fsync on directories, and the data itself is already durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Flush every dirty page of the filesystem holding `path`.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        let dir = File::open(path).ctx("open", path)?;
        rustix::fs::syncfs(&dir)
            .map_err(io::Error::from)
            .ctx("syncfs", path)
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No syncfs: sync(2) flushes every filesystem, which is a superset.
        let _ = path;
        rustix::fs::sync();
        Ok(())
    }
}

/// Files whose mtime is older than this are touched when reused, so gc's grace period (default
/// one hour) sees them as fresh. Touching only old files keeps re-adds cheap.
pub const FRESHEN_AFTER: Duration = Duration::from_secs(10 * 60);

/// Set `path`'s mtime to now if it is older than [`FRESHEN_AFTER`]. Best effort: a store shared
/// by several users may hold files we cannot touch, and the gc lock still protects them.
pub fn freshen(path: &Path, mtime: SystemTime) {
    let old = SystemTime::now()
        .duration_since(mtime)
        .map(|age| age > FRESHEN_AFTER)
        .unwrap_or(false);
    if old {
        use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD, UTIME_NOW, UTIME_OMIT};
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            },
        };
        if let Err(e) = utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW) {
            tracing::debug!("could not freshen {}: {e}", path.display());
        }
    }
}

/// Whether `path` is on a network or FUSE filesystem, where locks and redb are not trusted.
pub fn is_network_fs(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        const NETWORK: &[i64] = &[
            0x6573_5546,           // FUSE (MooseFS on RunPod, s3fs, gcsfuse)
            0x6969,                // NFS
            0x517B,                // SMB
            0xFF53_4D42u32 as i64, // CIFS
            0xFE53_4D42u32 as i64, // SMB2
            0x00C3_6400,           // Ceph
            0x0102_1997,           // 9P
            0x0BD0_0BD0,           // Lustre
        ];
        match rustix::fs::statfs(path) {
            // f_type is i64 on x86_64 but narrower on other targets.
            #[allow(clippy::unnecessary_cast)]
            Ok(s) => NETWORK.contains(&(s.f_type as i64)),
            Err(_) => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        false
    }
}

/// A writer for large temp files that keeps writeback going while we hash: every 8 MiB it
/// starts writeback of what was just written, waits for the previous 8 MiB and drops it from
/// the page cache. Without it, a 2 GiB ingest filled the page cache and then stalled in one
/// long flush (and, on this VM, in re-faulting ballooned memory): measured 1.40× openssl
/// against 0.84× with bounded writeback (docs/performance.md). Call `finish` to fdatasync.
pub struct BoundedWriteback<'a> {
    file: &'a File,
    written: u64,
    flushed: u64,
}

const WRITEBACK_STEP: u64 = 8 << 20;

impl<'a> BoundedWriteback<'a> {
    pub fn new(file: &'a File) -> Self {
        BoundedWriteback {
            file,
            written: 0,
            flushed: 0,
        }
    }

    /// Make every byte written durable (one fdatasync; most of it is on disk already).
    pub fn finish(self) -> io::Result<()> {
        self.file.sync_data()
    }

    #[cfg(target_os = "linux")]
    fn pace(&mut self) {
        use std::os::fd::AsRawFd;
        if self.written - self.flushed < WRITEBACK_STEP {
            return;
        }
        let fd = self.file.as_raw_fd();
        // `finish` reports real write errors through fdatasync.
        start_writeback(self.file, self.flushed, self.written - self.flushed);
        if self.flushed >= WRITEBACK_STEP {
            let prev = (self.flushed - WRITEBACK_STEP) as i64;
            // SAFETY: as above.
            unsafe {
                libc::sync_file_range(
                    fd,
                    prev,
                    WRITEBACK_STEP as i64,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            let _ = rustix::fs::fadvise(
                self.file,
                prev as u64,
                std::num::NonZeroU64::new(WRITEBACK_STEP),
                rustix::fs::Advice::DontNeed,
            );
        }
        self.flushed = self.written;
    }

    #[cfg(not(target_os = "linux"))]
    fn pace(&mut self) {}
}

/// Ask the kernel to start writing `len` bytes of `file` from `start` back to disk (`len` 0:
/// to the end) without waiting, so a later `fdatasync` or `syncfs` finds less to do. Only a
/// hint: errors are ignored.
#[cfg(target_os = "linux")]
pub(super) fn start_writeback(file: &File, start: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes only integers and reads no memory of ours; the fd is open
    // for as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            start as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn start_writeback(_file: &File, _start: u64, _len: u64) {}

impl Write for BoundedWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        self.pace();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl super::Store {
    /// Delete a folder of the store's own in `tmp/` (a staging folder), many entries at once.
    /// Freeing an inode can wait on the device: an ext4 without a journal but mounted with
    /// `discard` discards each freed extent synchronously, and 25k small files took 42 s one
    /// at a time on this project's VM, 5.5 s eight at a time. remove_dir_all walks with
    /// `openat` and never follows a symlink. A folder outside `tmp/` is refused.
    pub fn remove_temp_tree(&self, dir: &Path) -> Result<()> {
        self.temp_tree_remover(dir)?()
    }

    /// [`Store::remove_temp_tree`], checked now and done when called (on another thread).
    pub fn temp_tree_remover(
        &self,
        dir: &Path,
    ) -> Result<impl FnOnce() -> Result<()> + Send + 'static> {
        let up = dir
            .components()
            .any(|c| c == std::path::Component::ParentDir);
        if up || dir == self.tmp_dir() || !dir.starts_with(self.tmp_dir()) {
            return Err(super::Error::bad_input(
                dir,
                "only a folder in the store's tmp/ is deleted this way",
            ));
        }
        let dir = dir.to_path_buf();
        Ok(move || remove_tree(&dir))
    }
}

/// `remove_dir_all`, eight entries at a time (see [`super::Store::remove_temp_tree`]).
fn remove_tree(dir: &Path) -> Result<()> {
    use std::sync::OnceLock;
    // The waits are the device's, not the CPU's: more threads than cores.
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .thread_name(|i| format!("delete-{i}"))
            .build()
            .ok()
    });
    let remover = remove_dir_all::RemoverBuilder::new().build();
    let gone = match pool {
        Some(p) => p.install(|| remover.remove_dir_all(dir)),
        None => remover.remove_dir_all(dir),
    };
    match gone {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).ctx("delete", dir),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    /// `lock -o out.json` (a bare name) failed with `create : No such file or directory`.
    #[test]
    fn a_bare_names_folder_is_the_current_one() {
        use std::path::Path;
        assert_eq!(super::parent_dir(Path::new("out.json")), Path::new("."));
        assert_eq!(super::parent_dir(Path::new("d/out.json")), Path::new("d"));
        assert_eq!(super::parent_dir(Path::new("/out.json")), Path::new("/"));
    }

    use crate::store::{Store, StoreOptions};
    use std::fs;

    /// A staging folder goes with everything in it; a symlink in it is removed, not followed;
    /// a folder outside `tmp/`, and `tmp/` itself, are refused and left alone.
    #[test]
    fn remove_temp_tree_deletes_only_a_folder_in_tmp_and_follows_no_symlink() {
        let t = tempfile::tempdir().expect("temp dir");
        let store = Store::open(t.path().join("store"), &StoreOptions::default()).expect("store");
        let outside = t.path().join("outside");
        fs::create_dir_all(outside.join("keep")).expect("mkdir");
        fs::write(outside.join("keep/file"), b"mine").expect("write");
        let stage = store.tmp_dir().join(".tmp-stage");
        for i in 0..40 {
            let d = stage.join(format!("d{i}/e"));
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("f"), b"x").expect("write");
        }
        std::os::unix::fs::symlink(&outside, stage.join("d0/out")).expect("symlink");

        assert!(
            store.remove_temp_tree(&outside).is_err(),
            "deleted outside tmp/"
        );
        assert!(
            store.remove_temp_tree(&store.tmp_dir()).is_err(),
            "deleted tmp/"
        );
        let sneaky = store.tmp_dir().join("../../outside");
        assert!(
            store.remove_temp_tree(&sneaky).is_err(),
            "deleted tmp/../.."
        );
        store.remove_temp_tree(&stage).expect("delete");
        assert!(!stage.exists(), "the stage is left");
        assert_eq!(fs::read(outside.join("keep/file")).expect("read"), b"mine");
        assert!(store.tmp_dir().is_dir(), "tmp/ went too");
        // Already gone: nothing to do, no error.
        store.remove_temp_tree(&stage).expect("delete again");
    }
}
