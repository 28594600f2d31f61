#!/usr/bin/env bash
# The hash pipeline against its peers on the same 64 MiB file, in one run:
#   hyperfine: `cat f > /dev/null` (read floor), `b3sum` (all cores, mmap), `b3sum
#   --num-threads 1`, `openssl dgst -sha256`; then `cargo bench --bench hash` (criterion:
#   hash_bytes BLAKE3, hash_bytes BLAKE3 + SHA-256, b3_file) on the same file.
#
#   scripts/bench/hash_peers.sh [WORKDIR]      (default /tmp/comfystore-hbench)
#
# The file is an AES-CTR keystream (incompressible, deterministic). The peers' times are whole
# processes (startup included: a few ms, against about 10-40 ms of hashing). Results (hyperfine
# JSON and markdown, criterion's output, noise.txt) go to target/bench-results/hash-<time>.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/tmp/comfystore-hbench}
RESULTS=$REPO/target/bench-results/hash-$(date +%Y%m%d-%H%M%S)
mkdir -p "$WORK" "$RESULTS"
export PATH="$HOME/.cargo/bin:$PATH"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
command -v b3sum >/dev/null || cargo install --quiet --locked b3sum

F=$WORK/data-64MiB.bin
if [ ! -s "$F" ] || [ "$(stat -c %s "$F")" != $((64 << 20)) ]; then
    head -c $((64 << 20)) /dev/zero |
        openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
            -iv 00000000000000000000000000000000 >"$F"
fi
cat "$F" >/dev/null   # into the page cache

# Build the bench first, so compiling does not overlap the measurements.
(cd "$REPO" && cargo bench --locked --bench hash --no-run --quiet)

# Others' CPU use, sampled over 3 s with nothing of ours running, before and after the run.
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
others() {
    local b0 b1
    b0=$(busy); sleep 3; b1=$(busy)
    echo "$1: other processes kept the $(nproc) CPUs $(( (b1 - b0) * 100 / (3 * $(getconf CLK_TCK) * $(nproc)) ))% busy; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
}
{
    echo "machine: $(nproc) CPUs,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "tools: $(hyperfine --version), $(b3sum --version), $(openssl version)"
} | tee "$RESULTS/machine.txt"
others before | tee "$RESULTS/noise.txt"
hyperfine --style basic --warmup 3 --runs 20 --export-json "$RESULTS/peers.json" \
    --export-markdown "$RESULTS/peers.md" \
    -n "cat > /dev/null" "cat $F > /dev/null" \
    -n "b3sum" "b3sum --no-names $F" \
    -n "b3sum --num-threads 1" "b3sum --no-names --num-threads 1 $F" \
    -n "openssl dgst -sha256" "openssl dgst -sha256 $F"
echo "b3sum: $(b3sum --no-names "$F")  openssl: $(openssl dgst -sha256 -r "$F" | cut -d' ' -f1)" |
    tee -a "$RESULTS/machine.txt"
(cd "$REPO" && COMFYSTORE_BENCH_FILE=$F cargo bench --locked --bench hash 2>&1) |
    tee "$RESULTS/criterion.txt"
others after | tee -a "$RESULTS/noise.txt"
echo "results in $RESULTS"
