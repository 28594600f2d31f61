//! How one file gets from the store into a destination: reflink, hardlink, symlink or copy,
//! falling back down a chain when the filesystems refuse.
//!
//! The first refusal of a method for a (store filesystem, destination filesystem) pair is
//! remembered, so the remaining files of a tree do not try it again (uv's and pnpm's approach).
//! A refusal that is about one file (EMLINK: too many links to that inode) falls back for that
//! file only.

use super::beneath::DirAt;
use crate::place::error::{IoContext, Result};
use crate::report::Progress;
use crate::store::StatKey;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

/// What the user asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// Reflink, else hardlink, else copy.
    Auto,
    /// Reflink (a copy-on-write clone), else copy. Safe to edit: the default.
    Reflink,
    /// Hardlink, else copy. Fast, but shares the inode with the store: for read-only parts.
    Hardlink,
    /// Symlink to the store object. Works across filesystems; read-only parts only.
    Symlink,
    /// Always copy the bytes.
    Copy,
    /// Reflink, else hardlink, else symlink: never copies bytes. The models default, so a
    /// 20 GB checkpoint on a network volume is linked, not duplicated.
    Share,
}

impl LinkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Auto => "auto",
            LinkMode::Reflink => "reflink",
            LinkMode::Hardlink => "hardlink",
            LinkMode::Symlink => "symlink",
            LinkMode::Copy => "copy",
            LinkMode::Share => "share",
        }
    }

    fn chain(self) -> &'static [Method] {
        match self {
            LinkMode::Auto => &[Method::Reflink, Method::Hardlink, Method::Copy],
            LinkMode::Reflink => &[Method::Reflink, Method::Copy],
            LinkMode::Hardlink => &[Method::Hardlink, Method::Copy],
            LinkMode::Symlink => &[Method::Symlink],
            LinkMode::Copy => &[Method::Copy],
            LinkMode::Share => &[Method::Reflink, Method::Hardlink, Method::Symlink],
        }
    }

    /// Whether files placed this way share their inode with the store.
    pub fn shares_inode(self) -> bool {
        matches!(
            self,
            LinkMode::Auto | LinkMode::Hardlink | LinkMode::Symlink | LinkMode::Share
        )
    }
}

impl std::str::FromStr for LinkMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        const ALL: [LinkMode; 6] = [
            LinkMode::Auto,
            LinkMode::Reflink,
            LinkMode::Hardlink,
            LinkMode::Symlink,
            LinkMode::Copy,
            LinkMode::Share,
        ];
        ALL.into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown link mode {s:?} (auto, reflink, hardlink, symlink, copy, share)")
            })
    }
}

/// What was actually done for a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Reflink,
    Hardlink,
    Symlink,
    Copy,
}

/// Link mode per path prefix: the longest matching prefix wins, else `default`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPolicy {
    pub default: LinkMode,
    #[serde(default)]
    pub rules: Vec<PrefixRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRule {
    pub prefix: String,
    pub mode: LinkMode,
}

impl Default for LinkPolicy {
    /// Reflink else copy: source trees are edited by users and custom nodes, and an edit must
    /// never reach the store.
    fn default() -> Self {
        LinkPolicy::only(LinkMode::Reflink)
    }
}

impl LinkPolicy {
    /// One mode for every path.
    pub fn only(mode: LinkMode) -> LinkPolicy {
        LinkPolicy {
            default: mode,
            rules: Vec::new(),
        }
    }

    /// Parse `PREFIX=MODE` (e.g. `venv=hardlink`, `models/checkpoints=symlink`).
    pub fn parse_rule(s: &str) -> std::result::Result<PrefixRule, String> {
        let (prefix, mode) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PREFIX=MODE, e.g. venv=hardlink"))?;
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            crate::store::check_rel_path(&prefix)?;
        }
        Ok(PrefixRule {
            prefix,
            mode: mode.parse()?,
        })
    }

    /// The mode for `path`, with the prefix that chose it ("" for the default).
    pub fn mode_for<'a>(&'a self, path: &str) -> (&'a str, LinkMode) {
        let mut best: (&str, LinkMode) = ("", self.default);
        for r in &self.rules {
            let matches = r.prefix.is_empty()
                || path == r.prefix
                || (path.starts_with(&r.prefix)
                    && path.as_bytes().get(r.prefix.len()) == Some(&b'/'));
            if matches && r.prefix.len() >= best.0.len() {
                best = (&r.prefix, r.mode);
            }
        }
        best
    }
}

/// Files that programs rewrite in place (pip's RECORD, venv configs, small configs). They are
/// copied even in hardlink or symlink mode: a copy of a small file costs about what a link
/// does, and an in-place write through a link would change the store.
pub fn rewritten_in_place(path: &str, size: u64) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    if matches!(
        name,
        "RECORD" | "INSTALLER" | "pyvenv.cfg" | "direct_url.json"
    ) {
        return true;
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    size <= 64 * 1024
        && matches!(
            ext,
            "pth" | "json" | "yaml" | "yml" | "ini" | "cfg" | "toml" | "conf"
        )
}

/// Which methods a (source device, destination device) pair was found to refuse.
#[derive(Default)]
pub struct Probe {
    refused: Mutex<HashSet<(u64, u64, Method)>>,
}

impl Probe {
    fn refused(&self, key: (u64, u64, Method)) -> bool {
        self.refused
            .lock()
            .map(|m| m.contains(&key))
            .unwrap_or(false)
    }
    fn refuse(&self, key: (u64, u64, Method), e: &io::Error) {
        if let Ok(mut m) = self.refused.lock() {
            if m.insert(key) {
                // EPERM on a hardlink: the kernel's fs.protected_hardlinks refuses links to a
                // file this user neither owns nor may write (a store owned by another user).
                let why = if key.2 == Method::Hardlink
                    && e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error())
                {
                    " (the store's files belong to another user: fs.protected_hardlinks)"
                } else {
                    ""
                };
                tracing::info!(
                    "{:?} refused between devices {} and {}: {e}{why}; falling back",
                    key.2,
                    key.0,
                    key.1
                );
            }
        }
    }
}

/// Errors that mean "this method cannot work here", not "something is broken".
fn is_fallback(e: &io::Error) -> bool {
    use rustix::io::Errno;
    if e.kind() == io::ErrorKind::Unsupported || e.kind() == io::ErrorKind::CrossesDevices {
        return true;
    }
    let code = e.raw_os_error();
    [
        Errno::XDEV,
        Errno::NOTSUP,
        Errno::OPNOTSUPP,
        Errno::MLINK,
        Errno::PERM,
        Errno::INVAL,
        Errno::NOSYS,
        Errno::TXTBSY,
    ]
    .iter()
    .any(|c| Some(c.raw_os_error()) == code)
}

fn is_emlink(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::MLINK.raw_os_error())
}

/// Create `name` in `dir` (which must not hold it) with the `len` bytes of store object `src`;
/// returns the method used and the placed file's stat (the object's, for a symlink), for its
/// stat-cache row.
///
/// Everything happens relative to `dir`'s handle: one `linkat`, or one `openat` of the new
/// file that is then cloned into (`FICLONE`) or copied into (`copy_file_range`), and one stat.
/// No path of DEST is resolved again, and no `/proc/self/fd` path is walked per file.
///
/// `exec`: the entry is executable (`src` is then the executable variant where the method
/// shares its inode). Copies and reflinks get mode 0644 or 0755 so the user can edit them.
///
/// `moved` counts the bytes written: a copy's as they move, a reflink's whole size once the
/// clone is made; links count nothing.
#[allow(clippy::too_many_arguments)]
pub fn place(
    probe: &Probe,
    devs: (u64, u64),
    mode: LinkMode,
    (src, src_dir, len): (&Path, Option<BorrowedFd>, u64),
    dir: &DirAt,
    name: &str,
    exec: bool,
    force_copy: bool,
    moved: &dyn Progress,
) -> Result<(Method, StatKey)> {
    let chain: &[Method] = if force_copy {
        &[Method::Reflink, Method::Copy]
    } else {
        mode.chain()
    };
    let file_mode = if exec { 0o755 } else { 0o644 };
    let dst = dir.path().join(name);
    for (i, m) in chain.iter().enumerate() {
        let last = i + 1 == chain.len();
        let key = (devs.0, devs.1, *m);
        if !last && probe.refused(key) {
            continue;
        }
        let res = match m {
            Method::Reflink => write_at((src, src_dir), (dir, name), (file_mode, len), true, moved),
            Method::Hardlink => dir
                .link_from((src, src_dir), name)
                .and_then(|()| dir.stat_key(name, false)),
            Method::Symlink => dir
                .symlink_path(src, name)
                .and_then(|()| dir.stat_key(name, true)),
            Method::Copy => write_at((src, src_dir), (dir, name), (file_mode, len), false, moved),
        };
        match res {
            Ok(stat) => return Ok((*m, stat)),
            Err(e) if !last && is_fallback(&e) => {
                let _ = dir.unlink(name, false);
                if !is_emlink(&e) {
                    probe.refuse(key, &e);
                }
            }
            Err(e) => {
                let _ = dir.unlink(name, false);
                return Err(e).ctx(method_op(*m), &dst);
            }
        }
    }
    unreachable!("every chain ends in a method that does not fall back")
}

fn method_op(m: Method) -> &'static str {
    match m {
        Method::Reflink => "reflink",
        Method::Hardlink => "hardlink",
        Method::Symlink => "symlink",
        Method::Copy => "copy",
    }
}

/// A new file `name` in `dir` with `mode`, holding `src`'s bytes: a copy-on-write clone
/// (`reflink`), else a kernel copy (`copy_file_range`, through `io::copy`).
fn write_at(
    src: (&Path, Option<BorrowedFd>),
    (dir, name): (&DirAt, &str),
    (mode, len): (u32, u64),
    reflink: bool,
    moved: &dyn Progress,
) -> io::Result<StatKey> {
    let from = open_object(src)?;
    let mut to = dir.create_file(name, mode)?;
    if reflink {
        rustix::fs::ioctl_ficlone(&to, &from).map_err(io::Error::from)?;
        moved.inc(len);
    } else {
        copy_bytes(&from, &mut to, len, moved)?;
    }
    set_mode(&to, mode)?;
    Ok(StatKey::of(&to.metadata()?))
}

/// Open the store object at `src` by its name in its folder's held handle where that finds
/// it (one name looked up: a round trip on a network filesystem, where the path costs one per
/// component), else by its path.
fn open_object((src, dir): (&Path, Option<BorrowedFd>)) -> io::Result<fs::File> {
    use rustix::fs::{Mode, OFlags};
    if let (Some(dir), Some(name)) = (dir, src.file_name()) {
        match rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => return Ok(fd.into()),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    fs::File::open(src)
}

/// Copy all of `from` into `to` with `copy_file_range` called directly: `io::copy` would
/// first stat both files and read their flags (four calls a file). Falls back to `io::copy`
/// where the kernel or the filesystems refuse it.
/// `len` is the object's size: once that much is copied, no call is spent to find the end.
/// At most [`COPY_CHUNK`] bytes a call, each counted on `moved` as it lands: a big model's copy
/// moves its bar, and a file under the chunk size still takes one call.
fn copy_bytes(
    from: &fs::File,
    to: &mut fs::File,
    len: u64,
    moved: &dyn Progress,
) -> io::Result<()> {
    use rustix::io::Errno;
    let mut copied = 0u64;
    loop {
        if copied == len && len > 0 {
            return Ok(());
        }
        match rustix::fs::copy_file_range(from, None, &*to, None, COPY_CHUNK) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                copied += n as u64;
                moved.inc(n as u64);
            }
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP | Errno::PERM)
                if copied == 0 =>
            {
                let mut counted = crate::report::ProgressRead::new(from, moved);
                let mut out = io::BufWriter::with_capacity(1 << 20, &mut *to);
                io::copy(&mut counted, &mut out)?;
                return io::Write::flush(&mut out);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The most one `copy_file_range` call copies: 16 MiB is a fraction of a second on any disk
/// (so the bar moves smoothly), costs a 2 GiB model 128 calls, and every smaller file one.
const COPY_CHUNK: usize = 16 << 20;

/// Give a file just created with `mode` exactly that mode: the umask masked it at creation,
/// unless the umask takes none of its bits (the usual 022 and 002), which saves the call.
fn set_mode(f: &fs::File, mode: u32) -> io::Result<()> {
    if umask().is_some_and(|u| u & mode == 0) {
        return Ok(());
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// The process's umask, read once from /proc (setting it to read it would race the other
/// threads); `None` where /proc does not say.
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// Create an empty file `name` in `dir` (never linked: a hardlinked empty file is one inode
/// shared by every `__init__.py` of every version, and one write breaks them all).
pub fn create_empty(dir: &DirAt, name: &str, exec: bool) -> Result<(Method, StatKey)> {
    let mode = if exec { 0o755 } else { 0o644 };
    let make = || {
        let f = dir.create_file(name, mode)?;
        set_mode(&f, mode)?;
        Ok(StatKey::of(&f.metadata()?))
    };
    let stat = make().ctx("create", &dir.path().join(name))?;
    Ok((Method::Copy, stat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_on_component_boundaries() {
        let p = LinkPolicy {
            default: LinkMode::Reflink,
            rules: vec![
                LinkPolicy::parse_rule("venv=hardlink").unwrap(),
                LinkPolicy::parse_rule("venv/bin/=copy").unwrap(),
            ],
        };
        assert_eq!(p.mode_for("venv/lib/x.py").1, LinkMode::Hardlink);
        assert_eq!(p.mode_for("venv/bin/python").1, LinkMode::Copy);
        assert_eq!(p.mode_for("venv2/x").1, LinkMode::Reflink);
        assert_eq!(p.mode_for("main.py"), ("", LinkMode::Reflink));
        assert!(LinkPolicy::parse_rule("../x=copy").is_err());
        assert!(LinkPolicy::parse_rule("x=teleport").is_err());
    }

    #[test]
    fn configs_and_records_are_copied() {
        assert!(rewritten_in_place(
            "venv/lib/python3.11/site-packages/x-1.0.dist-info/RECORD",
            10_000
        ));
        assert!(rewritten_in_place("venv/pyvenv.cfg", 100));
        assert!(rewritten_in_place("custom_nodes/n/config.json", 1000));
        assert!(!rewritten_in_place("models/x.json", 10 << 20));
        assert!(!rewritten_in_place("venv/lib/x.py", 100));
    }
}
