#!/usr/bin/env bash
# Cold environment build (issue 19): the real lock's 74 wheels (torch 2.8 CPU, 4.2 GB) into
# an environment of 24.6k files (5.8 GB), in one run on the same filesystem:
#   (a) uv venv + uv pip install --offline --no-index --no-deps -r reqs --find-links WHEELS
#       into an empty venv, with an empty uv cache (UV_CACHE_DIR = a fresh folder)
#   (b) comfystore env LOCK: the environment built and stored in a store that has the wheels
#       but no environment (the first thing `materialize` does for a new package set)
# and prints a markdown table: median wall time of RUNS, user+sys CPU, the load average.
#
#   scripts/bench/env_cold.sh [WORKDIR]     (default /work/envbench; same filesystem as /work/real)
#
# Input: READY=/work/real/READY names store A (only read: the wheels are copied out of it by
# their sha256 aliases, checked with sha256sum) and the lock. WORKDIR/S is a store of ours with
# the wheels only (rooted so gc keeps them); WORKDIR/wheels links S's wheel objects for uv.
# Before each (b) run the previous environment is dropped (root rm, gc --grace 0) and the index
# rebuilt, so the stat cache vouches for nothing: as after `fetch`. Every venv and cache is
# deleted after its run (up to 12 GB each). Knobs: RUNS=3, COMFYSTORE (binary; default a
# release build of this checkout), PY (base interpreter; default the one of READY's DEST),
# UV=uv, KEEP=1 keeps WORKDIR, CACHE_B (the empty uv cache of comfystore's run, default
# WORKDIR/uvcache-b; only older builds read it: comfystore now makes its own in the store). Results go to target/bench-results/env_cold-<time>.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/work/envbench}
RUNS=${RUNS:-3}
READY=${READY:-/work/real/READY}
NAME=env_cold
COMFYSTORE=${COMFYSTORE:-$REPO/target/release/comfystore}
. "$REPO/scripts/bench/lib.sh"
[ -n "$BIN" ] || { echo "no comfystore binary" >&2; exit 2; }
UV=${UV:-uv}
CACHE_B=${CACHE_B:-$WORK/uvcache-b}
field() { sed -n "s/^$1=//p" "$READY"; }
A=$(field store) LOCK_IN=$(field lock) MADE=$(field dest)
PY=${PY:-$(sed -n 's/^home = //p' "$MADE/venv/pyvenv.cfg")/python3}
LOCK=$WORK/lock.json
cp "$LOCK_IN" "$LOCK"
[ "${KEEP:-0}" = 1 ] || trap 'cleanup; rm -rf "$WORK"' EXIT

# wheel file, sha256 of each of the lock's packages
python3 -c "
import json, sys
for p in json.load(open(sys.argv[1]))['python']['packages']:
    print(p['wheel'], p['sha256'])" "$LOCK" >"$WORK/wheels.txt"
python3 -c "
import json, sys
print(''.join(f\"{p['name']}=={p['version']}\n\" for p in json.load(open(sys.argv[1]))['python']['packages']), end='')" \
    "$LOCK" >"$WORK/reqs.txt"

# The store with the wheels only, and the wheels for uv as links to its objects.
S=$WORK/S
if [ ! -d "$WORK/wheels" ]; then
    mkdir -p "$WORK/in"
    while read -r file sha; do
        b3=$(sed 's/^b3://' "$A/aliases/sha256/${sha:0:2}/${sha:2}")
        cp "$A/objects/b3/${b3:0:2}/${b3:2}" "$WORK/in/$file"
        echo "$sha  $WORK/in/$file"
    done <"$WORK/wheels.txt" | sha256sum -c --quiet
    ids=$("$BIN" -q --store "$S" add "$WORK"/in/*.whl | cut -f1)
    # shellcheck disable=SC2086
    "$BIN" -q --store "$S" root add bench/wheels $ids
    rm -rf "$WORK/in"
    mkdir -p "$WORK/wheels"
    while read -r file sha; do
        b3=$(sed 's/^b3://' "$S/aliases/sha256/${sha:0:2}/${sha:2}")
        ln "$S/objects/b3/${b3:0:2}/${b3:2}" "$WORK/wheels/$file"
    done <"$WORK/wheels.txt"
fi
KEY_ROOTS=$S/roots/env

timed() { # label cmd...: wall s and CPU s into RESULTS/label.txt (one line a run)
    local label=$1 t0 t1 c0 c1 load; shift
    load=$(cut -d' ' -f1 /proc/loadavg)
    # children_cpu runs `times`, which must run in this shell (not in a $(...) subshell)
    children_cpu >"$RESULTS/.c0"; c0=$(cat "$RESULTS/.c0"); t0=$(date +%s.%N)
    "$@" >>"$RESULTS/$label.log" 2>&1
    t1=$(date +%s.%N); children_cpu >"$RESULTS/.c1"; c1=$(cat "$RESULTS/.c1")
    awk -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v l="$load" \
        'BEGIN { printf "%.2f %.2f %s\n", t1 - t0, c1 - c0, l }' >>"$RESULTS/$label.txt"
    echo "$label: $(tail -1 "$RESULTS/$label.txt") (wall s, cpu s, load)" >&2
}
uv_cold() {
    rm -rf "$WORK/venv" "$WORK/uvcache"
    UV_CACHE_DIR=$WORK/uvcache "$UV" venv --no-config --quiet --python "$PY" "$WORK/venv"
    UV_CACHE_DIR=$WORK/uvcache "$UV" pip install --no-config --quiet --offline --no-index \
        --no-deps --python "$WORK/venv/bin/python" --find-links "$WORK/wheels" -r "$WORK/reqs.txt"
}
drop_env() {
    if [ -d "$KEY_ROOTS" ]; then
        for r in "$KEY_ROOTS"/*; do [ -e "$r" ] && "$BIN" -q --store "$S" root rm "env/$(basename "$r")"; done
    fi
    "$BIN" -q --store "$S" gc --grace 0 >/dev/null
    "$BIN" -q --store "$S" index rebuild >/dev/null
}

for i in $(seq "$RUNS"); do
    echo "run $i of $RUNS" >&2
    df -h "$WORK" | tail -1 >&2
    timed uv uv_cold
    rm -rf "$WORK/venv" "$WORK/uvcache"
    drop_env
    # An empty uv cache for comfystore too: a build that uses the user's cache is not cold.
    rm -rf "$CACHE_B"
    UV_CACHE_DIR=$CACHE_B RUST_LOG=comfystore=info \
        timed comfystore "$BIN" --store "$S" env "$LOCK" --python "$PY"
    rm -rf "$CACHE_B"
done
drop_env
grep -h "environment\|adopt_tree" "$RESULTS/comfystore.log" | sed 's/\x1b\[[0-9;]*m//g; s/^.*INFO //' >"$RESULTS/phases.txt" || true

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{ print $c }' "$RESULTS/$1.txt" | median; }
{
    echo "| cold environment build (real lock, 74 wheels → 24.6k files, 5.8 GB) | wall (median of $RUNS) | user+sys CPU | load (1 min) |"
    echo "|---|---:|---:|---:|"
    for l in uv comfystore; do
        echo "| $l | $(col $l 1) s | $(col $l 2) s | $(awk '{ print $3 }' "$RESULTS/$l.txt" | paste -sd/) |"
    done
    awk -v a="$(col uv 1)" -v b="$(col comfystore 1)" 'BEGIN { printf "\nratio comfystore / uv: %.2f× (goal ≤ 1.1×)\n", b / a }'
    echo
    echo "All runs (wall s, CPU s, load): uv $(paste -sd';' "$RESULTS/uv.txt"); comfystore $(paste -sd';' "$RESULTS/comfystore.txt")"
    echo
    echo "comfystore's phases (RUST_LOG=comfystore=info), every run:"
    sed 's/^/    /' "$RESULTS/phases.txt"
} | tee "$RESULTS/summary.md"
