#!/usr/bin/env python3
"""A FUSE passthrough with network-like metadata latency, counting every call it answers.

    latfs.py BACKING MOUNTPOINT [--delay-ms 1] [--data-delay-ms 0] [--counts FILE]
             [--attr-timeout 1] [--entry-timeout 0] [--negative-timeout 0] [--foreground]

Every metadata call the kernel sends (getattr, which the high-level libfuse API also uses to
answer LOOKUP, readdir, mkdir, unlink, rename, link, create, open, release, fsync, statfs,
access, xattrs, posix locks, ...) sleeps --delay-ms before it is answered, as a network file
system's round trip to its metadata server would; read/write sleep --data-delay-ms (0 by
default: the question is round trips, not bandwidth).

Counts: SIGUSR1 writes {"seq": n, "ops": {op: count}, "by_place": {"op place": count}} to
--counts (temp file then rename, so a reader never sees half of it); SIGUSR2 sets the counts
to zero. "place" is the path's first component (two for a comfystore store: "S/objects",
"S/locks", "S/index.redb"), to tell which part of a tree the calls go to. The counts are also
written at unmount.

Kernel caches (the choice is deliberate; see docs/performance.md, "Network-like latency"):
the defaults are MooseFS's (mfsattrcacheto 1 s, mfsentrycacheto 0 s, negative 0 s), so a
`stat` of a path costs a LOOKUP every time, and a getattr after it within a second is free.
--attr-timeout 0 --entry-timeout 0 is the worst case.

Why Python (fusepy over libfuse2) rather than a Rust tool: a bench tool, not shipped; fusepy
is one PyPI package with no build step, and at 1 ms per call Python's own cost per call
(~50 us) is small beside the delay. libfuse's multithreaded loop runs the calls in parallel,
and a sleeping call holds no lock, so a client that asks in parallel waits in parallel.
Needs: apt `libfuse2` (and `fuse3` or `fuse` for fusermount), PyPI `fusepy`.
"""

import argparse
import collections
import errno
import json
import os
import signal
import threading
import time

from fuse import FUSE, FuseOSError, Operations


class LatFS(Operations):
    def __init__(self, root, delay, data_delay, counts_path):
        self.root = os.path.realpath(root)
        self.delay = delay
        self.data_delay = data_delay
        self.counts_path = counts_path
        self.mu = threading.Lock()
        self.ops = collections.Counter()
        self.by_place = collections.Counter()
        self.seq = 0

    # -- counting -------------------------------------------------------------------------
    def _count(self, op, path, delay):
        parts = [p for p in path.split("/") if p]
        place = "/".join(parts[:2]) if len(parts) > 2 else "/".join(parts[:1]) or "/"
        with self.mu:
            self.ops[op] += 1
            self.by_place[f"{op} {place}"] += 1
        if delay:
            time.sleep(delay)

    def dump(self):
        with self.mu:
            self.seq += 1
            doc = {"seq": self.seq, "ops": dict(self.ops), "by_place": dict(self.by_place)}
        tmp = self.counts_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.rename(tmp, self.counts_path)

    def reset(self):
        with self.mu:
            self.ops.clear()
            self.by_place.clear()

    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def __call__(self, op, path, *args):
        # Every call passes here: count it, sleep its round trip, then do it on the backing
        # folder. OSError becomes the errno the kernel hands back to the caller.
        data = op in ("read", "write")
        if op not in ("init", "destroy"):
            self._count(op, path, self.data_delay if data else self.delay)
        if not hasattr(self, op):
            raise FuseOSError(errno.ENOSYS)
        try:
            return getattr(self, op)(path, *args)
        except OSError as e:
            raise FuseOSError(e.errno or errno.EIO)

    # -- metadata -------------------------------------------------------------------------
    def access(self, path, mode):
        if not os.access(self._full(path), mode, follow_symlinks=False):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        os.lchown(self._full(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path)) if fh is None else os.fstat(fh)
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
        out = {k: getattr(st, k) for k in keys}
        # Nanosecond times: comfystore's stat cache keys on them.
        out["st_atime"] = st.st_atime_ns / 1e9
        out["st_mtime"] = st.st_mtime_ns / 1e9
        out["st_ctime"] = st.st_ctime_ns / 1e9
        return out

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path))

    def readlink(self, path):
        return os.readlink(self._full(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._full(path), mode, dev)

    def mkdir(self, path, mode):
        os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        os.rmdir(self._full(path))

    def unlink(self, path):
        os.unlink(self._full(path))

    def symlink(self, target, source):
        # fusepy passes (link path, target)
        os.symlink(source, self._full(target))

    def rename(self, old, new):
        os.rename(self._full(old), self._full(new))

    def link(self, target, source):
        # fusepy passes (new link path, existing path)
        os.link(self._full(source), self._full(target))

    def utimens(self, path, times=None):
        os.utime(self._full(path), ns=None if times is None else tuple(int(t * 1e9) for t in times),
                 follow_symlinks=False)

    def truncate(self, path, length, fh=None):
        if fh is None:
            os.truncate(self._full(path), length)
        else:
            os.ftruncate(fh, length)

    def statfs(self, path):
        sv = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(sv, k) for k in keys}

    def getxattr(self, path, name, position=0):
        try:
            return os.getxattr(self._full(path), name, follow_symlinks=False)
        except OSError as e:
            raise FuseOSError(errno.ENODATA if e.errno == errno.ENODATA else e.errno)

    def listxattr(self, path):
        return os.listxattr(self._full(path), follow_symlinks=False)

    def setxattr(self, path, name, value, options, position=0):
        os.setxattr(self._full(path), name, value, options, follow_symlinks=False)

    def removexattr(self, path, name):
        os.removexattr(self._full(path), name, follow_symlinks=False)

    # -- files ----------------------------------------------------------------------------
    def open(self, path, flags):
        return os.open(self._full(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._full(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        pass

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, datasync, fh):
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def opendir(self, path):
        return 0

    def releasedir(self, path, fh):
        pass

    def fsyncdir(self, path, datasync, fh):
        fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # No lock(): the kernel then keeps POSIX and flock locks local (one host). libfuse's
    # high-level API would otherwise call lock(F_UNLCK) on every close, which is no round
    # trip of a real network file system. comfystore's locks (flock) show as the open,
    # create and release of their lock files.


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--delay-ms", type=float, default=1.0)
    ap.add_argument("--data-delay-ms", type=float, default=0.0)
    ap.add_argument("--counts", default=None, help="default: MOUNTPOINT's parent/latfs-counts.json")
    ap.add_argument("--attr-timeout", type=float, default=1.0)
    ap.add_argument("--entry-timeout", type=float, default=0.0)
    ap.add_argument("--negative-timeout", type=float, default=0.0)
    ap.add_argument("--foreground", action="store_true", default=True)
    a = ap.parse_args()
    counts = a.counts or os.path.join(os.path.dirname(os.path.abspath(a.mountpoint)), "latfs-counts.json")
    fs = LatFS(a.backing, a.delay_ms / 1000, a.data_delay_ms / 1000, os.path.abspath(counts))

    # libfuse's loop runs in C: Python signal handlers would never run. Block the two signals
    # in every thread (the mask is inherited by libfuse's workers) and take them with sigwait
    # in a thread of our own.
    sigs = {signal.SIGUSR1, signal.SIGUSR2}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)

    def waiter():
        while True:
            s = signal.sigwait(sigs)
            if s == signal.SIGUSR1:
                fs.dump()
            else:
                fs.reset()
                # A new delay, if asked for: the mount must stay (its device number keys
                # comfystore's stat cache), so the setup runs at 0 and the measured runs at 1.
                try:
                    with open(fs.counts_path + ".delay") as f:
                        fs.delay = float(f.read()) / 1000
                except (OSError, ValueError):
                    pass

    threading.Thread(target=waiter, daemon=True).start()
    FUSE(fs, a.mountpoint, foreground=True, nothreads=False, use_ino=True, allow_other=True,
         default_permissions=True, attr_timeout=a.attr_timeout, entry_timeout=a.entry_timeout,
         negative_timeout=a.negative_timeout, fsname="latfs")
    fs.dump()


if __name__ == "__main__":
    main()
