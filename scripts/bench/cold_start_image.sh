#!/usr/bin/env bash
# Cold start in the Docker image: `serve` against ComfyUI alone, in the baked image of real
# ComfyUI 0.3.64 that `docker/test.sh --real` built and kept (comfystore-real:0.3.64-stub in
# /var/tmp/comfystore-docker/data). Builds nothing: it starts docker/test.sh's own dockerd,
# checks that the image is there (exit 1 naming the command that builds it, if not), runs the
# timed starts (docker/cold-starts.sh: a warm-up, then RUNS pairs, interleaved), prints the
# markdown table on stdout, stops dockerd and undoes what it changed on the host.
#
#   sudo scripts/bench/cold_start_image.sh [RUNS]        (default 5; WARMUP=1)
#
# The table also goes to target/bench-results/cold_start_image-DATE/summary.md, with the
# worker's progress in run.log there. Wall-clock figures mean something only on a quiet machine:
# the load average is printed at the start, the end and after each run.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUNS=${1:-${RUNS:-5}}
RESULTS=$REPO/target/bench-results/cold_start_image-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
COLD_ONLY=1 COLD_STARTS=$RUNS REAL_COLD_OUT=$RESULTS/summary.md \
	bash "$REPO/docker/test.sh" --real 2> >(tee "$RESULTS/run.log" >&2)
