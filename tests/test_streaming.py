"""Streaming a folder: `--cache stream` trains exactly as `--cache ram`, `--limit` comes
before any decoding, a resumed streamed run repeats the uninterrupted one, the run says
which path it took, and every epoch reports its model FLOP/s (6 × MACs per image)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnndsl.training import data as data_module
from cnndsl.training import images, splits
from cnndsl.training.data import load_data
from cnndsl.training.throughput import mfu, peak_tflops, train_tflops
from helpers import run_main

NET = "INPUT(3, 16, 16) -> CONV3-8 -> BN -> RELU -> POOL -> FC-3"


def image_folder(root, per_class=12, sizes=((20, 24), (16, 16), (31, 17))):
    """Three classes of coloured noise, PNG and JPEG, of mixed sizes, class c brighter in plane c."""
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            arr = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
            arr[..., c] += 120
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(arr).save(folder / f"img{i:03d}{suffix}")
    return root


def train(tmp_path, capsys, out, *flags):
    status, out_text, err = run_main(capsys, "train", NET, "--data", f"folder:{tmp_path / 'imgs'}",
                                     "--epochs", "2", "--batch-size", "8", "--seed", "3",
                                     "--out", str(tmp_path / out), *flags)
    assert status == 0, err
    lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], out_text


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "imgs")


def test_streamed_and_in_memory_runs_are_the_same(tmp_path, folder, capsys):
    # The same decoding (images.decode) feeds both paths, and batches are drawn from the
    # same seeded order: on a CPU the two runs agree to the last bit.
    ram, ram_log = train(tmp_path, capsys, "ram", "--cache", "ram")
    stream, stream_log = train(tmp_path, capsys, "stream", "--cache", "stream", "--workers", "2")
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[m[k] for k in keys] for m in ram] == [[m[k] for k in keys] for m in stream]
    assert "decoded into memory" in ram_log and "--cache ram" in ram_log
    assert "streamed from disk (--cache stream)" in stream_log and "2 worker processes" in stream_log


def test_a_resumed_streamed_run_repeats_the_uninterrupted_one(tmp_path, folder, capsys,
                                                                monkeypatch):
    whole, _ = train(tmp_path, capsys, "whole", "--cache", "stream", "--workers", "2",
                     "--epochs", "3")
    # The same run, interrupted (Ctrl-C) right after epoch 1 is written, with 1 worker ...
    from cnndsl.training import loop
    end_epoch = loop._end_epoch

    def interrupted(run, metrics):
        end_epoch(run, metrics)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_end_epoch", interrupted)
    status, _, _ = run_main(capsys, "train", NET, "--data", f"folder:{folder}", "--epochs", "3",
                            "--batch-size", "8", "--seed", "3", "--out", str(tmp_path / "parts"),
                            "--cache", "stream", "--workers", "1")
    assert status == 130
    monkeypatch.setattr(loop, "_end_epoch", end_epoch)
    # ... then resumed with 2 workers: the samples and their order come from (seed, epoch).
    resumed, log = train(tmp_path, capsys, "parts", "--cache", "stream", "--workers", "2",
                         "--epochs", "3", "--resume")
    assert "resuming after epoch 1" in log
    timing = ("seconds", "images_per_s", "train_tflops", "mfu", "data_wait")
    strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]  # noqa: E731
    assert len(resumed) == 3 and strip(resumed) == strip(whole)


def test_cache_auto_streams_when_a_crop_is_asked_for_per_sample(tmp_path, folder):
    ds = load_data(f"folder:{folder}", (3, 16, 16), augment={"resized_crop": True})
    assert isinstance(ds.train, splits.FileSplit) and "resized_crop" in ds.how
    ds = load_data(f"folder:{folder}", (3, 16, 16))
    assert isinstance(ds.train, splits.TensorSplit) and ds.train.x.dtype == torch.uint8
    assert "fits a quarter of the memory" in ds.how


def test_cache_auto_streams_a_set_too_large_for_memory(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(data_module.limits, "machine_memory", lambda device=None: 4 * 36 * 3 * 16 * 16 - 4)
    ds = load_data(f"folder:{folder}", (3, 16, 16))
    assert isinstance(ds.train, splits.FileSplit)
    assert "more than a quarter of the memory" in ds.how


def test_limit_applies_before_anything_is_decoded(tmp_path, folder, monkeypatch):
    decoded = []
    real = images.decode

    def counting(path, *args, **kwargs):
        decoded.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(splits, "decode", counting)
    ds = load_data(f"folder:{folder}", (3, 16, 16), limit=5, val_fraction=0.2, cache="ram",
                   workers=0)
    assert (len(ds.train), len(ds.val)) == (4, 1)
    # 5 training images and the test split (a seeded 20% of the 36): nothing else.
    assert len(decoded) == 5 + len(ds.test) == 5 + round(36 * 0.2)


def test_in_memory_sets_are_uint8_at_their_native_size(tmp_path):
    ds = load_data("synthetic:40", (1, 8, 8))
    assert ds.train.x.dtype == torch.float32   # synthetic images are not 8-bit
    from test_data import write_mnist   # the IDX writer the data tests use
    write_mnist(tmp_path)
    mnist = load_data(f"mnist:{tmp_path}", (3, 224, 224), val_fraction=0.0)
    assert mnist.train.x.dtype == torch.uint8 and tuple(mnist.train.x.shape[1:]) == (1, 28, 28)
    assert tuple(mnist.train_x.shape[1:]) == (3, 224, 224)   # resized per batch
    assert float(mnist.train_x.max()) <= 1.0


def test_a_bad_image_in_a_worker_is_one_line(tmp_path, folder, capsys):
    (folder / "class1" / "broken.png").write_bytes(b"not a png at all")
    status, _, err = run_main(capsys, "train", NET, "--data", f"folder:{folder}", "--epochs", "1",
                              "--cache", "stream", "--workers", "2", "--out", str(tmp_path / "bad"))
    assert status == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "broken.png" in err


def test_flops_per_epoch_are_six_times_the_macs_per_image(tmp_path, folder, capsys):
    metrics, _ = train(tmp_path, capsys, "speed", "--cache", "ram")
    macs = 16 * 16 * 8 * 3 * 3 * 3 + 8 * 8 * 8 * 3   # CONV3-8 on 3×16×16, then FC-3 on 8×8×8
    for m in metrics:
        images_per_s = m["images_per_s"]
        assert m["train_tflops"] == pytest.approx(6 * macs * images_per_s / 1e12, rel=1e-2)
        assert m["mfu"] is None                      # a CPU has no bf16 peak in the table
        assert 0.0 <= m["data_wait"] <= 1.0
    summary = json.loads((tmp_path / "speed" / "summary.json").read_text())
    assert summary["train_tflops"] > 0 and summary["mfu"] is None


def test_peak_table_and_mfu():
    # Dense bf16 peaks from NVIDIA's data sheets (H100 SXM: 989.4 TFLOP/s; A100: 312).
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some Future GPU") is None
    assert mfu(train_tflops(10 ** 9, 1000, 1.0), 989.0) == pytest.approx(6e12 / 989e12)
    assert mfu(None, 989.0) is None and mfu(5.0, None) is None


@pytest.mark.parametrize("cache", ["stream", "ram"])
def test_skip_bad_images_counts_and_goes_on(tmp_path, folder, capsys, cache):
    (folder / "class1" / "broken.png").write_bytes(b"not a png at all")
    (folder / "class2" / "empty.jpg").write_bytes(b"")
    status, out, err = run_main(capsys, "train", NET, "--data", f"folder:{folder}", "--epochs", "1",
                                "--cache", cache, "--workers", "2", "--skip-bad-images",
                                "--out", str(tmp_path / "skip"))
    assert status == 0, err
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["skipped_images"] == 2
    assert "skipped 2 images that could not be decoded" in out and "broken.png" in out
    if cache == "ram":   # held in memory, they are replaced once, at decoding, and said so
        assert "2 could not be decoded and were replaced" in out


def test_a_batch_keeps_its_size_when_an_image_is_bad(tmp_path, folder):
    (folder / "class0" / "img000.jpg").write_bytes(b"garbage")   # replace a good one
    ds = load_data(f"folder:{folder}", (3, 16, 16), cache="stream", workers=0, val_fraction=0.0,
                   skip_bad=True)
    batches = [torch.arange(8), torch.arange(8, 16)]
    sizes = [len(y) for _, y in ds.train.batches(batches)]
    assert sizes == [8, 8] and len(ds.train.skipped) == 1


def test_cache_ram_refuses_what_cannot_fit(tmp_path, folder, monkeypatch):
    from cnndsl.errors import CnnDslError
    monkeypatch.setattr(data_module.limits, "machine_memory", lambda device=None: 10_000)
    with pytest.raises(CnnDslError, match="--cache ram: decoded, the images would take"):
        load_data(f"folder:{folder}", (3, 16, 16), cache="ram")


def test_ddp_streams_each_process_its_share(tmp_path, folder):
    # torchrun, gloo, 2 processes with a worker each: the streamed run equals the run held
    # in memory (each process decodes only its half of every batch).
    import os
    import subprocess
    import sys

    from helpers import ROOT

    def ddp(out, *flags):
        run = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             "-m", "cnndsl", "train", NET, "--data", f"folder:{folder}", "--epochs", "2",
             "--batch-size", "8", "--out", str(tmp_path / out), *flags],
            capture_output=True, text=True, cwd=ROOT, timeout=240,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        assert run.returncode == 0, run.stderr[-2000:]
        assert "cpu ×2 (DDP)" in run.stdout
        lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items()
                 if k in ("train_loss", "train_acc", "val_loss", "val_acc")} for line in lines]

    assert ddp("stream", "--cache", "stream", "--workers", "1") == ddp("ram", "--cache", "ram")


def test_webdataset_shards_train_as_the_same_images_in_a_folder(tmp_path, folder, capsys):
    # The folder's images, in its order (classes sorted, files sorted), as two WebDataset
    # shards: `key.jpg|png` + `key.cls`. Read by random access, they give the same run.
    import tarfile

    shards = tmp_path / "shards"
    shards.mkdir()
    samples = [(c, path) for c, d in enumerate(sorted(folder.iterdir())) for path in sorted(d.iterdir())]
    for k, part in enumerate((samples[:20], samples[20:])):
        with tarfile.open(shards / f"train-{k:03d}.tar", "w") as tar:
            for c, path in part:
                key = f"{c}_{path.stem}"
                tar.add(path, arcname=key + path.suffix)
                label = tmp_path / "label"
                label.write_text(str(c))
                tar.add(label, arcname=key + ".cls")
    (shards / "classes.txt").write_text("class0\nclass1\nclass2\n")
    from_folder, _ = train(tmp_path, capsys, "folder", "--cache", "stream", "--workers", "2")
    status, out, err = run_main(capsys, "train", NET, "--data", f"wds:{shards}", "--epochs", "2",
                                "--batch-size", "8", "--seed", "3", "--out", str(tmp_path / "wds"),
                                "--cache", "stream", "--workers", "2")
    assert status == 0, err
    assert "36 images in 2 shards" in out
    from_shards = [json.loads(line) for line in (tmp_path / "wds" / "metrics.jsonl").read_text().splitlines()]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[m[k] for k in keys] for m in from_shards] == [[m[k] for k in keys] for m in from_folder]


def test_cache_auto_counts_every_process_on_the_machine(tmp_path, folder, monkeypatch):
    # 36 images of 3×16×16 are 27,648 bytes: a quarter of 4× that fits one process, not two.
    monkeypatch.setattr(data_module.limits, "machine_memory", lambda device=None: 4 * 27_648)
    assert isinstance(load_data(f"folder:{folder}", (3, 16, 16)).train, splits.TensorSplit)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert isinstance(load_data(f"folder:{folder}", (3, 16, 16)).train, splits.FileSplit)
