#!/usr/bin/env bash
# Benchmark `comfystore add` against the floors named in the performance targets.
#
#   scripts/bench/store.sh [WORKDIR]        (default WORKDIR: /tmp/comfystore-bench)
#
# Environment knobs:
#   RUNS=7          timed runs per command for comparisons 1 and 2 (plus 1 warm-up run)
#   RERUNS=10       timed runs per command for comparison 3 (the re-add; it is fast)
#   RESULTS=DIR     where the hyperfine JSON goes (default target/bench-results/<timestamp>)
#   IMG_SIZE=16G    size of the sparse ext4 image
#   NO_LOOP=1       skip the loop mount and benchmark in WORKDIR directly
#   WRITE_PROTO=1   also run 1b: the same file through scripts/bench/write-proto (add's hashing
#                   pipeline with other write strategies), once right after the store is
#                   deleted and once 5 s later (fresh, unrecycled memory); adds ~4 minutes
#   QUIET_WAIT=600  seconds to wait, before each comparison, for other processes to go idle
#                   (this VM is shared with builds and tests; their CPU use skews the figures)
#
# What it measures (all warm page cache, whole-process wall time, medians with min-max):
#   1. `add` of a 2 GiB random file into a fresh store  vs  `openssl dgst -sha256`, `b3sum`
#      (and `cat > /dev/null` as the read floor).              Target: add <= 1.3x openssl.
#   2. `add` of a ~20k-file venv-shaped tree into a fresh store  vs  `cp -a` of the tree into
#      a fresh directory on the same filesystem (and `cp -a && sync`, since add ends with a
#      syncfs).                                                 Target: add <= 1.5x cp -a.
#   3. re-`add` of the unchanged tree (stat cache warm, store already has everything)
#      vs  `find | xargs stat` (and `find -printf '%s\n'` as a stricter floor).
#                                                               Target: re-add <= 2x xargs stat.
#
# Why a loop mount: the root filesystem of our VMs is ext4 *without a journal*, whose inode
# allocator makes creating files right after deleting many up to 20x slower (see
# shared/reference/baselines.md). Every fresh-store run deletes the previous store, so the
# benchmarks run on a journaled ext4 image mounted through a direct-io loop device instead.
# That needs root; without it (or with NO_LOOP=1) the script warns and uses WORKDIR as is.
#
# Needs: cargo, python3, openssl, hyperfine, b3sum. Missing hyperfine/b3sum are installed
# (apt-get / cargo install). Takes about 3 minutes (7 with WRITE_PROTO=1) on a quiet machine.
# Results: summary.md (the tables), *.json (hyperfine), machine.txt, noise.txt in RESULTS.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mkdir -p "${1:-/tmp/comfystore-bench}" && cd "${1:-/tmp/comfystore-bench}" && pwd)
RUNS=${RUNS:-7}
RERUNS=${RERUNS:-10}
IMG_SIZE=${IMG_SIZE:-16G}
RESULTS=${RESULTS:-$REPO/target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"

log() { printf '\n== %s\n' "$*" >&2; }

# --- CPU noise accounting -----------------------------------------------------------------
# Busy jiffies of the whole machine (user+nice+system+irq+softirq; not idle, iowait, steal).
busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# Jiffies used by kernel threads (children of kthreadd, pid 2): writeback, the loop device's
# workers, jbd2... They work for us (flushing what we wrote), so they are not counted as noise.
kthread_jiffies() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{
        sub(/^.*\) /, "")  # drop "pid (comm) ": comm may contain spaces
        if ($2 == 2) n += $12 + $13 } END { print n + 0 }'
}
# CPU seconds (user+sys) used so far by this script's finished children (hyperfine and what
# it ran), from bash's `times`. `times` must run in this shell, not in a $(...) subshell
# (a subshell starts with no children), hence the temp file.
children_cpu() {
    times >"$RESULTS/.times"
    awk 'END { n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }
               print n }' "$RESULTS/.times"
}
NCPU=$(nproc)
HZ=$(getconf CLK_TCK)
# Wait (up to QUIET_WAIT s) until the machine is idle: < 10 % busy over 2 s.
wait_quiet() {
    local deadline=$((SECONDS + ${QUIET_WAIT:-600})) b0 b1 pct
    while :; do
        b0=$(busy_jiffies); sleep 2; b1=$(busy_jiffies)
        pct=$(( (b1 - b0) * 100 / (2 * HZ * NCPU) ))
        [ "$pct" -lt 10 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "WARNING: machine still ${pct}% busy after waiting; measuring anyway" >&2
            return 0
        fi
        echo "machine ${pct}% busy with other work; waiting for it to go idle..." >&2
        sleep 8
    done
}
# Bracket a comparison: `noise_start`, run it, `noise_end NAME` appends to noise.txt how much
# CPU other processes (not ours, not kernel threads) used meanwhile, as % of all CPUs.
noise_start() {
    N_B0=$(busy_jiffies); N_K0=$(kthread_jiffies); children_cpu >"$RESULTS/.c0"
    N_T0=$(date +%s.%N); N_C0=$(cat "$RESULTS/.c0")
}
noise_end() {
    local b1 k1 c1 t1
    b1=$(busy_jiffies); k1=$(kthread_jiffies); t1=$(date +%s.%N)
    children_cpu >"$RESULTS/.c1"; c1=$(cat "$RESULTS/.c1")
    awk -v name="$1" -v b0="$N_B0" -v b1="$b1" -v k0="$N_K0" -v k1="$k1" -v c0="$N_C0" \
        -v c1="$c1" -v t0="$N_T0" -v t1="$t1" -v hz="$HZ" -v ncpu="$NCPU" 'BEGIN {
        wall = t1 - t0; all = (b1 - b0) / hz; ours = c1 - c0; kth = (k1 - k0) / hz
        other = all - ours - kth; if (other < 0) other = 0
        printf "%s: wall %.1f s; CPU busy %.1f s = ours %.1f + kernel threads %.1f + other processes %.1f s (%.0f%% of %d CPUs)\n",
            name, wall, all, ours, kth, other, 100 * other / (wall * ncpu), ncpu }' |
        tee -a "$RESULTS/noise.txt" >&2
}

# --- 0. Tools ------------------------------------------------------------------------------
log "checking tools"
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v hyperfine >/dev/null; then
    echo "hyperfine not found: installing it with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null
fi
if ! command -v b3sum >/dev/null; then
    echo "b3sum not found: installing it with cargo install" >&2
    cargo install --quiet b3sum
fi
for t in python3 openssl hyperfine b3sum cargo; do
    command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

# --- 1. Build --------------------------------------------------------------------------------
log "cargo build --release"
(cd "$REPO" && cargo build --release --quiet)
# Benchmark a private copy, so a concurrent `cargo build` cannot swap the binary mid-run.
mkdir -p "$WORK/bin"
cp "$REPO/target/release/comfystore" "$WORK/bin/comfystore"
BIN=$WORK/bin/comfystore

# --- 2. Filesystem: journaled ext4 on a loop device (fallback: WORKDIR itself) ----------------
IMG=$WORK/ext4.img
MNT=$WORK/mnt
LOOP=
cleanup() {
    # Tear down in reverse order; every step is best effort so a failed run still cleans up.
    if [ -n "$LOOP" ]; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
        losetup -d "$LOOP" 2>/dev/null || true
        rm -f "$IMG"
    fi
    # Without the loop mount the data sits in WORKDIR/plain: remove it (about 5 GB at peak).
    rm -rf "$WORK/plain"
}
trap cleanup EXIT INT TERM

# A previous run killed hard may have left its mount behind.
if mountpoint -q "$MNT" 2>/dev/null; then
    old=$(findmnt -n -o SOURCE "$MNT" || true)
    umount "$MNT" || true
    case "$old" in /dev/loop*) losetup -d "$old" 2>/dev/null || true ;; esac
fi

FS_DESC=
if [ "${NO_LOOP:-0}" != 1 ] && [ "$(id -u)" = 0 ] && {
    log "creating a $IMG_SIZE journaled ext4 image on a direct-io loop device"
    rm -f "$IMG" && truncate -s "$IMG_SIZE" "$IMG" &&
        # lazy init off: otherwise ext4lazyinit keeps writing inode tables during the runs.
        mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMG" &&
        LOOP=$(losetup --direct-io=on -f --show "$IMG") &&
        mkdir -p "$MNT" && mount "$LOOP" "$MNT"
}; then
    D=$MNT
    FS_DESC="journaled ext4 ($IMG_SIZE sparse image, $LOOP, losetup --direct-io=on)"
else
    if [ -n "$LOOP" ]; then losetup -d "$LOOP" || true; LOOP=; fi
    rm -f "$IMG"
    D=$WORK/plain
    rm -rf "$D" && mkdir -p "$D"
    FS_DESC="plain directory $D ($(findmnt -n -o FSTYPE,OPTIONS -T "$D" || echo unknown))"
    cat >&2 <<EOF
WARNING: no journaled ext4 loop mount (NO_LOOP=1, not root, or losetup/mkfs.ext4/mount failed).
WARNING: benchmarking in $D instead. If that is ext4 without a journal, the fresh-store
WARNING: and cp -a runs (which follow deletions of many files) will be inflated.
EOF
fi
echo "benchmark filesystem: $FS_DESC" >&2

# Record the machine next to the results.
{
    echo "date: $(date -Is)"
    echo "commit: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (src modified)')"
    echo "kernel: $(uname -r)"
    echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "filesystem: $FS_DESC"
    echo "tools: $(hyperfine --version), $(b3sum --version), $(openssl version | cut -d' ' -f1-2), $(cp --version | head -1)"
} | tee "$RESULTS/machine.txt" >&2

# --- 3. Data (deterministic) --------------------------------------------------------------
DATA=$D/data
BIG=$DATA/big.bin
TREE=$DATA/tree
mkdir -p "$DATA"
log "generating data in $DATA"
# 2 GiB of AES-CTR keystream: random-looking, incompressible, identical on every run.
# (openssl dies of SIGPIPE when head has enough; that is expected, hence the `|| true`.)
{ openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
    -iv 00000000000000000000000000000000 </dev/zero 2>/dev/null || true; } | head -c 2G >"$BIG"
[ "$(stat -c %s "$BIG")" = 2147483648 ] || { echo "failed to write $BIG" >&2; exit 1; }
# ~20k files, ~2k dirs, 60 executables, 8 symlinks, median ~4 KiB (see gen_tree.py).
python3 "$REPO/scripts/bench/gen_tree.py" "$TREE" | tee "$RESULTS/tree.txt" >&2
sync
# The stat cache never trusts files changed < 2 s before an add (racily-clean rule): wait.
sleep 3

HF=(hyperfine --style basic --warmup 1 --shell=bash)
q() { printf '%q' "$1"; }

# --- 4. Comparison 1: one 2 GiB file ---------------------------------------------------------
S1=$D/store1
log "comparison 1: add of a 2 GiB file vs openssl dgst -sha256 / b3sum"
wait_quiet
noise_start
# Sanity: the object id must be b3sum's hash, and the object must be new in a fresh store.
rm -rf "$S1"
"$BIN" -q --store "$S1" --json add "$BIG" >"$RESULTS/add-file.json"
want="b3:$(b3sum --no-names "$BIG")"
python3 - "$RESULTS/add-file.json" "$want" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]["report"]
assert r["id"] == sys.argv[2], (r["id"], sys.argv[2])
assert r["new_objects"] == 1 and r["hashed_files"] == 1, r
print(f"add BIG: id matches b3sum, new_objects={r['new_objects']}, sha256={r['sha256'][:23]}...")
EOF
# One --prepare for every command: the fresh store is deleted and the filesystem synced
# before each run, so no run pays for the previous run's deletion or dirty pages.
"${HF[@]}" --runs "$RUNS" --export-json "$RESULTS/1-file.json" \
    --prepare "rm -rf $(q "$S1") && sync" \
    -n "cat > /dev/null" "cat $(q "$BIG") > /dev/null" \
    -n "openssl dgst -sha256" "openssl dgst -sha256 $(q "$BIG")" \
    -n "b3sum" "b3sum $(q "$BIG")" \
    -n "comfystore add (fresh store)" "$(q "$BIN") -q --store $(q "$S1") add $(q "$BIG")"
noise_end "comparison 1"
rm -rf "$S1"

# --- 4b. Optional: where the single-file add's time goes (write strategies) -----------------
if [ "${WRITE_PROTO:-0}" = 1 ]; then
    log "1b: add's pipeline with other write strategies (scripts/bench/write-proto)"
    (cd "$REPO" && cargo build --release --quiet --manifest-path scripts/bench/write-proto/Cargo.toml \
        --target-dir target/write-proto)
    cp "$REPO/target/write-proto/release/write-proto" "$WORK/bin/write-proto"
    P=$WORK/bin/write-proto
    OUT=$D/proto.out
    wait_quiet
    noise_start
    # Two memory states: run right after the previous copy was deleted (the kernel recycles
    # its pages), and 5 s later (this VM has reported the freed pages back to the host, so
    # every new page-cache page is faulted in afresh: the slow mode of comparison 1).
    for state in recycled:0 cold:5; do
        "${HF[@]}" --runs 5 --export-json "$RESULTS/1b-write-${state%%:*}.json" \
            --prepare "rm -rf $(q "$S1") $(q "$OUT") && sync && sleep ${state##*:}" \
            -n "hash only (no copy)" "$(q "$P") nowrite $(q "$BIG") $(q "$OUT")" \
            -n "buffered write + syncfs (as add)" "$(q "$P") buffered $(q "$BIG") $(q "$OUT")" \
            -n "sync_file_range + DONTNEED" "$(q "$P") sfr $(q "$BIG") $(q "$OUT")" \
            -n "O_DIRECT writer thread" "$(q "$P") direct $(q "$BIG") $(q "$OUT")" \
            -n "comfystore add (fresh store)" "$(q "$BIN") -q --store $(q "$S1") add $(q "$BIG")"
    done
    noise_end "comparison 1b"
    rm -rf "$S1" "$OUT"
fi

# --- 5. Comparison 2: a ~20k-file tree into a fresh store ----------------------------------
S2=$D/store2
DST=$D/cpdst
log "comparison 2: add of the tree vs cp -a"
wait_quiet
noise_start
rm -rf "$S2"
"$BIN" -q --store "$S2" --json add "$TREE" >"$RESULTS/add-tree-first.json"
"${HF[@]}" --runs "$RUNS" --export-json "$RESULTS/2-tree.json" \
    --prepare "rm -rf $(q "$S2") $(q "$DST") && sync" \
    -n "cp -a" "cp -a $(q "$TREE") $(q "$DST")" \
    -n "cp -a && sync" "cp -a $(q "$TREE") $(q "$DST") && sync" \
    -n "comfystore add (fresh store)" "$(q "$BIN") -q --store $(q "$S2") add $(q "$TREE")"
noise_end "comparison 2"
rm -rf "$DST"

# --- 6. Comparison 3: re-add of the unchanged tree -----------------------------------------
# The store is left over from comparison 2's last run, so it holds the tree and its stat cache
# was filled more than 2 s after the data was written. Check that nothing gets rehashed.
log "comparison 3: re-add of the unchanged tree vs find | xargs stat"
wait_quiet
noise_start
"$BIN" -q --store "$S2" --json add "$TREE" >"$RESULTS/readd-check.json"
python3 - "$RESULTS/add-tree-first.json" "$RESULTS/readd-check.json" <<'EOF'
import json, sys
first = json.load(open(sys.argv[1]))[0]["report"]
again = json.load(open(sys.argv[2]))[0]["report"]
keys = ("files", "bytes", "hashed_files", "cached_files", "new_objects")
print("first add:", ", ".join(f"{k}={first[k]}" for k in keys))
print("re-add:   ", ", ".join(f"{k}={again[k]}" for k in keys))
assert first["id"] == again["id"], "tree id changed between adds"
if again["hashed_files"] != 0:
    sys.exit(f"re-add rehashed {again['hashed_files']} files: the stat cache did not work")
print(f"re-add hashed_files: {again['hashed_files']} (stat cache hit for all {again['cached_files']} files)")
EOF
"${HF[@]}" --runs "$RERUNS" --export-json "$RESULTS/3-readd.json" \
    -n "find -printf '%s\n'" "find $(q "$TREE") -type f -printf '%s\n' > /dev/null" \
    -n "find | xargs stat" "find $(q "$TREE") -type f | xargs stat > /dev/null" \
    -n "comfystore re-add (warm)" "$(q "$BIN") -q --store $(q "$S2") add $(q "$TREE")"
noise_end "comparison 3"
# Check again after the timed runs: still nothing rehashed.
"$BIN" -q --store "$S2" --json add "$TREE" | python3 -c \
    'import json,sys; r=json.load(sys.stdin)[0]["report"]; print("re-add after timing: hashed_files:", r["hashed_files"]); sys.exit(r["hashed_files"] != 0)'

# --- 7. Summary ------------------------------------------------------------------------------
log "summary (raw hyperfine JSON in $RESULTS)"
python3 - "$RESULTS" <<'EOF' | tee "$RESULTS/summary.md"
import json, os, sys
res = sys.argv[1]
groups = [
    ("1. 2 GiB file", "1-file.json", "openssl dgst -sha256", "comfystore add (fresh store)", 1.3),
    ("2. ~20k-file tree", "2-tree.json", "cp -a", "comfystore add (fresh store)", 1.5),
    ("3. re-add, unchanged tree", "3-readd.json", "find | xargs stat", "comfystore re-add (warm)", 2.0),
]
for state in ("recycled", "cold"):
    f = f"1b-write-{state}.json"
    if os.path.exists(os.path.join(res, f)):
        groups.insert(-2, (f"1b. 2 GiB file, write strategies, {state} memory", f,
                           "hash only (no copy)", "comfystore add (fresh store)", None))
openssl = {r["command"]: r for r in json.load(open(os.path.join(res, "1-file.json")))["results"]}[
    "openssl dgst -sha256"]["median"]
verdicts = []
for title, fname, floor, ours, target in groups:
    rs = {r["command"]: r for r in json.load(open(os.path.join(res, fname)))["results"]}
    base = rs[floor]["median"]
    # 1b also gets a column against openssl, measured in comparison 1 of the same run.
    ossl = openssl if fname.startswith("1b") else None
    print(f"\n### {title}\n")
    print(f"| command | median s | min-max s | ratio vs `{floor.replace('|', chr(92) + '|')}` |"
          + (" ratio vs openssl (comparison 1) |" if ossl else ""))
    print("|---|---:|---:|---:|" + ("---:|" if ossl else ""))
    for name, r in rs.items():
        cell = name.replace("|", "\\|")
        print(f"| `{cell}` | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {r['median'] / base:.2f}x |"
              + (f" {r['median'] / ossl:.2f}x |" if ossl else ""))
    ratio = rs[ours]["median"] / base
    print(f"\n`{ours}`, every timed run (s): " + ", ".join(f"{t:.3f}" for t in rs[ours]["times"]))
    if target is not None:
        verdicts.append((title, ratio, target, floor))
print("\n### Targets\n")
print("| comparison | ratio | target | met |")
print("|---|---:|---:|---|")
for title, ratio, target, floor in verdicts:
    print(f"| {title} (vs `{floor.replace('|', chr(92) + '|')}`) | {ratio:.2f}x | <= {target}x | {'yes' if ratio <= target else '**no**'} |")
print("\nNoise check: CPU used by other processes during each comparison:\n")
for line in open(os.path.join(res, "noise.txt")):
    print("- " + line.strip())
EOF
