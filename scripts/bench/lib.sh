# Shared setup of the benchmark scripts: source it after setting REPO, WORK and NAME.
# Provides RESULTS, BIN (a private copy of the release binary: builds cannot swap it mid-run)
# and mkfs_mount KIND IMAGE MOUNTPOINT (ext4 or XFS with reflink=1, unmounted on exit).
# With COMFYSTORE=PATH set, that binary is copied as is (no cargo build); when it is missing,
# BIN is left empty and the script must skip the comfystore parts.
mkdir -p "$WORK"
RESULTS=$REPO/target/bench-results/$NAME-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine; }
BIN=$WORK/comfystore
if [ -z "${COMFYSTORE:-}" ]; then
    cargo build --release --manifest-path "$REPO/Cargo.toml" -q
    cp "$REPO/target/release/comfystore" "$BIN"
elif [ -x "$COMFYSTORE" ]; then
    cp "$COMFYSTORE" "$BIN"
else
    echo "no comfystore binary at $COMFYSTORE: its parts are skipped" >&2
    BIN=
fi

mounts=()
cleanup() { for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" || true; done; }
trap cleanup EXIT
mkfs_mount() { # kind image mountpoint
    mkdir -p "$3"; umount "$3" 2>/dev/null || true
    rm -f "$2"; truncate -s 16G "$2"
    if [ "$1" = xfs ]; then mkfs.xfs -q -f -m reflink=1 "$2"; else mkfs.ext4 -q -F "$2"; fi
    mount -o loop "$2" "$3"; mounts+=("$3")
}

# CPU noise (as in store.sh): wait_quiet waits (up to QUIET_WAIT=600 s) until the machine is
# < 10 % busy over 2 s; noise_start / noise_end NAME bracket a comparison and append to
# RESULTS/noise.txt the CPU that other processes (not ours, not kernel threads) used meanwhile.
busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
kthread_jiffies() { # children of kthreadd (writeback, loop workers, jbd2) work for us
    # A process that ends meanwhile makes cat fail: not an error (pipefail)
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{ sub(/^.*\) /, ""); if ($2 == 2) n += $12 + $13 }
        END { print n + 0 }'
}
children_cpu() { # user+sys s of this shell's finished children; `times` must run in this shell
    times >"$RESULTS/.times"
    awk 'END { n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }
               print n }' "$RESULTS/.times"
}
wait_quiet() {
    local deadline=$((SECONDS + ${QUIET_WAIT:-600})) b0 b1 pct hz ncpu
    hz=$(getconf CLK_TCK); ncpu=$(nproc)
    while :; do
        b0=$(busy_jiffies); sleep 2; b1=$(busy_jiffies)
        pct=$(( (b1 - b0) * 100 / (2 * hz * ncpu) ))
        [ "$pct" -lt 10 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "WARNING: machine still ${pct}% busy after waiting; measuring anyway" >&2
            return 0
        fi
        echo "machine ${pct}% busy with other work; waiting for it to go idle..." >&2
        sleep 8
    done
}
noise_start() {
    N_B0=$(busy_jiffies); N_K0=$(kthread_jiffies); children_cpu >"$RESULTS/.c0"
    N_T0=$(date +%s.%N); N_C0=$(cat "$RESULTS/.c0")
}
noise_end() {
    local b1 k1 c1 t1
    b1=$(busy_jiffies); k1=$(kthread_jiffies); t1=$(date +%s.%N)
    children_cpu >"$RESULTS/.c1"; c1=$(cat "$RESULTS/.c1")
    awk -v name="$1" -v b0="$N_B0" -v b1="$b1" -v k0="$N_K0" -v k1="$k1" -v c0="$N_C0" \
        -v c1="$c1" -v t0="$N_T0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" -v ncpu="$(nproc)" 'BEGIN {
        wall = t1 - t0; all = (b1 - b0) / hz; ours = c1 - c0; kth = (k1 - k0) / hz
        other = all - ours - kth; if (other < 0) other = 0
        printf "%s: wall %.1f s; other processes used %.1f CPU s (%.0f%% of %d CPUs)\n",
            name, wall, other, 100 * other / (wall * ncpu), ncpu }' |
        tee -a "$RESULTS/noise.txt" >&2
}

# The real version READY names (made by scripts/real/portable_check.sh), for real.sh and
# check.sh: sets A (its store), LOCK_IN, MADE (its DEST), S and LOCK. S=WORK/S is a copy of
# the store (objects hardlinked; index, roots and locks copied), so runs never write into A.
real_version() {
    A=$(sed -n 's/^store=//p' "$READY") LOCK_IN=$(sed -n 's/^lock=//p' "$READY")
    MADE=$(sed -n 's/^dest=//p' "$READY")
    S=$WORK/S
    if [ ! -d "$S" ]; then
        cp -al "$A" "$S"
        for d in roots locks cache sources tmp quarantine; do rm -rf "${S:?}/$d"; cp -a "$A/$d" "$S/$d"; done
        rm -f "$S/index.redb" "$S/comfystore-store.json"
        cp -a "$A/index.redb" "$A/comfystore-store.json" "$S/"
    fi
    LOCK=$WORK/lock.json
    cp "$LOCK_IN" "$LOCK"
}
