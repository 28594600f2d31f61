#!/usr/bin/env bash
# portable_check.sh - the real-ComfyUI check of "a lock rebuilds on a fresh machine, hash for
# hash" (docs/performance.md records a run):
#   1. store A: lock ComfyUI 0.3.64 (a git clone of a local mirror), pin its environment from
#      PyPI's real wheels (torch 2.8.0 with its CUDA wheels; it runs on the CPU here), let
#      comfystore build it, and lock the install again: python.built_with is set;
#   2. store B, empty, on another path: fetch + materialize from the lock alone;
#   3. every tree id and the environment id are equal (comfystore repro env);
#   4. repro run of workflows/minimal.json, recorded in workflows/minimal.expected.json (with
#      ComfyUI's metadata, and with --disable-metadata).
#
# Usage: portable_check.sh MIRROR WORK
#   MIRROR  a git repository of ComfyUI holding commit a125cd84 (0.3.64), e.g. the bare repo
#           the search tool's `fetch github:Comfy-Org/ComfyUI` gives
#   WORK    an empty folder for the stores and installs (needs ~20 GB)
# Environment: COMFYSTORE (default: target/release/comfystore, else target/debug/comfystore),
#   RECORD=1 to (re)write lockfiles/comfy-0.3.64-cpu.lock.json and the expectation.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
[ $# -eq 2 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
mirror=$1
work=$(mkdir -p "$2" && cd "$2" && pwd)
cs=${COMFYSTORE:-}
if [ -z "$cs" ]; then
  for c in "$repo/target/release/comfystore" "$repo/target/debug/comfystore"; do
    [ -x "$c" ] && { cs=$c; break; }
  done
fi
[ -x "$cs" ] || { echo "no comfystore binary; cargo build first" >&2; exit 2; }
commit=a125cd84
tag=comfy-0.3.64-cpu
lock=$work/$tag.lock.json
t() { local s=$SECONDS; "$@"; echo "  ($((SECONDS - s)) s)" >&2; }
say() { echo "== $*" >&2; }

say "ComfyUI $commit from $mirror"
# The search tool's mirrors may lack a few large blobs. The check then uses a local commit:
# 0.3.64 without those files (named here), on a shared bare copy of the mirror.
git clone -q --bare --shared "$mirror" "$work/mirror.git"
missing=$(git -C "$work/mirror.git" ls-tree -r "$commit" | awk '$2=="blob"{print $3" "$4}' |
  while read -r id path; do git -C "$work/mirror.git" cat-file -e "$id" 2>/dev/null || echo "$path"; done)
if [ -n "$missing" ]; then
  echo "the mirror lacks these files of $commit; checking a local commit without them:" >&2
  echo "$missing" | sed 's/^/  /' >&2
  export GIT_INDEX_FILE=$work/derive.index
  git -C "$work/mirror.git" read-tree "$commit"
  echo "$missing" | while read -r p; do git -C "$work/mirror.git" rm -q --cached -- "$p"; done
  tree=$(git -C "$work/mirror.git" write-tree)
  unset GIT_INDEX_FILE
  commit=$(GIT_AUTHOR_NAME=comfystore GIT_AUTHOR_EMAIL=check@localhost GIT_COMMITTER_NAME=comfystore \
    GIT_COMMITTER_EMAIL=check@localhost GIT_AUTHOR_DATE=2025-10-13T00:00:00Z GIT_COMMITTER_DATE=2025-10-13T00:00:00Z \
    git -C "$work/mirror.git" commit-tree "$tree" -p "$commit" -m "0.3.64 without the files this mirror lacks")
  git -C "$work/mirror.git" update-ref refs/heads/checked "$commit"
  echo "local commit: $commit" >&2
fi
git clone -q --no-checkout "$work/mirror.git" "$work/ComfyUI"
git -C "$work/ComfyUI" checkout -q --detach "$commit"

say "store A: lock ComfyUI, pin its environment from PyPI"
t "$cs" --store "$work/A" lock "$work/ComfyUI" --tag "$tag" --no-python -o "$work/base.lock.json"
t "$cs" --store "$work/A" pin "$here/comfyui-0.3.64.requirements.txt" --python 3.11 --lock "$work/base.lock.json"

say "store A: materialize (comfystore builds the environment), then lock the install"
t "$cs" --store "$work/A" --json materialize "$work/base.lock.json" "$work/A-install" > "$work/A-materialize.json"
t "$cs" --store "$work/A" lock "$work/ComfyUI" --tag "$tag" --venv "$work/A-install/venv" --portable -o "$lock"
grep -q '"built_with"' "$lock" || { echo "the lock does not say comfystore built its environment" >&2; exit 1; }

say "store B (empty): fetch + materialize from the lock alone"
t "$cs" --store "$work/B" fetch "$lock"
t "$cs" --store "$work/B" --json materialize "$lock" "$work/B-install" > "$work/B-materialize.json"

say "the same version? (lock vs store B's install)"
"$cs" --store "$work/B" repro env "$lock" "$work/B-install"

say "repro run in store B, with and without ComfyUI's metadata"
expect=$work/minimal.expected.json
[ "${RECORD:-0}" = 1 ] || cp "$repo/workflows/minimal.expected.json" "$expect"
rec=(); [ "${RECORD:-0}" = 1 ] && rec=(--record)
t "$cs" --store "$work/B" repro run "$lock" "$repo/workflows/minimal.json" --runs 2 --expect "$expect" "${rec[@]}" --comfy-arg=--cpu
t "$cs" --store "$work/B" repro run "$lock" "$repo/workflows/minimal.json" --runs 2 --expect "$expect" "${rec[@]}" --comfy-arg=--cpu --comfy-arg=--disable-metadata
if [ "${RECORD:-0}" = 1 ]; then
  cp "$lock" "$repo/lockfiles/$tag.lock.json"
  cp "$expect" "$repo/workflows/minimal.expected.json"
  say "recorded lockfiles/$tag.lock.json and workflows/minimal.expected.json"
fi
say "ok"
