#!/usr/bin/env python3
"""Streaming JPEG loader: cnndsl's `FileSplit` against torchvision's ImageFolder + DataLoader.

A folder of ImageNet-like JPEGs is generated once (cached under --dir; mixed sizes with
sides of 300-500 px, smooth random content plus texture and grain, quality 90), laid out
as `DIR/train/cNN/*.jpg` (--images of them) and `DIR/test/cNN/*.jpg` (100: a small test
split, so that `--train` does not spend minutes evaluating).

Both sides then decode the *same* training images, in the *same* order (one seeded
permutation cut in batches of --batch), with the *same* transforms and worker count:

* cnndsl:      `load_data("folder:DIR", (3, 224, 224), cache="stream", workers=W,
               augment={"resized_crop": True}).train.batches(index_batches, epoch=0,
               train=True)` — Pillow RandomResizedCrop (with libjpeg's draft decoding);
* torchvision: `ImageFolder(DIR/train, v2.Compose([RandomResizedCrop(224, antialias=True),
               ToImage(), ToDtype(torch.uint8)]))` in a `DataLoader(batch_sampler=the same
               batches, num_workers=W)`.

No normalisation and no flip on either side; both give uint8 N×3×224×224 batches. Each
side's first --warmup batches (worker start-up, first decodes) are not timed; the next
--batches are. The two alternate --repeats times (so drift hits both) and the best of
each counts; the ratio cnndsl / torchvision is printed (goal ≥ 1.0).

torchvision cannot be installed beside this project's torch 2.13; the torchvision side
runs only when `import torchvision` works (otherwise it says so, loudly). For the ratio:

    python3 -m venv /tmp/venv-tv
    /tmp/venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy pillow scikit-learn lark networkx pyyaml rich
    /tmp/venv-tv/bin/pip install -e . --no-deps
    /tmp/venv-tv/bin/python benchmarks/bench_data.py --workers 2

`--train` also runs `cnndsl train resnet18 --data folder:DIR --cache stream --workers W
--limit 512 --epochs 1 --batch-size 32` and prints `data_wait` (the share of the epoch's
training time spent waiting for the next batch) from its metrics.jsonl: goal < 5 %.
`--train-only` skips the loader comparison. `--train-args` replaces those flags (for a
GPU: `"resnet50 --limit 6400 --batch-size 256 --compile"`).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see cnndsl/cli/common.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

CLASSES = 10
TEST_PER_CLASS = 10
SIZE = 224


# --- generating the folder -----------------------------------------------------------

_GRAIN = None   # a per-process tile of uniform noise, cut at a random offset per image


def _make_jpeg(job: tuple[str, int]) -> int:
    """One ImageNet-like JPEG: sides 300-500 px, smooth colour fields + texture + grain
    (all in Pillow's C code: about 5 ms an image)."""
    global _GRAIN
    from PIL import Image

    path, seed = job
    rng = np.random.default_rng(seed)
    if _GRAIN is None:
        _GRAIN = Image.fromarray(np.random.default_rng(12345).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    w, h = (int(v) for v in rng.integers(300, 501, size=2))
    low = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8)).resize(
        (w, h), Image.BILINEAR)
    x, y = (int(v) for v in rng.integers(0, 1024 - 500, size=2))
    img = Image.blend(Image.blend(low, mid, 0.4), _GRAIN.crop((x, y, x + w, y + h)), 0.12)
    img.save(path, quality=90)
    return os.path.getsize(path)


def make_folder(root: Path, images: int, say=print, size_fn=_make_jpeg) -> dict:
    """`root/train/cNN/` with `images` files and `root/test/cNN/` with 100, generated once
    (a `.complete` marker records how many; a different count regenerates)."""
    marker = root / ".complete"
    if marker.is_file() and marker.read_text().strip() == str(images):
        say(f"folder: {root} (cached: {images:,} training JPEGs + {CLASSES * TEST_PER_CLASS} test)")
        return {"generated": False, "seconds": 0.0}
    jobs = []
    for split, count in (("train", images), ("test", CLASSES * TEST_PER_CLASS)):
        for k in range(CLASSES):
            (root / split / f"c{k:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            seed = i if split == "train" else 10**9 + i
            jobs.append((str(root / split / f"c{i % CLASSES:02d}" / f"{i:07d}.jpg"), seed))
    started = time.perf_counter()
    with multiprocessing.Pool() as pool:
        total = sum(pool.imap_unordered(size_fn, jobs, chunksize=64))
    seconds = time.perf_counter() - started
    marker.write_text(str(images))
    say(f"folder: generated {len(jobs):,} JPEGs ({total / len(jobs) / 1024:.0f} KiB on average) "
        f"in {root} in {seconds:.1f} s with {os.cpu_count()} processes")
    return {"generated": True, "seconds": seconds, "mean_bytes": total / len(jobs)}


def warm_page_cache(files: list[str]) -> None:
    """Read every file once, so neither side pays for the disk and both read from memory."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass


# --- the two loaders --------------------------------------------------------------------

def time_batches(iterator, warmup: int, batches: int) -> float:
    """Images/s over `batches` batches after `warmup` untimed ones."""
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = next(iterator)
        assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, SIZE, SIZE), (x.dtype, x.shape)
        n += len(x)
    return n / (time.perf_counter() - started)


def cnndsl_side(split, index_batches, args) -> float:
    it = iter(split.batches(index_batches, epoch=0, train=True))
    try:
        return time_batches(it, args.warmup, args.batches)
    finally:
        del it   # ends the DataLoader's workers


def torchvision_side(train_dir: Path, files: list[str], index_batches, args) -> float:
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.ToImage(),
                            v2.ToDtype(torch.uint8)])
    dataset = datasets.ImageFolder(str(train_dir), transform=transform)
    where = {os.path.realpath(p): i for i, (p, _) in enumerate(dataset.samples)}
    ours = [where[os.path.realpath(f)] for f in files]   # the same image for each index
    batch_lists = [[ours[i] for i in idx.tolist()] for idx in index_batches]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_lists,
                                         num_workers=args.workers,
                                         multiprocessing_context="fork" if args.workers else None)
    it = iter(loader)
    try:
        return time_batches(it, args.warmup, args.batches)
    finally:
        del it


def compare_loaders(root: Path, args, say) -> dict:
    from cnndsl.training.data import load_data

    started = time.perf_counter()
    data = load_data(f"folder:{root}", (3, SIZE, SIZE), cache="stream", workers=args.workers,
                     augment={"resized_crop": True})
    say(f"load_data: {time.perf_counter() - started:.2f} s; {data.how}")
    split = data.train
    need = (args.warmup + args.batches) * args.batch
    if len(split) < need:
        raise SystemExit(f"{len(split):,} training images, fewer than the {need:,} that "
                         f"--warmup + --batches need: use more --images")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:need]
    index_batches = list(order.split(args.batch))
    warm_page_cache([split.files[i] for i in order.tolist()])

    try:
        import torchvision  # noqa: F401
        tv_version = torchvision.__version__
    except Exception as e:   # ImportError, or a binary mismatch with this torch
        tv_version = None
        bar = "!" * 78
        say(f"{bar}\n!! torchvision SKIPPED: `import torchvision` failed here ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}).\n!! Only cnndsl's side is "
            f"measured; no ratio. For the ratio, run this with a venv that has torchvision\n"
            f"!! (see the module doc: /tmp/venv-tv).\n{bar}")

    best = {"cnndsl": 0.0, "torchvision": 0.0}
    for r in range(args.repeats):
        best["cnndsl"] = max(best["cnndsl"], cnndsl_side(split, index_batches, args))
        if tv_version:
            best["torchvision"] = max(best["torchvision"],
                                      torchvision_side(root / "train", split.files, index_batches, args))
    timed = args.batches * args.batch
    say(f"decode + RandomResizedCrop(224) to uint8 batches of {args.batch}, {args.workers} workers, "
        f"{timed:,} images timed after {args.warmup} warm-up batch(es), best of {args.repeats}; "
        f"torch {torch.__version__}" + (f", torchvision {tv_version}" if tv_version else ""))
    say(f"  cnndsl FileSplit.batches (Pillow, draft decode)  {best['cnndsl']:9,.1f} images/s")
    out = {"cnndsl_images_per_s": best["cnndsl"], "torchvision": tv_version, "workers": args.workers,
           "batch": args.batch, "timed_images": timed}
    if tv_version:
        ratio = best["cnndsl"] / best["torchvision"]
        verdict = "ok" if ratio >= 1.0 else "BELOW GOAL"
        say(f"  torchvision ImageFolder + DataLoader + v2          {best['torchvision']:9,.1f} images/s")
        say(f"  ratio cnndsl / torchvision                        {ratio:9.3f}   goal ≥ 1.0: {verdict}")
        out.update(torchvision_images_per_s=best["torchvision"], ratio=ratio)
    else:
        say("  torchvision: SKIPPED (not importable) — no ratio")
    return out


# --- data_wait of a real training run ----------------------------------------------------

def train_wait(root: Path, args, say) -> dict:
    extra = shlex.split(args.train_args)
    with tempfile.TemporaryDirectory(prefix="cnndsl-bench-train-") as tmp:
        cmd = [sys.executable, "-m", "cnndsl", "train", *extra[:1], "--data", f"folder:{root}",
               "--cache", "stream", "--workers", str(args.workers), "--epochs", "1",
               "--out", f"{tmp}/run", *extra[1:]]
        say("$ " + " ".join(shlex.quote(c) for c in cmd))
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            say(proc.stdout[-2000:] + proc.stderr[-2000:])
            raise SystemExit(f"cnndsl train failed (exit {proc.returncode})")
        lines = [ln for ln in proc.stdout.splitlines() if "folder:" in ln or "streamed" in ln]
        for ln in lines[:2]:
            say("  log: " + ln.strip())
        m = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    wait = m["data_wait"]
    verdict = "ok" if wait < 0.05 else "ABOVE GOAL"
    say(f"  train epoch {m['seconds']:.1f} s (whole command {wall:.1f} s): {m['images_per_s']:,.1f} images/s, "
        f"train_tflops {m.get('train_tflops')}, mfu {m.get('mfu')}")
    say(f"  data_wait (share of the epoch's training time waiting for the next batch) "
        f"{wait:.2%}   goal < 5 %: {verdict}")
    return {"train_cmd": cmd, "data_wait": wait, "images_per_s": m["images_per_s"],
            "train_tflops": m.get("train_tflops"), "mfu": m.get("mfu"), "epoch_seconds": m["seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/cnndsl-bench-jpegs"),
                   help="where the JPEG folder is generated (once) and cached")
    p.add_argument("--images", type=int, default=20_000, help="training JPEGs to generate")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--repeats", type=int, default=2, help="alternate the two sides this often")
    p.add_argument("--train", action="store_true", help="also: data_wait of a cnndsl train run")
    p.add_argument("--train-only", action="store_true", help="only the --train measurement")
    p.add_argument("--train-args", default="resnet18 --limit 512 --batch-size 32",
                   help="SPEC then extra flags of the --train run (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    args = p.parse_args()
    say = print
    result = {"folder": str(args.dir), "images": args.images,
              **make_folder(args.dir, args.images, say)}
    if not args.train_only:
        result.update(compare_loaders(args.dir, args, say))
    if args.train or args.train_only:
        result.update(train_wait(args.dir, args, say))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
