#!/usr/bin/env bash
# Benchmark `comfystore add-url` (download + BLAKE3 + SHA-256 + durable publish into the store)
# against `curl -o` of the same 2 GiB file from nginx on loopback, both writing to WORKDIR's
# filesystem; also against `curl -o && sync` (the same durability) and `curl | tee | openssl
# dgst -sha256 && sync` (the same work done by stock tools). Then a resume: a proxy drops the
# first connection at 1 GiB and we count every byte that crossed it.
#
# No loop mount here: a loop device caches every page twice and turns our syncfs into a full
# write-through of the image, which measures the loop driver, not the download.
#
#   scripts/bench/download.sh [WORKDIR]     (default /tmp/comfystore-dbench; needs root)
#
# Results (hyperfine JSON, proxy log, summary) go to target/bench-results/download-<time>.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/tmp/comfystore-dbench}
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-2048}
NAME=download
. "$REPO/scripts/bench/lib.sh"
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
M=$WORK/fs
mkdir -p "$M"

WWW=$WORK/www
mkdir -p "$WWW"
[ -f "$WWW/model.bin" ] && [ "$(stat -c %s "$WWW/model.bin")" = $((SIZE_MIB << 20)) ] ||
    head -c $((SIZE_MIB << 20)) /dev/urandom > "$WWW/model.bin"
SHA=$(openssl dgst -sha256 -r "$WWW/model.bin" | cut -d' ' -f1)

PORT=18431; PPORT=18432
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  server { listen 127.0.0.1:$PORT; root $WWW; }
}
CONF
nginx -c "$WORK/nginx.conf"
stop() { nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true; kill "${PROXY:-}" 2>/dev/null || true; cleanup; }
trap stop EXIT
URL=http://127.0.0.1:$PORT/model.bin
cat "$WWW/model.bin" > /dev/null   # the server reads from the page cache in every run

hyperfine -w 1 -r "$RUNS" --export-json "$RESULTS/download.json" \
    -p "rm -f $M/out.bin; sync" -n "curl -o" "curl -s -o $M/out.bin $URL" \
    -p "rm -f $M/out.bin; sync" -n "curl -o && sync" "curl -s -o $M/out.bin $URL && sync -f $M/out.bin" \
    -p "rm -f $M/out.bin; sync" -n "curl | tee | openssl sha256 && sync" "curl -s $URL | tee $M/out.bin | openssl dgst -sha256 && sync -f $M/out.bin" \
    -p "rm -rf $M/store; sync" -n "comfystore add-url" "$BIN --store $M/store -q add-url $URL --sha256 $SHA" \
    -p "rm -rf $M/store; sync" -n "comfystore add-url --connections 4" "$BIN --store $M/store -q add-url $URL --sha256 $SHA --connections 4" \
    | tee "$RESULTS/hyperfine.txt"

# Resume: the first connection is cut after 1 GiB; count the bytes of every connection.
rm -rf "$M/store" "$RESULTS/proxy.log"
python3 "$REPO/scripts/bench/dropproxy.py" $PPORT $PORT $(((SIZE_MIB / 2) << 20)) "$RESULTS/proxy.log" &
PROXY=$!
sleep 1
COMFYSTORE_BACKOFF=10ms "$BIN" --store "$M/store" --json add-url "http://127.0.0.1:$PPORT/model.bin" --sha256 "$SHA" > "$RESULTS/resume.json"
sleep 1
kill $PROXY
python3 - "$RESULTS" $((SIZE_MIB << 20)) <<'PY' | tee -a "$RESULTS/summary.txt"
import json, sys
res, size = sys.argv[1], int(sys.argv[2])
runs = {r["command"]: r for r in json.load(open(f"{res}/download.json"))["results"]}
curl = runs["curl -o"]["median"]
for name, r in runs.items():
    print(f"{name:42s} median {r['median']:.3f} s  {size / r['median'] / 2**20:7.0f} MiB/s  rate vs curl {curl / r['median']:.2f}x")
conns = [int(l.split()[1]) for l in open(f"{res}/proxy.log")]
rep = json.load(open(f"{res}/resume.json"))
first, rest = conns[0], sum(conns[1:])
missing = size - first
print(f"resume: {len(conns)} connections; first cut after {first} bytes (headers included); "
      f"then {rest} bytes for the {missing} missing; resumed_bytes={rep['resumed_bytes']}; "
      f"re-transferred beyond the missing bytes: {rest - missing} bytes ({(rest - missing) / missing:.4%}); "
      f"total on the wire {first + rest} for {size} ({(first + rest - size) / size:.4%} over)")
PY
