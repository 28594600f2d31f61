# Shared setup of the benchmark scripts: source it after setting REPO, WORK and NAME.
# Provides RESULTS, BIN (a private copy of the release binary: builds cannot swap it mid-run)
# and mkfs_mount KIND IMAGE MOUNTPOINT (ext4 or XFS with reflink=1, unmounted on exit).
mkdir -p "$WORK"
RESULTS=$REPO/target/bench-results/$NAME-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine; }
cargo build --release --manifest-path "$REPO/Cargo.toml" -q
BIN=$WORK/comfystore
cp "$REPO/target/release/comfystore" "$BIN"

mounts=()
cleanup() { for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" || true; done; }
trap cleanup EXIT
mkfs_mount() { # kind image mountpoint
    mkdir -p "$3"; umount "$3" 2>/dev/null || true
    rm -f "$2"; truncate -s 16G "$2"
    if [ "$1" = xfs ]; then mkfs.xfs -q -f -m reflink=1 "$2"; else mkfs.ext4 -q -F "$2"; fi
    mount -o loop "$2" "$3"; mounts+=("$3")
}
