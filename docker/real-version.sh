#!/usr/bin/env bash
# Make the real ComfyUI 0.3.64 version that `docker/test.sh --real` bakes, once, into DIR:
# DIR/store (a comfystore store) and DIR/real.lock.json. ComfyUI comes from a local git mirror
# of Comfy-Org/ComfyUI (MIRROR, at a125cd84, without the one blob such snapshots lack:
# comfy/text_encoders/llama_tokenizer/tokenizer.json); its environment is made by
# /work/shared/tools/real_comfyui.sh in stub mode (torch 2.8.0 from PyPI with no-op stand-ins
# for its CUDA libraries: ~2.4 GB instead of ~7 GB, CPU ops the real ones), which also runs
# minimal.json once on the host. The venv and the wheel cache are deleted once locked (the
# store holds the environment), to keep the disk free.
#
#   docker/real-version.sh DIR BIN [MIRROR] [RUNNER]
set -euo pipefail
DIR=$1 BIN=$2
MIRROR=${3:-/work/.mirror/Comfy-Org+ComfyUI/repo}
RUNNER=${4:-/work/shared/tools/real_comfyui.sh}
COMMIT=a125cd84b054a57729b5eecab930ca9408719832
[ -f "$DIR/real.lock.json" ] && exit 0
mkdir -p "$DIR"
if [ ! -f "$DIR/ComfyUI/main.py" ]; then
	rm -rf "$DIR/ComfyUI" "$DIR/comfy.index"
	GIT_DIR=$MIRROR GIT_INDEX_FILE=$DIR/comfy.index git read-tree "$COMMIT"
	GIT_DIR=$MIRROR GIT_INDEX_FILE=$DIR/comfy.index git rm -q --cached comfy/text_encoders/llama_tokenizer/tokenizer.json
	GIT_DIR=$MIRROR GIT_INDEX_FILE=$DIR/comfy.index git checkout-index -a --prefix="$DIR/ComfyUI/"
	rm -f "$DIR/comfy.index"
fi
REALCOMFY_TORCH_MODE=stub UV_CACHE_DIR=$DIR/uv-cache REALCOMFY_RUN_DIR=$DIR/run \
	bash "$RUNNER" "$DIR/ComfyUI" "$DIR/venv" "$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')" >"$DIR/runner.out" 2>"$DIR/runner.log"
HOME=$DIR "$BIN" --quiet --store "$DIR/store" lock "$DIR/ComfyUI" --venv "$DIR/venv" \
	--tag comfy-0.3.64-stub -o "$DIR/real.lock.json.tmp" >/dev/null
rm -rf "$DIR/venv" "$DIR/uv-cache" "$DIR/run"
mv "$DIR/real.lock.json.tmp" "$DIR/real.lock.json"
