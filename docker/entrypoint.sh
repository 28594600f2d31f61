#!/bin/sh
# comfystore's container entrypoint: pick the volume, point the store and the models at it, and
# hand over to `comfystore` (by default `comfystore serve`). Everything else (reading and checking
# the lock, materializing or checking the version, starting ComfyUI, telling the platform why a
# start failed) is done by `serve` itself. docs/runpod.md lists every variable read here.
#
#   docker run IMAGE                          comfystore serve (the RunPod worker)
#   docker run IMAGE serve --api 0.0.0.0:8000 the local API
#   docker run IMAGE fsck                     any other comfystore command, same environment
set -eu

fail() {
	echo "comfystore-entrypoint: $*" >&2
	exit 2
}

# The volume: COMFYSTORE_VOLUME, else /runpod-volume (serverless), else /workspace (pods).
vol=${COMFYSTORE_VOLUME:-}
if [ -n "$vol" ]; then
	[ -d "$vol" ] || fail "COMFYSTORE_VOLUME=$vol is not a directory"
elif [ -d /runpod-volume ]; then
	vol=/runpod-volume
elif [ -d /workspace ]; then
	vol=/workspace
fi

if [ -z "${COMFYSTORE_DIR:-}" ]; then
	# Slim image: the store is on the volume, so there must be one.
	[ -n "$vol" ] || fail "no volume: mount one at /runpod-volume (serverless) or /workspace (pods), or set COMFYSTORE_VOLUME or COMFYSTORE_DIR"
	export COMFYSTORE_DIR="$vol/comfystore"
	if [ -z "${COMFYSTORE_MODELS_DIR+set}" ]; then
		export COMFYSTORE_MODELS_DIR="$vol/models"
	fi
fi
# Set but empty: the models stay inside the version.
[ -n "${COMFYSTORE_MODELS_DIR:-}" ] || unset COMFYSTORE_MODELS_DIR
for d in "$COMFYSTORE_DIR" ${COMFYSTORE_MODELS_DIR:+"$COMFYSTORE_MODELS_DIR"}; do
	err=$(mkdir -p "$d" 2>&1) || fail "cannot create $d: $err"
done
# A store that exists but is not writable by this user is not refused here: a version fully in
# it can be served read-only, and `serve` says exactly what would need writing (exit 77).
if [ -z "${COMFYSTORE_LOCK:-}" ] && [ "${1:-serve}" = serve ]; then
	fail "no lock: set COMFYSTORE_LOCK to the lockfile of the version to serve"
fi
if [ -n "${COMFYSTORE_LOCK:-}" ] && [ ! -r "$COMFYSTORE_LOCK" ]; then
	fail "COMFYSTORE_LOCK=$COMFYSTORE_LOCK cannot be read: $(ls -ld "$COMFYSTORE_LOCK" 2>&1)"
fi

[ $# -gt 0 ] || set -- serve
exec comfystore "$@"
