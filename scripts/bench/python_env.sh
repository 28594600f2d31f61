#!/usr/bin/env bash
# Benchmark materializing a Python environment (a ~12.6k-file venv of 72 real wheels, no torch)
# against uv, pip and the physical floors, on the same wheels in one run:
#   ext4 (journaled loop mount, uv cache + store + destinations on it):
#     `cp -al` of an installed venv (the floor)
#     uv venv --relocatable + uv pip install --link-mode hardlink (warm cache)
#     python -m venv --without-pip + pip install --no-deps --no-compile (local wheels)
#     comfystore materialize LOCK --offline --venv-link hardlink (warm store)
#   XFS reflink=1 (loop mount, same layout):
#     `cp -a --reflink=always` of an installed venv (the floor)
#     uv ... --link-mode clone (warm cache)
#     comfystore materialize LOCK --offline --venv-link reflink (warm store)
# Every timed run starts from a removed destination (`--prepare 'rm -rf D; sync'`).
#
#   scripts/bench/python_env.sh [WORKDIR]     (default /tmp/comfystore-pybench; needs root)
#
# Knobs: DATA=/work/bench-data (wheels/ and requirements.txt), RUNS=5 (PIP_RUNS=$RUNS),
#   COMFYSTORE=target/release/comfystore (used as is, not built; the comfystore rows are
#   skipped when it is missing or its `pin` fails), PY (interpreter, default python3's real
#   path, not a pyenv shim), UV (default uv's real path), KEEP=1 keeps the loop images.
#
# Data (outside the repo; fetched once with network):
#   pip download --only-binary=:all: --dest $DATA/wheels numpy scipy pillow transformers \
#     tokenizers safetensors huggingface-hub einops tqdm pyyaml aiohttp psutil kornia-rs \
#     opencv-python-headless scikit-image matplotlib pandas requests sentencepiece regex \
#     soundfile av alembic sqlalchemy pydantic
#   then $DATA/requirements.txt = one `name==version` per downloaded wheel (the full closure).
# Before each comparison it waits (up to QUIET_WAIT=600 s) for the machine to go idle, and notes
# in noise.txt how much CPU other processes took meanwhile (a cargo build doubles the times).
# Results (hyperfine JSON, summary.md, noise.txt) go to target/bench-results/python_env-<time>.
# Takes about 70 s on a quiet 2-core machine (pip is ~6 s a run), plus any wait for quiet.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${1:-/tmp/comfystore-pybench}
DATA=${DATA:-/work/bench-data}
WHEELS=$DATA/wheels
REQS=$DATA/requirements.txt
RUNS=${RUNS:-5}
PIP_RUNS=${PIP_RUNS:-$RUNS}
COMFYSTORE=${COMFYSTORE:-$REPO/target/release/comfystore}
NAME=python_env
[ -s "$REQS" ] && compgen -G "$WHEELS/*.whl" >/dev/null ||
    { echo "missing $REQS or $WHEELS/*.whl: see the header of $0" >&2; exit 2; }
. "$REPO/scripts/bench/lib.sh"
[ "${KEEP:-}" = 1 ] || trap 'cleanup; rm -f "$WORK/ext4.img" "$WORK/xfs.img"' EXIT

command -v uv >/dev/null || python3 -m pip install -q uv
PY=${PY:-$(python3 -c 'import sys; print(sys.executable)')}
UV=${UV:-$(pyenv which uv 2>/dev/null || command -v uv)}
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SUMMARY=$RESULTS/summary.md
say() { echo "$*" | tee -a "$SUMMARY" >&2; }
say "# python_env $(date -Is)"
say "$(nproc) cores, $(uname -r); $("$PY" --version) ($PY); $("$UV" --version) ($UV);" \
    "pip $("$PY" -m pip --version | cut -d' ' -f2); comfystore ${BIN:-missing} ($COMFYSTORE)"
say "wheels: $(ls "$WHEELS"/*.whl | wc -l) in $WHEELS ($(du -sb "$WHEELS" | cut -f1) bytes)," \
    "$(grep -c '==' "$REQS") pins in $REQS"

# --- the commands (strings for hyperfine; paths contain no spaces) ---------------------------
uv_install() { # cache dest link-mode
    echo "$UV venv -q --cache-dir $1 --relocatable --python $PY $2 && $UV pip install -q --cache-dir $1 --python $2/bin/python --no-index --find-links $WHEELS --link-mode $3 -r $REQS"
}
pip_install() { # dest
    echo "$PY -m venv --without-pip $1 && $PY -m pip --python $1/bin/python install -q --no-index --find-links $WHEELS --no-deps --no-compile -r $REQS"
}
cs_materialize() { # store lock dest venv-link
    echo "$BIN -q --store $1 materialize $2 $3 --offline --venv-link $4"
}
cs_prepare() { # store dest
    echo "$BIN -q --store $1 remove $2 >/dev/null 2>&1; rm -rf $2; sync"
}
H="hyperfine --style basic --warmup 1"
bench() { # name hyperfine-args...: waits for a quiet machine, notes others' CPU use meanwhile
    local name=$1 rc=0; shift
    wait_quiet; noise_start
    $H --export-json "$RESULTS/$name.json" "$@" || rc=$?
    noise_end "$name"; return $rc
}

tree_stats() { # dir label: files, symlinks, dirs, bytes
    local f l d b
    f=$(find "$1" -type f | wc -l); l=$(find "$1" -type l | wc -l); d=$(find "$1" -type d | wc -l)
    b=$(find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    say "$2: $f files, $l symlinks, $d dirs, $b bytes in files ($(du -sb "$1" | cut -f1) du -sb)"
}
link_info() { # dir label: nlink and shared extents of the largest file
    local big
    big=$(find "$1" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-) || return 0
    [ -n "$big" ] || return 0
    say "  $2: largest file $(basename "$big") nlink=$(stat -c %h "$big")," \
        "shared extents: $(filefrag -v "$big" 2>/dev/null | grep -c shared || true)"
}

# comfystore: pins, a tiny ComfyUI lock, pins into the lock, one warm-up materialize.
# Returns 1 (and says why) when any step fails, e.g. while `pin` does not exist yet.
comfy_setup() { # store workdir -> LOCK
    local S=$1 W=$2 log=$2/setup.log
    [ -n "$BIN" ] || { say "comfystore: no binary, skipped"; return 1; }
    rm -rf "$W"; mkdir -p "$W/ComfyUI"
    printf 'import sys\nprint("ComfyUI", sys.version)\n' > "$W/ComfyUI/main.py"
    LOCK=$W/bench.lock.json
    local step
    for step in \
        "pin $REQS --offline --wheels-dir $WHEELS -o $W/pins.json" \
        "lock $W/ComfyUI --tag bench --no-python -o $LOCK" \
        "pin $REQS --offline --wheels-dir $WHEELS --lock $LOCK" \
        "materialize $LOCK $W/warmup --offline"; do
        # shellcheck disable=SC2086
        if ! "$BIN" -q --store "$S" $step >>"$log" 2>&1; then
            say "comfystore: \`comfystore $step\` failed, its rows are skipped:"
            tail -n 5 "$log" | sed 's/^/    /' | tee -a "$SUMMARY" >&2
            return 1
        fi
    done
}

# --- ext4: uv hardlink, pip, cp -al, comfystore hardlink ------------------------------------
M4=$WORK/mnt-ext4
if ! mkfs_mount ext4 "$WORK/ext4.img" "$M4" || ! mountpoint -q "$M4"; then
    M4=$WORK/rootfs; mkdir -p "$M4"
    say "WARNING: no ext4 loop mount; using $M4 as is (on a nojournal ext4, rm -rf + create is penalised)"
fi
C4=$M4/uv-cache
say ""; say "## ext4 ($(findmnt -n -o FSTYPE -T "$M4"), $M4)"
# warm uv's cache (unzipped wheels) and install the source venv for the cp floor, as real files
eval "$(uv_install "$C4" "$M4/venv" copy)"
eval "$(uv_install "$C4" "$M4/warm" hardlink)"; rm -rf "$M4/warm"
tree_stats "$M4/venv" "installed venv (uv, link-mode copy)"
say "  site-packages: $(find "$M4/venv/lib" -maxdepth 3 -name '*.dist-info' | wc -l) dists," \
    "$(find "$M4/venv/lib" -type f | wc -l) files;" \
    "median file size $(find "$M4/venv" -type f -printf '%s\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') B"
sync
bench ext4-1 --runs "$RUNS" \
    -n "cp -al (floor)" --prepare "rm -rf $M4/d-cp; sync" "cp -al $M4/venv $M4/d-cp" \
    -n "uv hardlink" --prepare "rm -rf $M4/d-uv; sync" "$(uv_install "$C4" "$M4/d-uv" hardlink)"
bench ext4-2 --runs "$PIP_RUNS" \
    -n "pip --no-compile" --prepare "rm -rf $M4/d-pip; sync" "$(pip_install "$M4/d-pip")"
if comfy_setup "$M4/store" "$M4/cs"; then
    bench ext4-3 --runs "$RUNS" \
        -n "comfystore hardlink" --prepare "$(cs_prepare "$M4/store" "$M4/d-cs")" \
        "$(cs_materialize "$M4/store" "$LOCK" "$M4/d-cs" hardlink)" ||
        say "comfystore materialize --venv-link hardlink failed"
fi
for d in cp uv pip cs; do if [ -d "$M4/d-$d" ]; then tree_stats "$M4/d-$d" "  result d-$d"; fi; done
link_info "$M4/d-uv" "uv hardlink"
if [ -d "$M4/d-cs" ]; then link_info "$M4/d-cs" "comfystore hardlink"; fi

# --- XFS reflink: uv clone, cp --reflink=always, comfystore reflink -------------------------
MX=$WORK/mnt-xfs
say ""
if mkfs_mount xfs "$WORK/xfs.img" "$MX" && [ "$(findmnt -n -o FSTYPE "$MX" || true)" = xfs ]; then
    CX=$MX/uv-cache
    say "## xfs reflink=1 ($MX)"
    eval "$(uv_install "$CX" "$MX/venv" copy)"
    eval "$(uv_install "$CX" "$MX/warm" clone)"; rm -rf "$MX/warm"
    sync
    bench xfs-1 --runs "$RUNS" \
        -n "cp -a --reflink=always (floor)" --prepare "rm -rf $MX/d-cp; sync" \
        "cp -a --reflink=always $MX/venv $MX/d-cp" \
        -n "uv clone" --prepare "rm -rf $MX/d-uv; sync" "$(uv_install "$CX" "$MX/d-uv" clone)"
    if comfy_setup "$MX/store" "$MX/cs"; then
        bench xfs-2 --runs "$RUNS" \
            -n "comfystore reflink" --prepare "$(cs_prepare "$MX/store" "$MX/d-cs")" \
            "$(cs_materialize "$MX/store" "$LOCK" "$MX/d-cs" reflink)" ||
            say "comfystore materialize --venv-link reflink failed"
    fi
    for d in cp uv cs; do if [ -d "$MX/d-$d" ]; then tree_stats "$MX/d-$d" "  result d-$d"; fi; done
    link_info "$MX/d-uv" "uv clone"
    if [ -d "$MX/d-cs" ]; then link_info "$MX/d-cs" "comfystore reflink"; fi
else
    say "## xfs: SKIPPED (mkfs.xfs -m reflink=1 or mount -o loop of $WORK/xfs.img failed)"
fi

# --- table: mean ± σ, median, min–max, × the floor, × uv ------------------------------------
python3 - "$RESULTS" "$(find "$M4/venv" -type f | wc -l)" <<'PY' | tee -a "$SUMMARY"
import glob, json, os, sys
res, nfiles = sys.argv[1], int(sys.argv[2])
for fs in ("ext4", "xfs"):
    rows = [r for f in sorted(glob.glob(os.path.join(res, fs + "-*.json")))
            for r in json.load(open(f))["results"]]
    if not rows:
        continue
    floor = next(r for r in rows if r["command"].endswith("(floor)"))["mean"]
    uv = next((r["mean"] for r in rows if r["command"].startswith("uv ")), None)
    print(f"\n{fs} ({nfiles} files in the venv)\n")
    print(f"| command | mean ± σ (s) | median (min–max) | µs/file | × floor | × uv |")
    print(f"|---|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["mean"]
        print(f"| {r['command']} | {m:.3f} ± {r['stddev'] or 0:.3f} | {r['median']:.3f} "
              f"({r['min']:.3f}–{r['max']:.3f}) | {m / nfiles * 1e6:.1f} | {m / floor:.2f} | "
              + (f"{m / uv:.2f} |" if uv else "– |"))
PY
{ echo; echo "CPU used by other processes during each comparison:"; cat "$RESULTS/noise.txt"; } |
    tee -a "$SUMMARY"
echo "results: $RESULTS" >&2
