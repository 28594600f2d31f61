#!/usr/bin/env bash
# Benchmark a whole real version (ComfyUI 0.3.64 with its torch 2.8 environment: 28k entries,
# ~6 GB) against the tools that make the same folder, in one run on the same data:
#   materialize LOCK D (default link classes: environment linked, sources copied or reflinked)
#   materialize LOCK D --link hardlink (every part linked)            vs  cp -al of a made D
#   the uv path: uv venv + uv pip install --link-mode hardlink --offline (warm uv cache)
#                + cp -a of ComfyUI's sources
#   status D and verify D of the unchanged version                   vs  find D -printf '%s %T@\n'
# and the syscalls of one run of each (strace -c -f).
#
#   scripts/bench/real.sh [WORKDIR]      (default /work/realbench; same filesystem as the store)
#
# Input: a real version made by scripts/real/portable_check.sh; READY=/work/real/READY names
# its store, lock and materialized DEST. That store is only read: WORKDIR/S is a copy of it
# (objects hardlinked, index, roots and locks copied), so runs here never change it.
# Knobs: RUNS=5, COMFYSTORE=target/release/comfystore, PY (the base interpreter the lock's
# environment was built on), UV=uv.
# Before each comparison it notes the load average, and the CPU other processes used meanwhile
# (lib.sh's noise_start/noise_end): a loaded machine makes the figures unreliable, and
# summary.md says so next to them. Results go to target/bench-results/real-<time>.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/work/realbench}
RUNS=${RUNS:-5}
READY=${READY:-/work/real/READY}
NAME=real
COMFYSTORE=${COMFYSTORE:-$REPO/target/release/comfystore}
. "$REPO/scripts/bench/lib.sh"
[ -n "$BIN" ] || { echo "no comfystore binary" >&2; exit 2; }
UV=${UV:-uv}
real_version
PY=${PY:-$(sed -n 's/^home = //p' "$MADE/venv/pyvenv.cfg")/python3}
# The lock's wheels out of the store (for uv), and its requirement list.
[ -d "$WORK/mirror/wheels" ] || { "$BIN" -q --store "$S" mirror "$LOCK" "$WORK/mirror" --only python; rm -rf "$WORK/mirror/bundles"; }
python3 -c "
import json, sys
l = json.load(open(sys.argv[1]))
print(''.join(f\"{p['name']}=={p['version']}\n\" for p in l['python']['packages']), end='')" "$LOCK" >"$WORK/reqs.txt"
# ComfyUI's sources as materialize places them (no venv, no marker), for the uv path's cp -a.
if [ ! -d "$WORK/src" ]; then
    mkdir -p "$WORK/src"
    (cd "$MADE" && tar --exclude=./venv --exclude=./.comfystore-materialized.json -cf - .) | (cd "$WORK/src" && tar xf -)
fi
export UV_CACHE_DIR=$WORK/uvcache
# The same version made with uv from a warm cache: `uvpath D` (a script: hyperfine's sh
# would not see a bash function).
cat >"$WORK/uvpath" <<EOF
#!/bin/sh
set -e
export UV_CACHE_DIR=$UV_CACHE_DIR
"$UV" venv -q --python "$PY" "\$1/venv"
"$UV" pip install -q --python "\$1/venv/bin/python" --link-mode hardlink --offline \\
    --no-index --find-links "$WORK/mirror/wheels" -r "$WORK/reqs.txt"
cp -a "$WORK/src/." "\$1/"
EOF
chmod +x "$WORK/uvpath"
uvpath() { "$WORK/uvpath" "$@"; }
if [ ! -d "$UV_CACHE_DIR" ]; then uvpath "$WORK/uvwarm"; rm -rf "$WORK/uvwarm"; fi

D=$WORK/D
H="hyperfine --style basic --warmup 1 --runs $RUNS"
# Each run starts from no D. A materialized D goes with `comfystore remove`, which hands the
# stat-cache rows of the objects it unlinked on; `rm -rf` of a hardlinked D moves every
# object's ctime, so the next materialize rehashes them (measured separately below).
clean="$BIN -q --store $S remove $D >/dev/null 2>&1 || true; rm -rf $D; $BIN -q --store $S root rm materialized >/dev/null 2>&1 || true; sync"
rmrf="rm -rf $D; $BIN -q --store $S root rm materialized >/dev/null 2>&1 || true; sync"
load() { echo "$1: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/noise.txt" >&2; }

load make; noise_start
$H --export-json "$RESULTS/make.json" --prepare "$clean" \
    -n "uv path" "$WORK/uvpath $D" \
    -n "materialize (default links)" "$BIN -q --store $S materialize $LOCK $D" \
    -n "materialize --link hardlink" "$BIN -q --store $S materialize $LOCK $D --link hardlink --venv-link hardlink --models-link hardlink" \
    -n "cp -al" "cp -al $MADE $D"
noise_end make
load rmrf; noise_start
hyperfine --style basic --runs 3 --export-json "$RESULTS/rmrf.json" --prepare "$rmrf" \
    -n "materialize after rm -rf of the previous D" "$BIN -q --store $S materialize $LOCK $D"
noise_end rmrf

eval "$clean"; "$BIN" -q --store "$S" materialize "$LOCK" "$D"
load check; noise_start
$H --export-json "$RESULTS/check.json" \
    -n "find -printf" "find $D -printf '%s %T@\n' >/dev/null" \
    -n "status" "$BIN -q --store $S status $D" \
    -n "verify" "$BIN -q --store $S verify $LOCK $D"
noise_end check

# Syscalls of one run of each (not timed: strace slows them down).
for what in materialize hardlink cp uv status verify find; do
    eval "$clean"
    case $what in
        status|verify|find) "$BIN" -q --store "$S" materialize "$LOCK" "$D" ;;
    esac
    case $what in
        materialize) cmd=("$BIN" -q --store "$S" materialize "$LOCK" "$D") ;;
        hardlink) cmd=("$BIN" -q --store "$S" materialize "$LOCK" "$D" --link hardlink --venv-link hardlink --models-link hardlink) ;;
        cp) cmd=(cp -al "$MADE" "$D") ;;
        uv) cmd=("$WORK/uvpath" "$D") ;;
        status) cmd=("$BIN" -q --store "$S" status "$D") ;;
        verify) cmd=("$BIN" -q --store "$S" verify "$LOCK" "$D") ;;
        find) cmd=(sh -c "find $D -printf '%s %T@\n' >/dev/null") ;;
    esac
    strace -f -c -o "$RESULTS/strace-$what.txt" "${cmd[@]}" >/dev/null
done
eval "$clean"

python3 - "$RESULTS" <<'PY' | tee "$RESULTS/summary.md"
import json, sys, os, re
r = sys.argv[1]
def rows(name):
    return json.load(open(os.path.join(r, name)))["results"]
def med(rs, cmd):
    return next(x for x in rs if x["command"] == cmd)
print("| work | median s (min-max) | ratio |\n|---|---|---|")
mk = rows("make.json") + rows("rmrf.json")
uv, cp = med(mk, "uv path"), med(mk, "cp -al")
for x in mk:
    ref = cp if x["command"] in ("cp -al", "materialize --link hardlink") else uv
    print(f"| {x['command']} | {x['median']:.3f} ({x['min']:.3f}-{x['max']:.3f}) | {x['median']/ref['median']:.2f}x {'uv' if ref is uv else 'cp -al'} |")
ck = rows("check.json")
fd = med(ck, "find -printf")
for x in ck:
    print(f"| {x['command']} | {x['median']:.3f} ({x['min']:.3f}-{x['max']:.3f}) | {x['median']/fd['median']:.2f}x find -printf |")
print("\n| run | syscalls | statx | openat | linkat | mkdir(at) | read |\n|---|---:|---:|---:|---:|---:|---:|")
for f in sorted(os.listdir(r)):
    m = re.match(r"strace-(.*)\.txt", f)
    if not m: continue
    calls = {}
    for line in open(os.path.join(r, f)):
        p = line.split()
        if len(p) >= 5 and p[-1].isidentifier() and p[3].isdigit():
            calls[p[-1]] = int(p[3])
        elif len(p) >= 4 and p[-1] == "total":
            calls["total"] = int(p[2])
    st = calls.get("statx", 0) + calls.get("newfstatat", 0) + calls.get("lstat", 0)
    print(f"| {m.group(1)} | {calls.get('total', 0):,} | {st:,} | {calls.get('openat', 0) + calls.get('openat2', 0):,} | {calls.get('linkat', 0):,} | {calls.get('mkdirat', 0) + calls.get('mkdir', 0):,} | {calls.get('read', 0):,} |")
PY
cat "$RESULTS/noise.txt"
echo "results: $RESULTS" >&2
