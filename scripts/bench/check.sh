#!/usr/bin/env bash
# Checking and hard-linking the real version at the filesystem floor (issue 19), in one run
# on the same data:
#   status D and verify LOCK D of the unchanged version     vs  find D -printf '%s %T@\n'
#   materialize LOCK D --link hardlink (every part linked)  vs  cp -al of a made D
# Wall time by hyperfine; CPU (user + sys s of the command and its children) by GNU time over
# the same number of runs, median; syscalls of one run of each by strace -c -f.
#
#   scripts/bench/check.sh [WORKDIR]     (default /work/checkbench; same filesystem as the store)
#
# Input: the real version of scripts/real/portable_check.sh; READY=/work/real/READY names its
# store, lock and materialized DEST. That store is only read: WORKDIR/S is a copy of it
# (objects hardlinked, index, roots and locks copied), as scripts/bench/real.sh makes it.
# Knobs: RUNS=7, COMFYSTORE=path (else a release build), THREADS="" (set RAYON_NUM_THREADS for
# comfystore, e.g. THREADS=1 to see what the second thread costs in CPU).
# The load average and the CPU other processes used go next to each comparison: on a busy
# machine the wall times are noise; the CPU and syscall columns much less so.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/work/checkbench}
RUNS=${RUNS:-7}
READY=${READY:-/work/real/READY}
NAME=check
. "$REPO/scripts/bench/lib.sh"
[ -n "$BIN" ] || { echo "no comfystore binary" >&2; exit 2; }
[ -z "${THREADS:-}" ] || export RAYON_NUM_THREADS=$THREADS
real_version
D=$WORK/D L=$WORK/L
# A materialized D goes with `comfystore remove`, which hands the stat-cache rows of the
# objects it unlinked on (an `rm -rf` would move their ctimes: the next run would rehash).
clean() { "$BIN" -q --store "$S" remove "$1" >/dev/null 2>&1 || true; rm -rf "$1"; }
clean "$L"
[ -d "$D" ] || "$BIN" -q --store "$S" materialize "$LOCK" "$D"
"$BIN" -q --store "$S" status "$D" >/dev/null || { echo "status of $D is not clean" >&2; exit 1; }
note() { echo "$1: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/noise.txt" >&2; }

# CPU of RUNS runs: "median_user median_sys" (s). $1 name, $2 prepare, rest: the command.
cpu() {
    local name=$1 prep=$2 i
    shift 2
    : >"$RESULTS/cpu-$name.txt"
    for ((i = 0; i < RUNS; i++)); do
        sh -c "$prep" >/dev/null 2>&1
        /usr/bin/time -f '%U %S' -a -o "$RESULTS/cpu-$name.txt" "$@" >/dev/null
    done
}

# One strace -c -f run of each (not timed: strace slows it down) into RESULTS/strace-NAME.txt.
trace() { local name=$1; shift; strace -f -c -o "$RESULTS/strace-$name.txt" "$@" >/dev/null; }

# Order matters: linking an object moves its ctime, and the stat cache keys on it. The
# materialize runs hand their rows on (`remove`), but `cp -al D L` moves the ctime of every
# file of D (and of the objects D's links share) and keeps no record: so the checks run first,
# cp last, and the next run's first `status D` above rehashes what cp touched (slow, once).
note check; noise_start
hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$RESULTS/check.json" \
    -n "find -printf" "find $D -printf '%s %T@\n' >/dev/null" \
    -n "status" "$BIN -q --store $S status $D" \
    -n "verify" "$BIN -q --store $S verify $LOCK $D"
cpu find : sh -c "find $D -printf '%s %T@\n' >/dev/null"
cpu status : "$BIN" -q --store "$S" status "$D"
cpu verify : "$BIN" -q --store "$S" verify "$LOCK" "$D"
noise_end check
trace find sh -c "find $D -printf '%s %T@\n' >/dev/null"
trace status "$BIN" -q --store "$S" status "$D"
trace verify "$BIN" -q --store "$S" verify "$LOCK" "$D"

note link; noise_start
prep="$BIN -q --store $S remove $L >/dev/null 2>&1 || true; rm -rf $L; sync"
link=("$BIN" -q --store "$S" materialize "$LOCK" "$L" --link hardlink --venv-link hardlink --models-link hardlink)
hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$RESULTS/hardlink.json" --prepare "$prep" \
    -n "materialize --link hardlink" "${link[*]}"
cpu hardlink "$prep" "${link[@]}"
sh -c "$prep"
trace hardlink "${link[@]}"
sh -c "$prep"
hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$RESULTS/cp.json" --prepare "rm -rf $L; sync" \
    -n "cp -al" "cp -al $D $L"
cpu cp "rm -rf $L; sync" cp -al "$D" "$L"
rm -rf "$L"
trace cp cp -al "$D" "$L"
rm -rf "$L"
noise_end link

python3 - "$RESULTS" <<'PY' | tee "$RESULTS/summary.md"
import json, os, re, statistics, sys
r = sys.argv[1]
def hf(name):
    return {x["command"]: x for x in json.load(open(os.path.join(r, name)))["results"]}
def cpu(name):
    rows = [tuple(map(float, l.split())) for l in open(os.path.join(r, f"cpu-{name}.txt"))
            if re.match(r"^[0-9.]+ [0-9.]+$", l.strip())]
    return statistics.median(u for u, _ in rows), statistics.median(s for _, s in rows)
def calls(name):
    c = {}
    for line in open(os.path.join(r, f"strace-{name}.txt")):
        p = line.split()
        if len(p) >= 5 and p[-1].isidentifier() and p[3].isdigit():
            c[p[-1]] = int(p[3])
        elif len(p) >= 4 and p[-1] == "total":
            c["total"] = int(p[2])
    return c
print("| work | wall median s (min-max) | wall ratio | CPU user + sys s (median) | CPU ratio | syscalls | stat calls |")
print("|---|---|---:|---:|---:|---:|---:|")
link = {**hf("cp.json"), **hf("hardlink.json")}
for h, ref, rows in ((hf("check.json"), ("find -printf", "find"), (("find -printf", "find"), ("status", "status"), ("verify", "verify"))),
                     (link, ("cp -al", "cp"), (("cp -al", "cp"), ("materialize --link hardlink", "hardlink")))):
    base = h[ref[0]]["median"]
    bu, bs = cpu(ref[1])
    for cmd, key in rows:
        x = h[cmd]
        u, s = cpu(key)
        c = calls(key)
        st = sum(c.get(k, 0) for k in ("statx", "newfstatat", "lstat", "stat", "fstat"))
        print(f"| {cmd} | {x['median']:.3f} ({x['min']:.3f}-{x['max']:.3f}) | {x['median'] / base:.2f}x {ref[0]} "
              f"| {u:.2f} + {s:.2f} | {(u + s) / (bu + bs):.2f}x | {c.get('total', 0):,} | {st:,} |")
PY
cat "$RESULTS/noise.txt"
echo "results: $RESULTS" >&2
