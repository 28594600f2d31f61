#!/usr/bin/env bash
# Round trips per entry on a file system with network-like metadata latency: the store on a
# FUSE passthrough (scripts/bench/latfs.py) that sleeps DELAY_MS on every metadata call and
# counts each, as a RunPod network volume (MooseFS over FUSE) would cost them.
#
#   scripts/bench/latency.sh [WORKDIR]     (default /work/comfystore-lat; needs root, /dev/fuse)
#
# Layouts: (a) the store on the latency FS, the install and DEST on local disk (RunPod's
# usual layout: the shared store on the volume, the version on the pod's disk); (b) the store,
# the install and DEST all on it. Each command runs once with the counts reset before and
# read after; the table gives FUSE calls per entry by type, the wall time and its ratio to
# the floor on the same file systems (cp -a / cp -al of a made copy, find -printf, stat of
# every file). The install is lock.sh's shape made small: ComfyUI as a git repo of 200 files,
# 2 custom nodes of 30, a venv holding gen_tree.py's tree of FILES files, 2 models of 4 MiB.
#
# TABLE_ONLY=RESULTS_DIR prints the table of an earlier run again.
# Knobs: FILES (20000), DELAY_MS (1; 0 counts fast: the counts hardly depend on it, see
# docs/performance.md), ATTR_TIMEOUT (1) / ENTRY_TIMEOUT (0) (MooseFS's defaults; 0 0 is the
# worst case), LAYOUTS ("a b"), COMFYSTORE (a binary; default: cargo build --release),
# LATFS_PY (a python with fusepy; default /work/latenv/bin/python, else python3).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/work/comfystore-lat}
FILES=${FILES:-20000}
DELAY_MS=${DELAY_MS:-1}
LAYOUTS=${LAYOUTS:-a b}
NAME=latency
table() { # RESULTS_DIR: the markdown table of a run's counts
    python3 - "$1" <<'PY'
import json, pathlib, sys
res = pathlib.Path(sys.argv[1])
entries = dict((l.split()[0], int(l.split()[2])) for l in (res / "entries.txt").read_text().splitlines())
rows = [l.split("|") for l in (res / "rows.txt").read_text().splitlines()]
conf = dict(l.split("=", 1) for l in (res / "conf.txt").read_text().split())
# Only the calls on the paths the command works on: anything else on the mount meanwhile
# (another user's find or du over the disk) is left out and counted apart.
paths = {"cp -a": {"made", "F"}, "cp -al": {"made", "F"}, "find -printf": {"D"},
         "stat every file": {"C"}, "lock (unchanged)": {"S", "C"}}
groups = [("lookup+getattr", ["getattr"]), ("readdir", ["opendir", "readdir", "releasedir"]),
          ("open/create", ["open", "create"]), ("close", ["flush", "release"]),
          ("mkdir", ["mkdir"]), ("link/symlink", ["link", "symlink"]),
          ("unlink/rename/rmdir", ["unlink", "rename", "rmdir"]), ("fsync", ["fsync", "fsyncdir"]),
          ("xattr", ["getxattr", "listxattr", "setxattr", "removexattr"])]
times = {(r[0], r[1]): float(r[3]) for r in rows}
print(f"delay {conf['delay_ms']} ms per metadata call; attr timeout {conf['attr']} s, "
      f"entry timeout {conf['entry']} s; {conf['files']} generated files\n")
print("| layout | command | entries | FUSE calls | per entry | " + " | ".join(g for g, _ in groups)
      + " | other | read+write | wall s | ratio | load |")
print("|---|---|---:|---:|---:|" + "---:|" * len(groups) + "---:|---:|---:|---:|---:|")
for layout, what, floor, wall, load in rows:
    keep = paths.get(what, {"S", "D"}) | {""}
    ops, foreign = {}, 0
    for k, v in json.loads((res / f"{layout}-{what}.json").read_text())["by_place"].items():
        op, place = k.split(" ", 1)
        if place.strip("/").split("/")[0] in keep:
            ops[op] = ops.get(op, 0) + v
        else:
            foreign += v
    n = entries[layout]
    data = ops.get("read", 0) + ops.get("write", 0)
    meta = sum(ops.values()) - data
    seen = set()
    cells = []
    for _, keys in groups:
        seen.update(keys)
        cells.append(f"{sum(ops.get(k, 0) for k in keys) / n:.2f}")
    other = sum(v for k, v in ops.items() if k not in seen and k not in ("read", "write"))
    ratio = f"{float(wall) / times[(layout, floor)]:.2f}×" if floor else "floor"
    print(f"| {layout} | {what} | {n} | {meta} | {meta / n:.2f} | " + " | ".join(cells)
          + f" | {other / n:.2f} | {data / n:.2f} | {float(wall):.2f} | {ratio} | {load} |")
    if foreign:
        print(f"{layout} {what}: {foreign} calls elsewhere on the mount left out", file=sys.stderr)
PY
}
if [ -n "${TABLE_ONLY:-}" ]; then table "$TABLE_ONLY"; exit; fi
. "$REPO/scripts/bench/lib.sh"
[ -n "$BIN" ] || { echo "no comfystore binary" >&2; exit 2; }
PY=${LATFS_PY:-/work/latenv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c 'import fuse' 2>/dev/null || {
    echo "latfs.py needs fusepy (pip install fusepy) and libfuse2 (apt install libfuse2 fuse3)" >&2
    exit 2
}

BACK=$WORK/back MNT=$WORK/mnt LOCAL=$WORK/local COUNTS=$WORK/counts.json
for d in "$MNT"; do fusermount -u "$d" 2>/dev/null || true; done
rm -rf "$BACK" "$LOCAL" "$WORK"/counts*; mkdir -p "$BACK" "$MNT" "$LOCAL"
echo 0 >"$COUNTS.delay"
"$PY" "$REPO/scripts/bench/latfs.py" "$BACK" "$MNT" --delay-ms 0 --counts "$COUNTS" \
    --attr-timeout "${ATTR_TIMEOUT:-1}" --entry-timeout "${ENTRY_TIMEOUT:-0}" \
    >"$RESULTS/latfs.log" 2>&1 &
FS_PID=$!
unmount() { fusermount -u "$MNT" 2>/dev/null || true; wait "$FS_PID" 2>/dev/null || true; }
trap 'unmount; cleanup' EXIT
for _ in $(seq 50); do mountpoint -q "$MNT" && break; sleep 0.1; done
mountpoint -q "$MNT" || { cat "$RESULTS/latfs.log" >&2; exit 2; }

delay() { # MS: reset the counts and set the delay (the signal is taken by a thread: wait)
    echo "$1" >"$COUNTS.delay"; kill -USR2 "$FS_PID"; sleep 0.3
}
counts() { # FILE: the counts since the last reset
    rm -f "$COUNTS"; kill -USR1 "$FS_PID"
    for _ in $(seq 100); do [ -e "$COUNTS" ] && break; sleep 0.05; done
    cp "$COUNTS" "$1"
}

make_install() { # DIR
    local C=$1
    export GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b
    mkdir -p "$C/comfy" "$C/models/checkpoints" "$C/custom_nodes"
    for i in $(seq 1 200); do head -c $(( (i * 7919) % 60000 + 100 )) /dev/urandom >"$C/comfy/f$i.py"; done
    printf '/models/\n/custom_nodes/\nvenv/\n__pycache__/\n' >"$C/.gitignore"
    git -C "$C" init -q && git -C "$C" add -A && git -C "$C" commit -qm init
    for n in 1 2; do
        local d=$C/custom_nodes/node$n; mkdir -p "$d"
        for i in $(seq 1 30); do head -c $(( (i * 104729 + n) % 20000 + 50 )) /dev/urandom >"$d/f$i.py"; done
        git -C "$d" init -q && git -C "$d" add -A && git -C "$d" commit -qm init
    done
    python3 -m venv --without-pip "$C/venv"
    python3 "$REPO/scripts/bench/gen_tree.py" "$C/venv/lib/site-tree" --files "$FILES" \
        --dirs $(( FILES / 10 )) >/dev/null
    for i in 1 2; do head -c 4M /dev/urandom >"$C/models/checkpoints/m$i.safetensors"; done
}

# Setup at delay 0, through the mount (its device number is part of the stat cache's key, so
# the store must have seen its objects through it): the install made on the backing folder,
# copied to local disk, both locked (the first locks adopt everything), a made copy for cp.
make_install "$BACK/C"
cp -a "$BACK/C" "$LOCAL/C"
sleep 2.1 # past the stat cache's racy window
S=$MNT/S
"$BIN" -q --store "$S" lock "$MNT/C" --tag bench -o "$WORK/b.lock.json"
"$BIN" -q --store "$S" lock "$LOCAL/C" --tag bench -o "$WORK/a.lock.json"
"$BIN" -q --store "$S" materialize "$WORK/b.lock.json" "$MNT/made"
sleep 2.1

row() { # LAYOUT WHAT FLOOR_WHAT -- CMD...: one counted, timed run of CMD
    local layout=$1 what=$2 floor=$3; shift 4
    delay "$DELAY_MS"
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    counts "$RESULTS/$layout-$what.json"
    echo "$layout|$what|$floor|$(echo "$t1 - $t0" | bc)|$(cut -d' ' -f1 /proc/loadavg)" >>"$RESULTS/rows.txt"
    delay 0
}

: >"$RESULTS/rows.txt"
echo "delay_ms=$DELAY_MS attr=${ATTR_TIMEOUT:-1} entry=${ENTRY_TIMEOUT:-0} files=$FILES" >"$RESULTS/conf.txt"
for L in $LAYOUTS; do
    if [ "$L" = a ]; then C=$LOCAL/C D=$LOCAL/D F=$LOCAL/F; else C=$MNT/C D=$MNT/D F=$MNT/F; fi
    LOCK=$WORK/$L.lock.json
    rm -rf "$F"
    if [ "$L" = a ]; then
        row a "cp -a" "" -- cp -a "$MNT/made" "$F"
    else
        row b "cp -al" "" -- cp -al "$MNT/made" "$F"
    fi
    rm -rf "$F"
    # cp -al and rm -rf of its links moved the objects' ctimes, which the stat cache keys on:
    # a materialize and a remove (which hands the rows on) at delay 0 vouch for them again,
    # so the measured run is the usual one (objects known), not a rehash of each.
    sleep 2.1 # rows of objects changed within 2 s are not kept (racily clean)
    "$BIN" -q --store "$S" materialize "$LOCK" "$WORK/warm" >/dev/null
    "$BIN" -q --store "$S" remove "$WORK/warm" >/dev/null
    row "$L" "materialize (fresh DEST)" "$( [ "$L" = a ] && echo "cp -a" || echo "cp -al")" -- \
        "$BIN" -q --store "$S" materialize "$LOCK" "$D"
    ENTRIES=$(find "$D" | wc -l)
    echo "$L entries $ENTRIES" >>"$RESULTS/entries.txt"
    sleep 2.1
    row "$L" "materialize (intact DEST)" "$( [ "$L" = a ] && echo "cp -a" || echo "cp -al")" -- \
        "$BIN" -q --store "$S" materialize "$LOCK" "$D"
    row "$L" "find -printf" "" -- find "$D" -printf '%s %T@\n'
    row "$L" "status" "find -printf" -- "$BIN" -q --store "$S" status "$D"
    row "$L" "verify" "find -printf" -- "$BIN" -q --store "$S" verify "$LOCK" "$D"
    row "$L" "stat every file" "" -- sh -c "find '$C' -path '*/.git' -prune -o -type f -print0 | xargs -0 stat >/dev/null"
    row "$L" "lock (unchanged)" "stat every file" -- \
        "$BIN" -q --store "$S" lock "$C" --tag bench -o "$WORK/relock-$L.lock.json"
    delay 0
    "$BIN" -q --store "$S" remove "$D" >/dev/null
done

table "$RESULTS" | tee "$RESULTS/table.md"
echo "results: $RESULTS (per-command counts by place in LAYOUT-WHAT.json)" >&2
