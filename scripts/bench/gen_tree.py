#!/usr/bin/env python3
"""Generate a deterministic, ComfyUI-venv-shaped tree for scripts/bench/store.sh.

    gen_tree.py DEST [--files 20000] [--dirs 2000] [--seed 20251124]

Shape (modelled on the uv venv in shared/reference/baselines.md: 9.9k files, 2k dirs,
median file 3,976 B, 45 % of files <= 3 KiB):
  * ~2,000 directories: bin/, include/, lib/python3.11/site-packages/<60 packages>/<nested>
  * 20,000 regular files. Sizes:
      3 % empty (__init__.py), 42 % 100 B - 3 KiB, 35 % 3 - 16 KiB,
      17 % 16 - 100 KiB, 3 % 100 KiB - 1 MiB (all log-uniform within a band)
    -> with the default seed: median file 4,108 B, 501,055,840 B in total.
  * about 4 % of the non-empty small files repeat one of 30 shared contents (LICENSE-like),
    so the store sees some duplicate content, as in a real venv.
  * 60 executables (mode 0755): 20 scripts in bin/ and 40 extension modules (.so).
  * 8 symlinks (bin/python -> python3.11, lib64 -> lib, a few inside packages).

Content is sliced out of a seeded 64 MiB pseudo-random pool at seeded offsets, so every
run produces byte-identical files (and so identical object ids) on any machine.
"""

import argparse
import math
import os
import random
import sys

POOL_SIZE = 64 << 20


def log_uniform(rng, lo, hi):
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def file_size(rng):
    u = rng.random()
    if u < 0.03:
        return 0
    if u < 0.45:
        return log_uniform(rng, 100, 3 << 10)
    if u < 0.80:
        return log_uniform(rng, 3 << 10, 16 << 10)
    if u < 0.97:
        return log_uniform(rng, 16 << 10, 100 << 10)
    return log_uniform(rng, 100 << 10, 1 << 20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dest")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dirs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20251124)
    a = ap.parse_args()

    rng = random.Random(a.seed)
    pool = random.Random(a.seed + 1).randbytes(POOL_SIZE)
    shared = [pool[i * 4096 : i * 4096 + rng.randint(1000, 12000)] for i in range(30)]

    root = a.dest
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"{root} exists and is not empty")
    site = "lib/python3.11/site-packages"
    dirs = ["bin", "include", "lib", "lib/python3.11", site]
    packages = [f"{site}/pkg{p:02d}" for p in range(60)]
    dirs += packages
    # Grow nested sub-packages under random existing package dirs until we have enough dirs.
    pkg_dirs = list(packages)
    while len(dirs) < a.dirs:
        parent = rng.choice(pkg_dirs)
        if parent.count("/") > 8:
            continue
        d = f"{parent}/sub{len(dirs)}"
        dirs.append(d)
        pkg_dirs.append(d)
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)

    # Skewed placement: some directories hold many files, most hold a few.
    weights = [rng.paretovariate(1.2) for _ in pkg_dirs]
    n_exec_bin, n_exec_so = 20, 40
    created = 0
    total = 0
    sizes = []

    def write(rel, data, mode=0o644):
        nonlocal created, total
        p = os.path.join(root, rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        created += 1
        total += len(data)
        sizes.append(len(data))

    def content(size):
        if size == 0:
            return b""
        if size < (16 << 10) and rng.random() < 0.04:
            return rng.choice(shared)
        off = rng.randrange(0, POOL_SIZE - size)
        return pool[off : off + size]

    for i in range(n_exec_bin):
        write(f"bin/tool{i:02d}", b"#!/bin/sh\n" + content(log_uniform(rng, 200, 2000)), 0o755)
    chosen = rng.choices(pkg_dirs, weights=weights, k=a.files - n_exec_bin)
    for i, d in enumerate(chosen):
        if i < n_exec_so:
            write(f"{d}/_ext{i}.cpython-311-x86_64-linux-gnu.so",
                  content(log_uniform(rng, 100 << 10, 1 << 20)), 0o755)
            continue
        size = file_size(rng)
        name = "__init__.py" if size == 0 else f"m{i}.py"
        if size == 0 and os.path.exists(os.path.join(root, d, name)):
            name = f"empty{i}.typed"
        write(f"{d}/{name}", content(size))

    links = [
        ("bin/python3.11", "/usr/bin/python3"),
        ("bin/python", "python3.11"),
        ("bin/python3", "python3.11"),
        ("lib64", "lib"),
    ]
    for k in range(4):
        d = packages[k]
        links.append((f"{d}/link{k}", "../pkg10/__init__.py"))
    for rel, target in links:
        os.symlink(target, os.path.join(root, rel))

    sizes.sort()
    print(
        f"generated {root}: {created} files, {len(dirs)} dirs, {len(links)} symlinks, "
        f"{total} bytes, median file {sizes[len(sizes) // 2]} B"
    )


if __name__ == "__main__":
    main()
