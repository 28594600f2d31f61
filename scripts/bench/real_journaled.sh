#!/usr/bin/env bash
# scripts/bench/real.sh on a journaled ext4 loop mount.
#
#   scripts/bench/real_journaled.sh [IMAGE_DIR]      (default /work/q; root; ~20 GB free)
#
# This VM's root filesystem is ext4 without a journal, where every inode allocation right
# after a deletion scans for recently freed inodes (`recently_deleted`: 73 % of materialize's
# samples in perf), so materialize and cp -al swing 2–3x between runs there. A journaled
# ext4 skips that check. The script makes a sparse 26 GB image
# (mkfs.ext4 -E lazy_itable_init=0,lazy_journal_init=0), copies READY's store and DEST onto it
# with one `cp -a` (which keeps their hard links), writes a READY for the copy and runs
# real.sh there; the image is unmounted and deleted at the end, whatever happens.
# Knobs: READY (default /work/real/READY), RUNS (5), COMFYSTORE (a release binary), SIZE (26G).
# Output: real.sh's markdown on stdout; its log on stderr.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${1:-/work/q}
READY_IN=${READY:-/work/real/READY}
STORE=$(sed -n 's/^store=//p' "$READY_IN") LOCK=$(sed -n 's/^lock=//p' "$READY_IN")
DEST=$(sed -n 's/^dest=//p' "$READY_IN")
IMG=$DIR/journaled.img M=$DIR/journaled
mkdir -p "$DIR" "$M"
truncate -s "${SIZE:-26G}" "$IMG"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMG"
mount -o loop "$IMG" "$M"
trap 'cd /; umount "$M" || umount -l "$M"; rm -f "$IMG"; rmdir "$M" 2>/dev/null || true' EXIT
echo "copying $STORE and $DEST onto the journaled image" >&2
cp -a "$STORE" "$DEST" "$M/"
printf 'store=%s\nlock=%s\ndest=%s\n' "$M/$(basename "$STORE")" "$LOCK" "$M/$(basename "$DEST")" >"$M/READY"
READY=$M/READY RUNS=${RUNS:-5} "$REPO/scripts/bench/real.sh" "$M/bench"
