#!/usr/bin/env bash
# Cold start of `serve` on a placed version, against ComfyUI started alone, outside Docker
# (docker/test.sh --real times the same inside the image). Prints a markdown table.
#
#   scripts/bench/cold_start.sh STORE LOCK [WORKDIR]     (default WORKDIR /var/tmp/cs-cold)
#
# STORE and LOCK: a store holding the version and its lock (docker/real-version.sh makes one
# in /var/tmp/comfystore-docker/real: store/ and real.lock.json). WORKDIR/dest is materialized
# from them once (writes into STORE: a GC root and stat-cache rows), then RUNS times each:
#   serve:          `serve --api` on WORKDIR/dest with --lock (a warm start), from its launch to
#                   the first answer of GET /health (the local API binds once ComfyUI answers
#                   and the version check passed), polled every 20 ms; and from its log
#                   (RUST_LOG=info, wall-clock timestamps) when it spawned ComfyUI, when the
#                   check ended, when ComfyUI first answered
#   baseline:       the same with BASELINE=PATH (another comfystore build), when set
#   ComfyUI alone:  WORKDIR/dest/venv/bin/python main.py --cpu, from its launch to the first
#                   answer of GET /system_stats
# overhead = median ready / median ComfyUI alone - 1. Knobs: RUNS=5, COMFYSTORE (default
# target/release/comfystore), BASELINE. The load average is printed with each run: on a busy
# machine the wall-clock columns are noise, the spawn column much less so.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STORE=$1 LOCK=$2
WORK=${3:-/var/tmp/cs-cold}
RUNS=${RUNS:-5}
NAME=cold_start
COMFYSTORE=${COMFYSTORE:-$REPO/target/release/comfystore}
. "$REPO/scripts/bench/lib.sh"
[ -n "$BIN" ] || { echo "no comfystore binary" >&2; exit 2; }
DEST=$WORK/dest
"$BIN" --quiet --store "$STORE" materialize "$LOCK" "$DEST" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# until_up URL PID: poll every 20 ms while PID lives.
until_up() {
	for _ in $(seq 15000); do
		curl -sf -o /dev/null --max-time 2 "$1" && return 0
		kill -0 "$2" 2>/dev/null || { echo "process $2 exited before $1 answered" >&2; return 1; }
		sleep 0.02
	done
	return 1
}
stop() { kill -TERM -- "-$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# offsets T0 LOG: seconds from T0 (epoch) to the spawn, the check's end, ComfyUI's answer.
offsets() {
	python3 - "$1" "$2" <<'PY'
import datetime, re, sys
t0, log = float(sys.argv[1]), open(sys.argv[2], errors="replace").read()
log = re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines()
def at(needle):
    for line in log:
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", line)
        if m and needle in line:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
            t = t.replace(tzinfo=datetime.timezone.utc).timestamp() + float("0." + (m.group(2) or "0"))
            return "%.3f" % (t - t0)
    return "-"
print(at("spawned ComfyUI"), at("checked while ComfyUI started"), at("ComfyUI answered"))
PY
}
# serve_once BINARY LOG: prints "ready spawn check_end answered".
serve_once() {
	local p cp t0 t1 pid
	p=$(free_port) cp=$(free_port)
	t0=$(now)
	RUST_LOG=info setsid "$1" --store "$STORE" serve --api "127.0.0.1:$p" --dest "$DEST" \
		--lock "$LOCK" --comfy-port "$cp" --comfy-arg=--cpu 2>"$2" >/dev/null &
	pid=$!
	until_up "http://127.0.0.1:$p/health" "$pid" || { tail -20 "$2" >&2; stop "$pid"; exit 1; }
	t1=$(now)
	stop "$pid"
	echo "$(python3 -c "print('%.3f' % ($t1 - $t0))") $(offsets "$t0" "$2")"
}
alone_once() {
	local cp t0 t1 pid
	cp=$(free_port)
	t0=$(now)
	(cd "$DEST" && exec setsid venv/bin/python main.py --listen 127.0.0.1 --port "$cp" \
		--disable-auto-launch --cpu >"$RESULTS/alone.log" 2>&1) &
	pid=$!
	until_up "http://127.0.0.1:$cp/system_stats" "$pid" || { stop "$pid"; exit 1; }
	t1=$(now)
	stop "$pid"
	python3 -c "print('%.3f' % ($t1 - $t0))"
}

rows=$RESULTS/rows.txt
: >"$rows"
for i in $(seq "$RUNS"); do
	s=$(serve_once "$BIN" "$RESULTS/serve-$i.log")
	b="- - - -"
	[ -n "${BASELINE:-}" ] && b=$(serve_once "$BASELINE" "$RESULTS/baseline-$i.log")
	a=$(alone_once)
	echo "$i $s $a $b $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$rows" >&2
done
python3 - "$rows" <<'PY' | tee "$RESULTS/summary.md"
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()]
cols = ["ready (s)", "spawn (s)", "check end (s)", "ComfyUI answered (s)", "ComfyUI alone (s)",
        "baseline ready (s)", "baseline spawn (s)", "baseline check end (s)", "baseline answered (s)", "load1"]
print("| run | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for r in rows:
    print("| " + " | ".join(r) + " |")
def med(i):
    v = [float(r[i]) for r in rows if r[i] != "-"]
    return statistics.median(v) if v else None
meds = [med(i) for i in range(1, len(cols) + 1)]
print("| median | " + " | ".join("-" if m is None else "%.3f" % m for m in meds) + " |")
if meds[0] and meds[4]:
    print("\noverhead (median ready / median ComfyUI alone - 1): %.1f %%; spawn at %.1f %% of ComfyUI alone"
          % (100 * (meds[0] / meds[4] - 1), 100 * meds[1] / meds[4]))
PY
"$BIN" --quiet --store "$STORE" remove "$DEST" >/dev/null && rm -rf "$DEST"
