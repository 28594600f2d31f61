# Timed cold starts of the baked real image IMAGE, sourced by docker/test.sh with its helpers,
# dockerd and WORK: by docker/test-real.sh once it has built the image, and by
# `COLD_ONLY=1 docker/test.sh --real` (scripts/bench/cold_start_image.sh) on the image a previous
# real run kept, building nothing. Prints a markdown table on stdout and writes it to
# REAL_COLD_OUT (default CACHE/real/cold-starts.md).
#
# Each timed start is a new container of the image (a cold start of the container; the host's
# page cache is warm: WARMUP=1 untimed start of each kind goes first, so that run 1 does not pay
# for reading the image's files from disk while the others do not). Per run, in turn (odd runs
# serve first, even runs ComfyUI alone first, so that neither always follows the other):
#   ready          `docker run -d … serve --api … --comfy-arg=--cpu` to the first answer of
#                  GET /health (the local API binds once ComfyUI answers and the check passed)
#   first job      the same `docker run` to the answer of POST /runsync of minimal.json, sent
#                  at ready
#   ComfyUI alone  `docker run -d --entrypoint /opt/comfyui/venv/bin/python … main.py --cpu`
#                  (the same image, no comfystore) to the first answer of GET /system_stats
# Both are polled every 20 ms by one Python process each (no fork per poll to compete with
# ComfyUI's start); times are the host's wall clock. From the worker's log (RUST_LOG=info)
# against the container's start as Docker records it (.State.StartedAt): when it spawned
# ComfyUI, when the version check ended, when ComfyUI first answered. What comes before the
# spawn is comfystore's own; the wall-clock ratios are only worth something on a quiet machine.
# Knobs: COLD_STARTS=5 runs, WARMUP=1.

N=${COLD_STARTS:-5}
OUT=${REAL_COLD_OUT:-$CACHE/real/cold-starts.md}
now() { date +%s.%N; }
# until_up URL CONTAINER: waits for URL (every 20 ms, the container checked every second), then
# prints the host's wall clock of the first answer. Fails when the container exits first or
# after 300 s.
until_up() {
	python3 - "$1" "$2" "$DOCKER" <<'PY' || { $DOCKER logs "$2" 2>&1 | tail -20 >&2; die "$2: $1 did not answer"; }
import subprocess, sys, time, urllib.request
url, name, docker = sys.argv[1:4]
start = last = time.monotonic()
while time.monotonic() - start < 300:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
        print("%.3f" % time.time())
        sys.exit(0)
    except Exception:
        pass
    if time.monotonic() - last >= 1:
        last = time.monotonic()
        running = subprocess.run([docker, "inspect", "-f", "{{.State.Running}}", name],
                                 capture_output=True, text=True).stdout.strip()
        if running != "true":
            sys.exit("%s exited before %s answered" % (name, url))
    time.sleep(0.02)
sys.exit("%s did not answer within 300 s" % url)
PY
}
# timeline CONTAINER: "spawn_s check_end_s comfy_answered_s" from the worker's log.
timeline() {
	python3 - "$($DOCKER inspect -f '{{.State.StartedAt}}' "$1")" "$($DOCKER logs "$1" 2>&1)" <<'PY'
import datetime, re, sys
def ts(s):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", s)
    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() + float("0." + (m.group(2) or "0"))
t0 = ts(sys.argv[1])
log = re.sub(r"\x1b\[[0-9;]*m", "", sys.argv[2]).splitlines()
def at(needle):
    for line in log:
        if needle in line and re.match(r"\d{4}-", line):
            return "%.3f" % (ts(line.split()[0]) - t0)
    return "-"
print(at("spawned ComfyUI"), at("checked while ComfyUI started"), at("ComfyUI answered"))
PY
}
# serve_start NAME: one serve container to its first job; sets SERVE="ready first_job spawn
# check_end answered".
serve_start() {
	local p t0 t1 t2
	p=$(free_port)
	CONTAINERS+=("$1")
	$DOCKER rm -f "$1" >/dev/null 2>&1 || true
	t0=$(now)
	$DOCKER run -d --name "$1" --network host -e RUST_LOG=info "$IMAGE" serve --api "127.0.0.1:$p" \
		--comfy-port "$(free_port)" --comfy-arg=--cpu >/dev/null
	t1=$(until_up "http://127.0.0.1:$p/health" "$1")
	runsync "$p" "$WORK/job.json" "$WORK/$1.json"
	t2=$(now)
	SERVE="$(python3 -c 'import sys; a, b, c = map(float, sys.argv[1:]); print("%.3f %.3f" % (b - a, c - a))' "$t0" "$t1" "$t2") $(timeline "$1")"
	$DOCKER rm -f "$1" >/dev/null
}
# alone_start NAME: ComfyUI alone in the image; sets ALONE to its seconds to the first answer.
alone_start() {
	local cp t0 t1
	cp=$(free_port)
	CONTAINERS+=("$1")
	$DOCKER rm -f "$1" >/dev/null 2>&1 || true
	t0=$(now)
	$DOCKER run -d --name "$1" --network host --entrypoint /opt/comfyui/venv/bin/python \
		-w /opt/comfyui "$IMAGE" main.py --listen 127.0.0.1 --port "$cp" --disable-auto-launch --cpu >/dev/null
	t1=$(until_up "http://127.0.0.1:$cp/system_stats" "$1")
	ALONE=$(python3 -c 'import sys; print("%.3f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$t0" "$t1")
	$DOCKER rm -f "$1" >/dev/null
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for i in $(seq "${WARMUP:-1}"); do
	say "cold starts: warm-up $i (untimed)"
	serve_start cs-warm-serve
	alone_start cs-warm-alone
done
rows=$WORK/cold-rows.txt
: >"$rows"
for i in $(seq "$N"); do
	if [ $((i % 2)) = 1 ]; then
		order=serve,alone
		serve_start "cs-cold-$i"
		alone_start "cs-alone-$i"
	else
		order=alone,serve
		alone_start "cs-alone-$i"
		serve_start "cs-cold-$i"
	fi
	read -r ready first spawn check answered <<<"$SERVE"
	echo "$i $order $ready $first $ALONE $spawn $check $answered $(cut -d' ' -f1 /proc/loadavg)" >>"$rows"
	say "cold start $i ($order): ready $ready s, first job $first s, ComfyUI alone $ALONE s; spawn $spawn s, check end $check s, answered $answered s"
done
mkdir -p "$(dirname "$OUT")"
python3 - "$rows" "$IMAGE" "$($DOCKER image inspect -f '{{.Id}} {{.Size}}' "$IMAGE")" "$load_start" \
	"$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" "${WARMUP:-1}" <<'PY' | tee "$OUT"
import datetime, statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()]
image, (iid, size), load0, load1, ncpu, warm = sys.argv[2], sys.argv[3].split(), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
print("Cold starts of `%s` (%s, %.2f GB), %s UTC, %s CPUs, %s untimed warm-up, load average %s at the start and %s at the end."
      % (image, iid.split(":")[-1][:12], int(size) / 1e9, datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
         ncpu, warm, load0, load1))
print()
cols = ["run", "order", "ready (s)", "first job (s)", "ComfyUI alone (s)", "ready / alone",
        "spawn (s)", "check end (s)", "answered (s)", "load1"]
print("| " + " | ".join(cols) + " |")
print("|---|---|" + "---:|" * (len(cols) - 2))
def f(x):
    return None if x == "-" else float(x)
ratios = []
for r in rows:
    ratio = f(r[2]) / f(r[4])
    ratios.append(ratio)
    print("| " + " | ".join(r[:5] + ["%.3f" % ratio] + r[5:]) + " |")
def med(i):
    v = [f(r[i]) for r in rows if r[i] != "-"]
    return statistics.median(v) if v else None
m = {i: med(i) for i in (2, 3, 4, 5, 6, 7)}
show = lambda x, p="%.3f": "-" if x is None else p % x
if rows:
    print("| median | | %s | %s | %s | %s | %s | %s | %s | |" % (
        show(m[2]), show(m[3]), show(m[4]), show(statistics.median(ratios)), show(m[5]), show(m[6]), show(m[7])))
    print()
    print("- overhead, median ready / median ComfyUI alone - 1: **%+.1f %%**" % (100 * (m[2] / m[4] - 1)))
    print("- overhead, median of the per-run ratios ready / ComfyUI alone - 1: **%+.1f %%** (runs: %s)"
          % (100 * (statistics.median(ratios) - 1), ", ".join("%+.1f %%" % (100 * (x - 1)) for x in ratios)))
    if m[5] is not None:
        print("- comfystore before ComfyUI runs (spawn, from the container's start): %.3f s, %.2f %% of ComfyUI alone"
              % (m[5], 100 * m[5] / m[4]))
PY
