#!/usr/bin/env python3
"""How right the progress bars' etas are on a mixed tree (issue 19, "honest progress").

    scripts/bench/eta.py WORKDIR BIN [BIN_BEFORE] [--files 20000] [--model-mib 800]

Makes WORKDIR/mixed: gen_tree.py's 20k-file venv-shaped tree plus one MODEL-MIB model, then
for each binary runs, on a real pseudo-terminal (`script` from util-linux, 200 columns):

  * `add WORKDIR/mixed` into a fresh store,
  * `materialize TREE DEST --link copy` from that store into a fresh DEST,

recording every bar line drawn with the second it arrived. For each bar that shows an eta, it
compares the eta with the time the bar really had left (until the last line of that bar) at
the frames from 2 s after the bar appeared to 1 s before its end, and prints a markdown table:
the share of those frames whose eta is within a factor of 2 (plus a second for indicatif's
whole seconds), the worst under- and over-estimate, and a few samples.

Calibration (printed first): `add` and `materialize --link copy` of the venv tree alone and of
the model alone, each into a fresh store / DEST, split the tree's time into bytes (at the
model's rate) and files: the per-file cost in seconds and in bytes' worth of the model's rate,
which is what src/report.rs's HASH_FILE_COST / PLACE_FILE_COST stand for. Wall clock and
CPU (user+sys of the children) both: on a loaded machine the CPU split is the steadier one.

Wall-clock figures depend on the machine and its load: the load average is printed beside
them. The temp data (about 2.3 GB with the default sizes) is deleted at the end unless --keep.
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_timed(cmd):
    """Run cmd quietly: (wall seconds, user+sys seconds of the children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    return path


def make_data(work, files, model_mib):
    mixed = os.path.join(work, "mixed")
    if os.path.exists(os.path.join(mixed, ".done")):
        return mixed
    fresh(mixed)
    subprocess.run(
        [sys.executable, os.path.join(HERE, "gen_tree.py"), os.path.join(mixed, "venv"),
         "--files", str(files)],
        check=True, stdout=subprocess.DEVNULL)
    os.makedirs(os.path.join(mixed, "models"))
    with open(os.path.join(mixed, "models", "model.safetensors"), "wb") as f:
        for _ in range(model_mib):
            f.write(os.urandom(1 << 20))
    open(os.path.join(mixed, ".done"), "w").close()
    return mixed


def tree_bytes(d):
    total = n = 0
    for root, _, names in os.walk(d):
        for name in names:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p) and name != ".done":
                total += os.path.getsize(p)
                n += 1
    return total, n


def add(bin_, store, path):
    out = subprocess.run([bin_, "-q", "--store", store, "add", path], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[0]


def calibrate(bin_, work, mixed):
    """Per-file cost of add and of materialize --link copy, from the tree alone vs the model."""
    venv, models = os.path.join(mixed, "venv"), os.path.join(mixed, "models")
    vb, vn = tree_bytes(venv)
    mb, _ = tree_bytes(models)
    rows = []
    s = os.path.join(work, "cal-store")
    d = os.path.join(work, "cal-dest")
    for what in ("add", "materialize --link copy"):
        res = {}
        for name, path in (("venv", venv), ("model", models)):
            fresh(s)
            fresh(d)
            if what == "add":
                res[name] = run_timed([bin_, "-q", "--store", s, "add", path])
            else:
                tree = add(bin_, s, path)
                subprocess.run(["sync"], check=True)
                res[name] = run_timed([bin_, "-q", "--store", s, "materialize", tree, d,
                                       "--link", "copy"])
        for k, label in ((0, "wall"), (1, "cpu")):
            per_byte = res["model"][k] / mb
            per_file = (res["venv"][k] - vb * per_byte) / vn
            rows.append((what, label, res["venv"][k], res["model"][k], per_file * 1e6,
                         per_file / per_byte / 1024))
    fresh(s)
    fresh(d)
    print(f"\n### Per-file cost (venv tree: {vn} files, {vb / 2**20:.0f} MiB; "
          f"model {mb / 2**20:.0f} MiB; load {load()})\n")
    print("| operation | clock | venv tree s | model s | per file µs | per file, KiB of model bytes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.0f} | {r[5]:.0f} |")


ETA = re.compile(r"^\s*(\S+) .* eta (\d+)([smh])$")


def on_a_terminal(cmd):
    """Run cmd on a pty: its bar lines, each with the second it arrived, and the total time."""
    full = "stty cols 200 rows 50; " + cmd
    start = time.monotonic()
    p = subprocess.Popen(["script", "-qfec", full, "/dev/null"], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=dict(os.environ, TERM="xterm-256color"))
    frames, seg, esc = [], bytearray(), False
    spinners = {}  # label -> seconds it was last drawn
    while True:
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            break
        at = time.monotonic() - start
        for b in chunk:
            if esc:
                esc = not (chr(b).isalpha() or b == ord("~"))
                continue
            if b in (0x1B, 0x0D, 0x0A):
                text = seg.decode("utf-8", "replace")
                for label in ("planning", "saving"):
                    if re.search(rf"\b{label} \S+ \d+s", text):
                        spinners.setdefault(label, [at, at])[1] = at
                # Several bars' lines may follow each other unbroken: cut after each eta.
                for m in re.finditer(r".*? eta \d+[smh]", text):
                    frames.append((at, m.group(0).strip()))
                seg.clear()
                esc = b == 0x1B
            else:
                seg.append(b)
    rc = p.wait()
    if rc != 0:
        raise SystemExit(f"{cmd} failed ({rc})")
    return frames, time.monotonic() - start, spinners


def judge(frames, ended):
    """Per bar label: (frames checked, share within 2x, worst low ratio, worst high ratio, samples)."""
    by_label = {}
    for at, f in frames:
        m = ETA.match(f)
        if m:
            n = int(m.group(2)) * {"s": 1, "m": 60, "h": 3600}[m.group(3)]
            by_label.setdefault(m.group(1), []).append((at, n, f))
    out = {}
    for label, fs in by_label.items():
        first, last = fs[0][0], fs[-1][0]
        checked = []
        for at, eta, f in fs:
            left = last - at
            if at < first + 2 or left < 1:
                continue
            checked.append((at - first, eta, left, f))
        if not checked:
            out[label] = (0, 0, 0, 0, [], last - first)
            continue
        ok = sum(1 for _, eta, left, _ in checked if left / 2 - 1 <= eta <= left * 2 + 1)
        ratios = [(eta + 0.5) / left for _, eta, left, _ in checked]
        step = max(1, len(checked) // 6)
        samples = [(round(a, 1), eta, round(left, 1)) for a, eta, left, _ in checked[::step]]
        out[label] = (len(checked), ok / len(checked), min(ratios), max(ratios), samples,
                      last - first)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("bin")
    ap.add_argument("bin_before", nargs="?")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--model-mib", type=int, default=800)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if shutil.which("script") is None:
        raise SystemExit("needs `script` (util-linux)")
    os.makedirs(a.work, exist_ok=True)
    mixed = make_data(a.work, a.files, a.model_mib)
    print(f"# Progress etas on a mixed tree ({a.files} files + a {a.model_mib} MiB model)")
    print(f"\nbinaries: after {a.bin}" + (f", before {a.bin_before}" if a.bin_before else ""))
    if not a.no_calibrate:
        calibrate(a.bin, a.work, mixed)
    bins = [("after", a.bin)] + ([("before", a.bin_before)] if a.bin_before else [])
    rows, still = [], []
    for name, b in bins:
        s = fresh(os.path.join(a.work, "store-" + name))
        d = fresh(os.path.join(a.work, "dest-" + name))
        q = lambda x: "'" + x.replace("'", "'\\''") + "'"
        l0 = load()
        frames, took, spin = on_a_terminal(f"exec {q(b)} --store {q(s)} add {q(mixed)}")
        for label, r in judge(frames, took).items():
            rows.append((name, "add", label, took, l0) + r)
        still.append((name, "add", frames, took, spin))
        tree = add(b, s, mixed)  # cached: the id only
        subprocess.run(["sync"], check=True)
        l0 = load()
        frames, took, spin = on_a_terminal(
            f"exec {q(b)} --store {q(s)} materialize {tree} {q(d)} --link copy")
        for label, r in judge(frames, took).items():
            rows.append((name, "materialize --link copy", label, took, l0) + r)
        still.append((name, "materialize --link copy", frames, took, spin))
        fresh(s)
        fresh(d)
    print(f"\n### Eta against the time the bar really had left (frames from 2 s after the bar "
          f"appeared to 1 s before its last)\n")
    print("| binary | command | bar | command s | load | bar s | frames | within 2x | "
          "worst eta/left low | high | samples (s into bar, eta, left) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, cmd, label, took, l0, n, ok, lo, hi, samples, span) in rows:
        if label[0].isdigit() or len(label) > 40:
            continue
        print(f"| {name} | {cmd} | {label} | {took:.1f} | {l0} | {span:.1f} | {n} | "
              f"{ok * 100:.0f} % | {lo:.2f} | {hi:.2f} | {samples} |")
    print("\n### Time without a moving bar: before the first bar line, after the last (s), "
          "and the spinners drawn meanwhile (first, last second drawn)\n")
    print("| binary | command | command s | before first bar | after last bar | spinners |")
    print("|---|---|---|---|---|---|")
    for name, cmd, frames, took, spin in still:
        first = frames[0][0] if frames else took
        last = frames[-1][0] if frames else took
        sp = ", ".join(f"{k} {v[0]:.1f}-{v[1]:.1f}" for k, v in spin.items()) or "none"
        print(f"| {name} | {cmd} | {took:.1f} | {first:.1f} | {took - last:.1f} | {sp} |")
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
