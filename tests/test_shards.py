"""shards.py: WebDataset tar shards (`--data wds:SPEC`), written with tarfile in tmp_path."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cnndsl.errors import CnnDslError
from cnndsl.training import images, shards
from cnndsl.training.data import Options
from cnndsl.training.images import Recipe
from cnndsl.training.shards import ShardSplit, expand_braces, index_shards, shard_splits
from cnndsl.training.splits import FileSplit

DAY = 86_400
CROP = Recipe.from_augment({"resized_crop": True, "hflip": True})


def image_bytes(seed: int, fmt: str = "JPEG", size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples, *, old: bool = True) -> None:
    """samples: (key, {ext: bytes}) in member order. `old`: mtime a day back (a shard
    written in the last 2 s is deliberately not cached)."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                add(tar, f"{key}.{ext}", data)
    if old:
        past = time.time() - DAY
        os.utime(path, (past, past))


def sample(key: str, label: int, seed: int, ext: str = "jpg"):
    return key, {ext: image_bytes(seed, "PNG" if ext == "png" else "JPEG"), "cls": b"%d" % label}


def two_class_set(root, roles=("train",), per_shard=5, shards_per_role=2):
    """Shards role-00000.tar … of a 2-class set; labels alternate, images differ."""
    root.mkdir(parents=True, exist_ok=True)
    seed = 0
    for role in roles:
        for k in range(shards_per_role):
            items = []
            for j in range(per_shard):
                seed += 1
                ext = "png" if j % 2 else "jpg"
                items.append(sample(f"{role}{k}_{j:03d}", seed % 2, seed, ext))
            write_shard(root / f"{role}-{k:05d}.tar", items)
    return root


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(CnnDslError) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    return e.value.message


# --- brace patterns -------------------------------------------------------------------------


def test_brace_expansion():
    assert expand_braces("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("s-{08..10}") == ["s-08", "s-09", "s-10"]
    assert expand_braces("{2..0}") == ["2", "1", "0"]
    assert len(expand_braces("/d/train-{000000..001023}.tar")) == 1024
    assert expand_braces("/d/train-{000000..001023}.tar")[-1] == "/d/train-001023.tar"
    for bad, why in (("a{1..3", "without its '}'"), ("a}b", "without its '{'"),
                     ("{x}", "neither a range"), ("{0..99999999}", "more than")):
        assert why in error_of(expand_braces, bad)


# --- the index ---------------------------------------------------------------------------


def test_index_samples_labels_and_order(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("zeta", 2, 1), sample("alpha", 0, 2, "png")])
    with tarfile.open(tmp_path / "train-1.tar", "w") as tar:   # extras that are not samples
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        add(tar, "sub/k1.json", b"{}")
        add(tar, "sub/k1.JPEG", image_bytes(3))
        add(tar, "sub/k1.label", b" 1\n")
        add(tar, "README", b"not a sample")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n\n")
    index = index_shards(str(tmp_path))
    rows, labels = index.splits["train"]
    assert list(rows) == [0, 1, 2] and labels.tolist() == [2, 0, 1]
    assert index.class_names == ["cat", "dog", "bird"] and index.layout == "folder"
    assert index.table.shard.tolist() == [0, 0, 1]
    # offsets point at the image bytes themselves
    with open(tmp_path / "train-1.tar", "rb") as f:
        f.seek(int(index.table.offset[2]))
        assert f.read(int(index.table.size[2])) == image_bytes(3)


def test_class_names_default_to_indices(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 1), sample("b", 3, 2)])
    assert index_shards(str(tmp_path)).class_names == ["0", "1", "2", "3"]


def test_roles_of_a_folder(tmp_path):
    full = two_class_set(tmp_path / "full", ("train", "test", "val"))
    opts = Options(val_fraction=0.1, cache="stream")
    data = shard_splits(str(full), "wds:full", (3, 8, 8), opts)
    assert (len(data.train), len(data.val), len(data.test)) == (10, 10, 10)
    assert data.class_names == ["0", "1"] and "30 images in 6 shards" in data.how
    # val shards without test shards test; val is carved from train
    only_val = two_class_set(tmp_path / "tv", ("train", "val"))
    data = shard_splits(str(only_val), "wds:tv", (3, 8, 8), opts)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 1, 10)
    # train only: a seeded 20% tests, then val_fraction of the rest validates
    only_train = two_class_set(tmp_path / "t", ("train",))
    data = shard_splits(str(only_train), "wds:t", (3, 8, 8), opts)
    assert (len(data.train), len(data.val), len(data.test)) == (7, 1, 2)


def test_a_brace_pattern_or_one_file_trains(tmp_path):
    two_class_set(tmp_path, ("train",), shards_per_role=3)
    index = index_shards(str(tmp_path / "train-{00000..00002}.tar"))
    assert index.layout == "pattern" and set(index.splits) == {"train"}
    assert len(index.splits["train"][0]) == 15 and len(index.table.paths) == 3
    assert len(index_shards(str(tmp_path / "train-00001.tar")).splits["train"][0]) == 5
    assert "does not exist" in error_of(index_shards, str(tmp_path / "train-{00000..00009}.tar"))
    assert "named twice" in error_of(index_shards, str(tmp_path / "train-{00000,00000}.tar"))


# --- decoding ------------------------------------------------------------------------------


def test_decoded_like_the_same_image_as_a_file(tmp_path):
    big = image_bytes(7, "JPEG", size=(200, 150))   # large enough for a JPEG draft
    png = image_bytes(8, "PNG", size=(31, 45))
    write_shard(tmp_path / "train-0.tar", [("big", {"jpg": big, "cls": b"0"}),
                                           ("small", {"png": png, "cls": b"1"})])
    (tmp_path / "big.jpg").write_bytes(big)
    (tmp_path / "small.png").write_bytes(png)
    index = index_shards(str(tmp_path / "train-0.tar"))
    y = torch.tensor([0, 1])
    for recipe, train in ((Recipe(), False), (CROP, True)):
        split = ShardSplit(index.table, [0, 1], y, (3, 16, 16), recipe, seed=5, workers=0)
        files = FileSplit([str(tmp_path / "big.jpg"), str(tmp_path / "small.png")], y,
                          (3, 16, 16), recipe, seed=5, workers=0)
        (xs, ys), = split.batches([torch.tensor([0, 1])], epoch=3, train=train)
        (xf, _), = files.batches([torch.tensor([0, 1])], epoch=3, train=train)
        assert xs.dtype == torch.uint8 and torch.equal(xs, xf) and ys.tolist() == [0, 1]
    direct = images.decode(tmp_path / "big.jpg", 1, (16, 16), train=False, recipe=Recipe(), seed=0)
    assert torch.equal(shards.decode_bytes(big, 1, (16, 16), train=False, recipe=Recipe(), seed=0),
                       direct)


def test_webp_where_pillow_reads_it(tmp_path):
    from PIL import features

    if not features.check("webp"):
        pytest.skip("this Pillow has no WebP")
    webp = image_bytes(4, "WEBP")
    write_shard(tmp_path / "train-0.tar", [("w", {"webp": webp, "cls": b"0"})])
    (tmp_path / "w.webp").write_bytes(webp)
    index = index_shards(str(tmp_path))
    split = ShardSplit(index.table, [0], torch.tensor([0]), (3, 8, 8), Recipe(), 0, 0)
    (x, _), = split.batches([torch.tensor([0])])
    assert torch.equal(x[0], images.decode(tmp_path / "w.webp", 3, (8, 8), train=False,
                                           recipe=Recipe(), seed=0))


def test_workers_give_identical_batches(tmp_path):
    two_class_set(tmp_path, ("train",), per_shard=6)
    index = index_shards(str(tmp_path))
    rows, labels = index.splits["train"]
    order = [torch.tensor([5, 0, 11, 3]), torch.tensor([7, 1, 2]), torch.tensor([10, 4])]

    def run(workers):
        split = ShardSplit(index.table, list(rows), torch.as_tensor(labels), (3, 12, 12), CROP,
                           seed=1, workers=workers)
        return list(split.batches(order, epoch=2, train=True))

    alone, two = run(0), run(2)
    assert [x.shape[0] for x, _ in alone] == [4, 3, 2]
    for (xa, ya), (xb, yb) in zip(alone, two):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = ShardSplit(index.table, list(rows), torch.as_tensor(labels), (3, 12, 12), CROP,
                             seed=1, workers=0).batches(order[:1], epoch=3, train=True)
    assert not torch.equal(next(iter(other_epoch))[0], alone[0][0])   # a new crop each epoch


def test_a_bad_image_is_one_line_from_a_worker(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("good", 0, 1),
                                           ("broken", {"jpg": b"not a jpeg", "cls": b"1"})])
    index = index_shards(str(tmp_path))
    for workers in (0, 2):
        split = ShardSplit(index.table, [0, 1], torch.tensor([0, 1]), (3, 8, 8), Recipe(), 0,
                           workers)
        message = error_of(list, split.batches([torch.tensor([0]), torch.tensor([1])]))
        assert "train-0.tar:broken.jpg" in message and "cannot read image" in message


def test_skip_bad_replaces_within_the_batch(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("good", 0, 1),
                                           ("empty", {"jpg": b"", "cls": b"1"})])
    index = index_shards(str(tmp_path))
    split = ShardSplit(index.table, [0, 1], torch.tensor([0, 1]), (3, 8, 8), Recipe(), 0, 0,
                       skip_bad=True)
    (x, y), = split.batches([torch.tensor([0, 1])])
    assert x.shape[0] == 2 and len(split.skipped) == 1 and "empty" in next(iter(split.skipped))


def test_end_to_end_three_splits(tmp_path):
    root = two_class_set(tmp_path / "set", ("train", "test"))
    (root / "classes.txt").write_text("cat\ndog\n")
    for cache in ("ram", "stream"):
        data = shard_splits(str(root), f"wds:{root}", (1, 8, 8),
                            Options(val_fraction=0.2, cache=cache, workers=0))
        assert data.class_names == ["cat", "dog"] and data.num_classes == 2
        assert data.train_x.shape == (8, 1, 8, 8) and data.test_x.shape == (10, 1, 8, 8)
        assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1.0
        assert sorted(set(data.test_y.tolist())) == [0, 1]


# --- hostile shards ------------------------------------------------------------------------


def test_urls_are_read_through_a_command(tmp_path):
    for spec in ("https://host/train-0.tar", "s3://bucket/train-{0..3}.tar"):
        assert "write wds:pipe:curl -s URL" in error_of(index_shards, spec)
    # pipe: commands are streamed (test_pipe_shards.py), never indexed for random access
    assert "is streamed" in error_of(index_shards, "pipe:curl -s http://x/train-{0..9}.tar")


def test_not_a_tar_empty_and_compressed(tmp_path):
    (tmp_path / "train-0.tar").write_bytes(b"hello, this is plain text, not a tar" * 30)
    assert "is not a tar shard" in error_of(index_shards, str(tmp_path))
    (tmp_path / "train-0.tar").write_bytes(b"")
    assert "is not a tar shard: empty file" in error_of(index_shards, str(tmp_path))
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 1)])
    packed = gzip.compress((tmp_path / "train-0.tar").read_bytes())
    (tmp_path / "train-0.tar").write_bytes(packed)   # gzip inside a .tar name
    assert "gzip-compressed tar" in error_of(index_shards, str(tmp_path))
    (tmp_path / "train-0.tar").unlink()
    (tmp_path / "train-0.tar.gz").write_bytes(packed)
    assert "decompress it" in error_of(index_shards, str(tmp_path))
    assert "is a compressed tar" in error_of(index_shards, str(tmp_path / "train-{0,1}.tar.gz"))


def test_missing_label_or_image(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 1), ("b", {"jpg": image_bytes(2)})])
    message = error_of(index_shards, str(tmp_path))
    assert "train-0.tar': sample 'b' has an image but no label" in message
    write_shard(tmp_path / "train-0.tar", [("c", {"cls": b"1"}), sample("d", 0, 1)])
    assert "sample 'c' has a label but no image" in error_of(index_shards, str(tmp_path))
    write_shard(tmp_path / "train-0.tar", [("e", {"jpg": image_bytes(1), "cls": b"-1"})])
    assert "has label '-1': expected a class index" in error_of(index_shards, str(tmp_path))
    write_shard(tmp_path / "train-0.tar", [("f", {"jpg": image_bytes(1), "cls": b"7" * 40})])
    assert "label member of 40 bytes" in error_of(index_shards, str(tmp_path))
    write_shard(tmp_path / "train-0.tar", [("g", {"jpg": image_bytes(1), "png": image_bytes(2),
                                                  "cls": b"0"})])
    assert "'g' has two images" in error_of(index_shards, str(tmp_path))


def test_truncated_shards(tmp_path):
    write_shard(tmp_path / "whole.tar", [sample("a", 0, 1), sample("b", 1, 2)])
    data = (tmp_path / "whole.tar").read_bytes()
    index = index_shards(str(tmp_path / "whole.tar"))
    end_of_data = int(index.table.offset[1] + index.table.size[1])
    cuts = {"in_data": end_of_data - 10,                       # inside the last image
            "at_boundary": -(-end_of_data // 512) * 512,         # no end-of-archive block
            "in_header": int(index.table.offset[1]) - 300}       # inside a header
    for name, cut in cuts.items():
        (tmp_path / f"{name}.tar").write_bytes(data[:cut])
        message = error_of(index_shards, str(tmp_path / f"{name}.tar"))
        assert "is truncated or damaged" in message and f"{name}.tar" in message, name


def test_limits(tmp_path, monkeypatch):
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 1), sample("b", 1, 2)])
    monkeypatch.setattr(shards, "MAX_IMAGE_BYTES", 100)
    assert "image, more than the 100 B cnndsl reads" in error_of(index_shards, str(tmp_path))
    monkeypatch.undo()
    monkeypatch.setattr(shards, "MAX_SAMPLES", 1)
    assert "more than 1 samples" in error_of(index_shards, str(tmp_path))
    monkeypatch.undo()
    write_shard(tmp_path / "train-0.tar", [sample("k" * 3000, 0, 1)])   # a 3 KiB pax header
    monkeypatch.setattr(shards, "MAX_HEADER_BYTES", 1024)
    message = error_of(index_shards, str(tmp_path))
    assert "has a tar header of 2.9 KiB, more than 1.0 KiB" in message   # before it is read
    monkeypatch.undo()
    assert len(index_shards(str(tmp_path)).splits["train"][0]) == 1


def test_old_gnu_sparse_members_are_refused(tmp_path):
    # A GNU sparse header may chain extension blocks without end, each adding to a list
    # tarfile keeps: refused from its type, before any is read.
    sparse = tarfile.TarInfo("a.jpg")
    sparse.type = tarfile.GNUTYPE_SPARSE
    (tmp_path / "train-0.tar").write_bytes(sparse.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
    assert "old-style GNU sparse member" in error_of(index_shards, str(tmp_path))


def test_fifos_are_refused(tmp_path):
    os.mkfifo(tmp_path / "train-0.tar")
    assert "is not a regular file (a FIFO)" in error_of(index_shards, str(tmp_path))
    assert "(a FIFO)" in error_of(index_shards, str(tmp_path / "train-{0,0}.tar"))


def test_classes_file_must_cover_the_labels(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 1), sample("b", 2, 2)])
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert "label 2, but" in error_of(index_shards, str(tmp_path))
    (tmp_path / "classes.txt").write_text("cat\n\ndog\nbird\n")
    assert "none empty" in error_of(index_shards, str(tmp_path))


# --- the cache -------------------------------------------------------------------------------


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = two_class_set(tmp_path / "set", ("train", "test"))
    runs = tmp_path / "run"
    first = index_shards(str(root), runs)
    cache_files = list(runs.glob("shard-index-*.json"))
    assert len(cache_files) == 1
    indexed = []
    real = shards.index_shard
    monkeypatch.setattr(shards, "index_shard", lambda p, *a: indexed.append(p) or real(p, *a))
    again = index_shards(str(root), runs)
    assert indexed == [] and again.splits["test"][1].tolist() == first.splits["test"][1].tolist()
    assert np.array_equal(again.table.offset, first.table.offset)
    # a rewritten shard (new size and mtime) is indexed again, the others are not
    write_shard(root / "test-00001.tar", [sample("new", 1, 99)])
    third = index_shards(str(root), runs)
    assert indexed == [str(root / "test-00001.tar")] and len(third.splits["test"][0]) == 6
    # a damaged cache is ignored
    indexed.clear()
    cache_files[0].write_text('{"version": 1, "shards": {"x": [1, 2]}')
    assert len(index_shards(str(root), runs).splits["train"][0]) == 10 and len(indexed) == 4
    payload = json.loads(cache_files[0].read_text())
    entry = payload["shards"][str((root / "train-00000.tar").resolve())]
    entry["offsets"][0] = 3   # not a block boundary: not what a fresh index has
    cache_files[0].write_text(json.dumps(payload))
    indexed.clear()
    index_shards(str(root), runs)
    assert indexed == [str(root / "train-00000.tar")]


def test_a_shard_just_written_is_not_cached(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 1)], old=False)
    index_shards(str(tmp_path), tmp_path / "run")
    assert list((tmp_path / "run").glob("shard-index-*.json")) == []


def test_a_shard_changed_after_indexing_is_refused(tmp_path):
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 1)])
    index = index_shards(str(tmp_path))
    write_shard(tmp_path / "train-0.tar", [sample("a", 0, 2)], old=False)
    split = ShardSplit(index.table, [0], torch.tensor([0]), (3, 8, 8), Recipe(), 0, 0)
    assert "changed since it was indexed" in error_of(list, split.batches([torch.tensor([0])]))
