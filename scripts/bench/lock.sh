#!/usr/bin/env bash
# Benchmark `comfystore lock` against its physical floors on the same ComfyUI-shaped install,
# on a journaled ext4 loop mount holding both the install and the store (as on a RunPod volume):
#
#   first lock      vs  `openssl dgst -sha256` of the models + `cp -a` of everything else
#                       (reading each model once for its SHA-256, and writing each small file once)
#   unchanged relock vs `find -type f | xargs stat` over the install (the "stat per file" floor)
#   disk used by the first lock vs the models' size (adoption must not copy them)
#
#   scripts/bench/lock.sh [WORKDIR]     (default /tmp/comfystore-lbench; needs root)
#
# Install: ComfyUI as a git repo of 548 files, 8 custom nodes as git repos of 60 files each, a
# venv with a 20k-file site-packages (gen_tree.py) and three 1 GiB models.
# Results (hyperfine JSON and disk figures) go to target/bench-results/lock-<time>.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/tmp/comfystore-lbench}
RUNS=${RUNS:-5}
NAME=lock
. "$REPO/scripts/bench/lib.sh"
M=$WORK/mnt
mkfs_mount ext4 "$WORK/ext4.img" "$M"

export GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@b GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@b
C=$M/ComfyUI
mkdir -p "$C/comfy" "$C/models/checkpoints" "$C/custom_nodes"
for i in $(seq 1 548); do head -c $(( (i * 7919) % 60000 + 100 )) /dev/urandom > "$C/comfy/f$i.py"; done
printf '/models/\n/custom_nodes/\nvenv/\n__pycache__/\n' > "$C/.gitignore"
git -C "$C" init -q && git -C "$C" add -A && git -C "$C" commit -qm init
for n in $(seq 1 8); do
    d=$C/custom_nodes/node$n; mkdir -p "$d"
    for i in $(seq 1 60); do head -c $(( (i * 104729 + n) % 20000 + 50 )) /dev/urandom > "$d/f$i.py"; done
    git -C "$d" init -q && git -C "$d" add -A && git -C "$d" commit -qm init
done
python3 -m venv --without-pip "$C/venv"
python3 "$REPO/scripts/bench/gen_tree.py" "$C/venv/lib/site-tree" >/dev/null
for i in 1 2 3; do head -c 1G /dev/urandom > "$C/models/checkpoints/m$i.safetensors"; done
sync; sleep 3   # past the stat cache's racy window
FILES=$(find "$C" -type f -not -path '*/.git/*' | wc -l)
echo "install: $FILES files" | tee "$RESULTS/summary.txt"

S=$M/store
H="hyperfine --style basic --runs $RUNS"
# First lock. Between runs the store is deleted: the models lose their second link and get
# their mode back, so every run adopts them again.
reset_store="rm -rf $S $M/floor; chmod 644 $C/models/checkpoints/*; sync"
$H --export-json "$RESULTS/first-lock.json" --prepare "$reset_store" \
   -n "openssl sha256 models + cp -a rest" \
   "openssl dgst -sha256 $C/models/checkpoints/* >/dev/null && mkdir -p $M/floor && cp -a $C/comfy $C/custom_nodes $C/venv $M/floor/" \
   -n "lock (first)" "$BIN -q --store $S lock $C --tag bench -o $M/bench.lock.json"

# Disk use of one first lock.
eval "$reset_store"
before=$(df --output=used -B1 "$M" | tail -1)
"$BIN" -q --store "$S" lock "$C" --tag bench -o "$M/bench.lock.json"
sync
after=$(df --output=used -B1 "$M" | tail -1)
models=$(du -cb "$C"/models/checkpoints/* | tail -1 | cut -f1)
echo "first lock used $(( (after - before) / 1048576 )) MiB of disk; models are $(( models / 1048576 )) MiB" | tee -a "$RESULTS/summary.txt"
sleep 3

# Unchanged relock.
$H --warmup 1 --export-json "$RESULTS/relock.json" \
   -n "find | xargs stat" "find $C -type f -print0 | xargs -0 stat > /dev/null" \
   -n "lock (unchanged)" "$BIN -q --store $S lock $C --tag bench -o $M/bench.lock.json"

python3 - "$RESULTS" <<'EOF' | tee -a "$RESULTS/summary.txt"
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
for name in ["first-lock", "relock"]:
    r = json.loads((d / f"{name}.json").read_text())["results"]
    floor, ours = r[0], r[1]
    print(f"{name}: {ours['command']} {ours['median']:.3f}s vs {floor['command']} {floor['median']:.3f}s = {ours['median']/floor['median']:.2f}x")
EOF
echo "results in $RESULTS"
