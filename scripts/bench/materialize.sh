#!/usr/bin/env bash
# Benchmark `comfystore materialize`, `status` and `remove` against their physical floors on
# the same ComfyUI-shaped tree in one run:
#   ext4 (journaled loop mount): materialize --link hardlink vs `cp -al`,
#                                materialize --link copy vs `cp -a`,
#                                remove vs `rm -rf`, status vs `find -type f | xargs stat`
#                                (and `find -printf` as a stricter floor)
#   XFS reflink=1 (loop mount):  materialize --link reflink vs `cp -a --reflink=always`
#
#   scripts/bench/materialize.sh [WORKDIR]     (default /tmp/comfystore-mbench; needs root)
#
# Tree: a 20k-file venv-shaped tree (gen_tree.py), a 548-file-like source part and three
# 1 GiB model files. Results (hyperfine JSON) go to target/bench-results/materialize-<time>.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/tmp/comfystore-mbench}
RUNS=${RUNS:-5}
NAME=materialize
. "$REPO/scripts/bench/lib.sh"

make_data() { # dir: ComfyUI-shaped tree
    local d=$1
    python3 "$REPO/scripts/bench/gen_tree.py" "$d/venv" >/dev/null
    mkdir -p "$d/comfy" "$d/models/checkpoints"
    for i in $(seq 1 548); do head -c $(( (i * 7919) % 60000 + 100 )) /dev/urandom > "$d/comfy/f$i.py"; done
    for i in 1 2 3; do head -c 1G /dev/urandom > "$d/models/checkpoints/m$i.safetensors"; done
}

bench_fs() { # kind
    local kind=$1 M=$WORK/mnt-$1
    mkfs_mount "$kind" "$WORK/$kind.img" "$M"
    make_data "$M/data"
    sleep 3   # past the stat cache's racy window
    local S=$M/store
    TREE=$("$BIN" -q --store "$S" add "$M/data" | cut -f1)
    echo "$kind tree $TREE: $(find "$M/data" -type f | wc -l) files" >&2
    local H="hyperfine --style basic --warmup 1 --runs $RUNS"
    if [ "$kind" = ext4 ]; then
        $H --export-json "$RESULTS/ext4-hardlink.json" \
           --prepare "rm -rf $M/d1; $BIN -q --store $S root rm materialized 2>/dev/null; sync" \
           -n "cp -al" "cp -al $M/data $M/d1" \
           -n "materialize --link hardlink" "$BIN -q --store $S materialize $TREE $M/d1 --link hardlink" \
           --prepare "rm -rf $M/d1; sync"
        $H --export-json "$RESULTS/ext4-copy.json" --prepare "rm -rf $M/d1; sync" \
           -n "cp -a" "cp -a $M/data $M/d1" \
           -n "materialize --link copy" "$BIN -q --store $S materialize $TREE $M/d1 --link copy"
        # status of an unchanged hardlinked tree vs stat of every file
        rm -rf "$M/d1"; "$BIN" -q --store "$S" materialize "$TREE" "$M/d1" --link hardlink
        $H --export-json "$RESULTS/ext4-status.json" \
           -n "find | xargs stat" "find $M/d1 -type f -print0 | xargs -0 stat > /dev/null" \
           -n "find -printf" "find $M/d1 -printf '%s\n' > /dev/null" \
           -n "status" "$BIN -q --store $S status $M/d1"
        # remove vs rm -rf of a hardlinked tree
        $H --export-json "$RESULTS/ext4-remove.json" \
           --prepare "rm -rf $M/d1; $BIN -q --store $S materialize $TREE $M/d1 --link hardlink; sync" \
           -n "rm -rf" "rm -rf $M/d1" \
           -n "remove" "$BIN -q --store $S remove $M/d1"
    else
        $H --export-json "$RESULTS/xfs-reflink.json" --prepare "rm -rf $M/d1; sync" \
           -n "cp -a --reflink=always" "cp -a --reflink=always $M/data $M/d1" \
           -n "materialize --link reflink" "$BIN -q --store $S materialize $TREE $M/d1 --link reflink"
    fi
}

bench_fs ext4
bench_fs xfs

python3 - "$RESULTS" <<'PY'
import json, sys, os, glob
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    rs = json.load(open(f))["results"]
    base = rs[0]["median"]
    print(f"\n{os.path.basename(f)}")
    for r in rs:
        print(f"  {r['command']:<32} {r['median']:8.3f} s ({r['min']:.3f}-{r['max']:.3f})  {r['median']/base:5.2f}x")
PY
echo "results: $RESULTS" >&2
