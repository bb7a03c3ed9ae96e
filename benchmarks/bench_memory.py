#!/usr/bin/env python3
"""Peak memory of `cnndsl train` streaming a folder: 10,000 images against 100,000.

The goal: with `--cache stream --workers 2` at 3×224×224, the peak memory of the whole
run is ≤ 3 GB and does not grow with the number of images (the 100k / 10k ratio ≈ 1).

What runs: for each size N (default 10,000 and 100,000), a folder of N small JPEGs
(64×64, written once under --root; `train/cNN/` plus a 100-image `test/`) and

    cnndsl train "INPUT(3, 224, 224) -> CONV7-16/4 -> RELU -> GAP -> FC-10" \\
        --data folder:DIR --cache stream --workers 2 --epochs 1 --batch-size 256 --out TMP

*without* `--limit`: `--limit` cuts the file list before anything else, so a limited run
on 100,000 files would hold the index of only the first few thousand, and would not
measure what grows with the data set (the index, the epoch's permutation and batch
lists, the workers' copies of the file list). One full epoch reads every file once
(train, then validation, then test), so everything that could grow with N is alive at
some point. The net is tiny so that the epoch is cheap; the images are small files so
that 100,000 are quick to write, and are decoded and resized to 224×224, so the batches
(256×3×224×224 uint8 from the workers, float32 in the main process) are full size.

What is measured, every 50 ms from /proc, over the run's process tree (the `cnndsl`
process and its DataLoader workers, found by parent pid):

* peak of Σ RSS   — resident pages of every process, summed: pages the forked workers
                    share with the main process (torch's libraries, the file list) are
                    counted once per process, so this over-counts; the goal is checked on it;
* peak of Σ PSS   — proportional set size (shared pages divided among their sharers):
                    the machine memory the tree really holds;
* main VmHWM      — the main process's own peak RSS: the kernel's high-water mark
                    (monotonic, so only its last 50 ms can be missed).

Then, the case that fails today without streaming: `--cache auto` on the 100,000-image
folder at 224 — the run's log line (`DataSplits.how`) says which path auto chose and why.
`--cache ram` there would need N × 3×224×224 bytes (15 GB); it is not run, only computed.

    .venv/bin/python benchmarks/bench_memory.py            # 10k and 100k, ~4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_memory.py --sizes 2000 20000 --json
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SPEC = "INPUT(3, 224, 224) -> CONV7-16/4 -> RELU -> GAP -> FC-10"
SHAPE = (3, 224, 224)
CLASSES = 10
VARIANTS = 512   # distinct 64×64 JPEGs; each file is one of them (only the bytes are copied)
GB = 1e9


# --- the folders ------------------------------------------------------------------------

def _variants(side: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(VARIANTS):
        low = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
        noise = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        buf = io.BytesIO()
        Image.blend(low, noise, 0.1).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


_BYTES: list[bytes] = []


def _write(job: tuple[str, int]) -> None:
    path, i = job
    with open(path, "wb") as f:
        f.write(_BYTES[i % VARIANTS])


def make_folder(root: Path, n: int, side: int, say=print) -> Path:
    d = root / f"small-{n}"
    marker = d / ".complete"
    if marker.is_file() and marker.read_text().strip() == f"{n} {side}":
        say(f"folder: {d} (cached: {n:,} training JPEGs of {side}×{side} + 100 test)")
        return d
    global _BYTES
    _BYTES = _variants(side)
    jobs = []
    for split, count in (("train", n), ("test", 100)):
        for k in range(CLASSES):
            (d / split / f"c{k:02d}").mkdir(parents=True, exist_ok=True)
        jobs += [(str(d / split / f"c{i % CLASSES:02d}" / f"{i:07d}.jpg"), i) for i in range(count)]
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool() as pool:   # the workers inherit _BYTES
        for _ in pool.imap_unordered(_write, jobs, chunksize=512):
            pass
    marker.write_text(f"{n} {side}")
    say(f"folder: wrote {len(jobs):,} JPEGs of {side}×{side} into {d} in "
        f"{time.perf_counter() - started:.1f} s")
    return d


# --- sampling the process tree -------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _kib(path: str, key: bytes) -> int:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Every `every` seconds: Σ RSS and Σ PSS of `pid`'s process tree; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = self.samples = self.main_hwm = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            rss = sum(_kib(f"/proc/{p}/status", b"VmRSS:") for p in pids) * 1024
            pss = sum(_kib(f"/proc/{p}/smaps_rollup", b"Pss:") for p in pids) * 1024
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(pids))
            self.main_hwm = max(self.main_hwm, _kib(f"/proc/{self.pid}/status", b"VmHWM:") * 1024)
            self.samples += 1
            self.done.wait(self.every)


def measure(folder: Path, args, say) -> dict:
    with tempfile.TemporaryDirectory(prefix="cnndsl-bench-mem-") as tmp:
        cmd = [sys.executable, "-m", "cnndsl", "train", SPEC, "--data", f"folder:{folder}",
               "--cache", "stream", "--workers", str(args.workers), "--epochs", "1",
               "--batch-size", str(args.batch_size), "--out", f"{tmp}/run"]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(proc.pid)
        sampler.start()
        output = proc.communicate()[0]
        sampler.done.set()
        sampler.join()
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            say(output[-3000:])
            raise SystemExit(f"cnndsl train failed (exit {proc.returncode}): {' '.join(cmd)}")
        m = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    how = next((ln.strip() for ln in output.splitlines() if "streamed" in ln), "")
    return {"folder": str(folder), "seconds": seconds, "peak_rss_sum": sampler.peak_rss,
            "peak_pss_sum": sampler.peak_pss, "main_vmhwm": sampler.main_hwm,
            "processes": sampler.peak_procs, "samples": sampler.samples,
            "images_per_s": m["images_per_s"], "log": how, "cmd": cmd}


def auto_choice(folder: Path, n: int) -> dict:
    """Which path `--cache auto` takes on `folder` at 224 (indexing only: nothing is decoded
    when it streams), and what `--cache ram` would need."""
    from cnndsl.training import limits
    from cnndsl.training.data import load_data

    data = load_data(f"folder:{folder}", SHAPE, cache="auto", workers=0)
    total = len(data.train) + len(data.val) + len(data.test)
    return {"how": data.how, "ram_bytes": total * math.prod(SHAPE),
            "ram_human": limits.human_bytes(total * math.prod(SHAPE)),
            "machine_memory": limits.machine_memory(), "streams": "streamed" in data.how}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/cnndsl-bench-mem"),
                   help="where the folders are written (once) and cached")
    p.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000], metavar=("SMALL", "LARGE"))
    p.add_argument("--side", type=int, default=64, help="side of the generated JPEGs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None,
                   help="pass --limit N (not by default: it cuts the index, see the doc)")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    args = p.parse_args()
    say = print

    runs = {}
    for n in args.sizes:
        folder = make_folder(args.root, n, args.side, say)
        r = runs[n] = measure(folder, args, say)
        say(f"{n:>9,} images: peak Σ RSS {r['peak_rss_sum'] / GB:5.2f} GB, peak Σ PSS "
            f"{r['peak_pss_sum'] / GB:5.2f} GB, main VmHWM {r['main_vmhwm'] / GB:5.2f} GB "
            f"({r['processes']} processes at most, {r['samples']} samples; {r['seconds']:.0f} s, "
            f"{r['images_per_s']:,.0f} images/s)")
    small, large = (runs[n] for n in args.sizes)
    say(f"cnndsl train {SPEC!r} --cache stream --workers {args.workers} --epochs 1 "
        f"--batch-size {args.batch_size}{' --limit ' + str(args.limit) if args.limit else ' (no --limit)'}; "
        f"process tree sampled every 50 ms from /proc")
    say(f"  log: {large['log']}")
    ratios = {}
    for key, what in (("peak_rss_sum", "peak Σ RSS (main + workers; shared pages counted per process)"),
                      ("peak_pss_sum", "peak Σ PSS (main + workers; shared pages divided)"),
                      ("main_vmhwm", "main process VmHWM (kernel high-water mark)")):
        ratios[key] = large[key] / small[key]
        say(f"  {what:<66} {small[key] / GB:5.2f} GB at {args.sizes[0]:,}, {large[key] / GB:5.2f} GB "
            f"at {args.sizes[1]:,}: ratio {ratios[key]:.3f}")
    ok_abs = large["peak_rss_sum"] <= 3 * GB
    ok_ratio = ratios["peak_rss_sum"] <= 1.10
    say(f"  goal: peak ≤ 3 GB at {args.sizes[1]:,}: {'ok' if ok_abs else 'ABOVE GOAL'} "
        f"({large['peak_rss_sum'] / GB:.2f} GB Σ RSS); ratio ≈ 1.0 (≤ 1.10): {'ok' if ok_ratio else 'ABOVE GOAL'}")

    auto = auto_choice(Path(large["folder"]), args.sizes[1])
    say(f"--cache auto on {args.sizes[1]:,} images at 3×224×224 (machine memory "
        f"{auto['machine_memory'] / 2**30 if auto['machine_memory'] else float('nan'):.1f} GiB): "
        f"{'streams' if auto['streams'] else 'DECODES INTO MEMORY'}; --cache ram would hold "
        f"{auto['ram_human']} (not run)")
    say(f"  log: {auto['how']}")
    if args.json:
        print(json.dumps({"runs": {str(k): v for k, v in runs.items()}, "ratios": ratios, "auto": auto}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
