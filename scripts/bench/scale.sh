#!/usr/bin/env bash
# How materialize and status grow with the number of entries: generated trees of SIZES
# entries (default 10000 100000 1000000), each materialized with --link hardlink (against
# `cp -al` of the same tree) and checked with status (against `find -printf`), hyperfine
# medians; a PNG plot of time per size goes to docs/perf-scale.png when PLOT=1.
#
#   scripts/bench/scale.sh [WORKDIR]      (default /work/comfystore-scale; needs root)
#
# The files are small (64-576 bytes, each distinct, 10 per folder, folders 3 deep), so the
# figures are the per-entry cost (metadata), not bytes. FS says where they live:
#   xfs (default)  a sparse XFS image (IMAGE, default WORKDIR.img, IMAGE_SIZE 12G) mounted at
#                  WORKDIR and removed at the end. XFS makes inodes as it needs them (ext4
#                  fixes their number at mkfs) and 1 KiB blocks keep a million small files
#                  in ~1 GB per copy: the source and the store; materialized copies are links
#                  and cost inodes only.
#   tmpfs          WORKDIR as it is (e.g. /dev/shm/...): no disk, but tmpfs counts every hard
#                  link against its inode limit (about 3M on a 24 GB machine), so 1M entries
#                  stop at ~780k links there.
# Knobs: SIZES, RUNS=3, FS, IMAGE, IMAGE_SIZE, COMFYSTORE, PLOT=1 (needs python with
# matplotlib: PYPLOT=/path/to/python).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/work/comfystore-scale}
FS=${FS:-xfs}
SIZES=${SIZES:-10000 100000 1000000}
RUNS=${RUNS:-3}
NAME=scale
. "$REPO/scripts/bench/lib.sh"
[ -n "$BIN" ] || { echo "no comfystore binary" >&2; exit 2; }
if [ "$FS" != tmpfs ]; then
    # lib.sh's cleanup unmounts what is in `mounts` on exit; the image goes with it.
    IMAGE=${IMAGE:-$WORK.img}
    mv "$BIN" "$WORK.bin"; mkdir -p "$WORK"; umount "$WORK" 2>/dev/null || true
    rm -f "$IMAGE"; truncate -s "${IMAGE_SIZE:-12G}" "$IMAGE"
    if [ "$FS" = xfs ]; then mkfs.xfs -q -f -b size=1024 "$IMAGE"; else mkfs.ext4 -q -F -N 4000000 "$IMAGE"; fi
    mount -o loop "$IMAGE" "$WORK"; mounts+=("$WORK")
    BIN=$WORK/comfystore; mv "$WORK.bin" "$BIN"
    trap 'cleanup; rm -f "$IMAGE"' EXIT
fi

gen() { # DIR N: N distinct small files, 10 a folder, 3 levels
    python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"p{i // 10000:03d}", f"m{i // 100 % 100:02d}", f"s{i // 10 % 10}")
    if i % 10 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.py"), "w") as f:
        f.write(f"# {i}\n" + "x" * (64 + i * 7919 % 512))
PY
}

echo "size,what,median_s,min_s,max_s,load,fs" >"$RESULTS/scale.csv"
for n in $SIZES; do
    W=$WORK/$n; rm -rf "$W"; mkdir -p "$W"
    gen "$W/src" "$n"
    sleep 2.1 # past the stat cache's racy window
    tree=$("$BIN" -q --store "$W/S" add "$W/src" | cut -f1)
    # The floor's input: the same tree made once, hardlinked to the store like materialize's.
    "$BIN" -q --store "$W/S" materialize "$tree" "$W/made" --link hardlink
    rm -rf "$W/src"
    load=$(cut -d' ' -f1 /proc/loadavg)
    clean="$BIN -q --store $W/S remove $W/D >/dev/null 2>&1 || rm -rf $W/D"
    hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$RESULTS/make-$n.json" \
        --prepare "$clean; rm -rf $W/D" \
        -n "materialize --link hardlink" "$BIN -q --store $W/S materialize $tree $W/D --link hardlink" \
        -n "cp -al" "cp -al $W/made $W/D"
    rm -rf "$W/D"; "$BIN" -q --store "$W/S" materialize "$tree" "$W/D" --link hardlink
    hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$RESULTS/check-$n.json" \
        -n "status" "$BIN -q --store $W/S status $W/D" \
        -n "find -printf" "find $W/D -printf '%s %T@\n' >/dev/null"
    for j in make check; do
        python3 - "$RESULTS/$j-$n.json" "$n" "$load" "$FS" >>"$RESULTS/scale.csv" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{sys.argv[2]},{r['command']},{r['median']:.4f},{r['min']:.4f},{r['max']:.4f},{sys.argv[3]},{sys.argv[4]}")
PY
    done
    rm -rf "$W"
done
cat "$RESULTS/scale.csv"
if [ "${PLOT:-0}" = 1 ]; then
    "${PYPLOT:-python3}" - "$RESULTS/scale.csv" "$REPO/docs/perf-scale.png" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
fig, ax = plt.subplots(figsize=(7, 4.5))
for what, style in [("materialize --link hardlink", "o-"), ("cp -al", "o--"),
                    ("status", "s-"), ("find -printf", "s--")]:
    pts = sorted((int(r["size"]), float(r["median_s"])) for r in rows if r["what"] == what)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=what)
ax.set_xscale("log"); ax.set_yscale("log")
ax.set_xlabel("entries in the tree"); ax.set_ylabel("seconds (hyperfine median)")
fs = rows[0]["fs"] if rows else "?"
ax.set_title(f"comfystore materialize and status vs. entries ({fs}, 2 cores)")
ax.grid(True, which="both", alpha=0.3); ax.legend()
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)
print("plot:", sys.argv[2])
PY
fi
echo "results: $RESULTS" >&2
