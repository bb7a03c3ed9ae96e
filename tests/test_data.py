"""Data loading: every source form, built from tiny files written in tmp_path."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cnndsl.training.data import DataSplits, channel_stats, load_data
from cnndsl.errors import CnnDslError

# --- writers for tiny data sets --------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file as MNIST ships it: 0, 0, dtype 0x08, ndim, big-endian dims, data."""
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(d, *, n_train=12, n_test=5, gz=False, dotted=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        name = name.replace("-idx", ".idx") if dotted else name
        data = idx_bytes(arr)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return arrays


def cifar_record(label: int, r: int, g: int, b: int) -> bytes:
    return bytes([label]) + bytes([r]) * 1024 + bytes([g]) * 1024 + bytes([b]) * 1024


def write_cifar(d, meta: list[str] | None = None):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}.bin").write_bytes(
            cifar_record(i, 10 * i, 100 + i, 200 + i) + cifar_record(0, 0, 0, 0))
    (d / "test_batch.bin").write_bytes(cifar_record(9, 255, 0, 51))
    if meta is not None:
        (d / "batches.meta.txt").write_text("\n".join(meta) + "\n\n")


def write_image(path, value, size=(10, 12), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path, format=fmt)


def error_of(source, shape=(1, 28, 28), **kw) -> str:
    with pytest.raises(CnnDslError) as e:
        load_data(source, shape, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# --- digits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_digits():
    from sklearn.datasets import load_digits
    return load_digits()


def test_digits_split_matches_sklearn_example(raw_digits):
    ds = load_data("digits", (1, 8, 8), val_fraction=0.0)
    assert isinstance(ds, DataSplits) and ds.name == "digits"
    assert len(ds.train_x) == 898 and len(ds.test_x) == 899
    assert ds.val_x.shape == (0, 1, 8, 8) and ds.val_y.shape == (0,)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_y[0].item() == raw_digits.target[0]
    np.testing.assert_allclose(ds.train_x[:, 0].numpy(), raw_digits.images[:898] / 16, rtol=1e-6)
    np.testing.assert_allclose(ds.test_x[:, 0].numpy(), raw_digits.images[898:] / 16, rtol=1e-6)
    assert ds.test_y.tolist() == raw_digits.target[898:].tolist()
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]


def test_digits_validation_is_carved_from_training_half(raw_digits):
    a = load_data("digits", (1, 8, 8), val_fraction=0.1, seed=3)
    b = load_data("digits", (1, 8, 8), val_fraction=0.1, seed=3)
    c = load_data("digits", (1, 8, 8), val_fraction=0.1, seed=4)
    assert len(a.val_x) == 90 and len(a.train_x) == 808 and len(a.test_x) == 899
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    # train + val together are exactly the first half, nothing from the test half
    together = torch.cat([a.train_y, a.val_y]).sort().values
    assert together.tolist() == sorted(raw_digits.target[:898].tolist())


def test_digits_resized_and_channels_and_limit():
    ds = load_data("digits", (3, 16, 16), val_fraction=0.0, limit=20)
    assert ds.train_x.shape == (20, 3, 16, 16) and ds.test_x.shape == (899, 3, 16, 16)
    assert torch.equal(ds.train_x[:, 0], ds.train_x[:, 2])  # grey repeated into R, G, B
    assert ds.train_x.min() >= 0 and ds.train_x.max() <= 1


# --- MNIST IDX -------------------------------------------------------------------------


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_mnist_idx_round_trip(tmp_path, gz, dotted):
    arrays = write_mnist(tmp_path, gz=gz, dotted=dotted)
    ds = load_data(f"mnist:{tmp_path}", (1, 28, 28), val_fraction=0.0)
    assert ds.name == f"mnist:{tmp_path}"
    np.testing.assert_array_equal((ds.train_x[:, 0] * 255).round().numpy(),
                                  arrays["train-images-idx3-ubyte"])
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    np.testing.assert_array_equal((ds.test_x[:, 0] * 255).round().numpy(),
                                  arrays["t10k-images-idx3-ubyte"])
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.class_names == [str(i) for i in range(10)]


def test_mnist_resize_to_32_rgb(tmp_path):
    write_mnist(tmp_path)
    ds = load_data(f"mnist:{tmp_path}", (3, 32, 32), val_fraction=0.25)
    assert ds.train_x.shape == (9, 3, 32, 32) and ds.val_x.shape == (3, 3, 32, 32)
    assert ds.test_x.shape == (5, 3, 32, 32)


def test_mnist_truncated_file(tmp_path):
    write_mnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    msg = error_of(f"mnist:{tmp_path}")
    assert "train-images-idx3-ubyte" in msg and "truncated" in msg


def test_mnist_wrong_magic(tmp_path):
    write_mnist(tmp_path)
    f = tmp_path / "t10k-labels-idx1-ubyte"
    f.write_bytes(b"\x12\x34" + f.read_bytes()[2:])
    msg = error_of(f"mnist:{tmp_path}")
    assert "t10k-labels-idx1-ubyte" in msg and "magic" in msg


def test_mnist_wrong_dtype_and_dims(tmp_path):
    write_mnist(tmp_path)
    f = tmp_path / "train-labels-idx1-ubyte"
    data = f.read_bytes()
    f.write_bytes(data[:2] + b"\x0d" + data[3:])  # 0x0D = float
    assert "0x0d" in error_of(f"mnist:{tmp_path}")
    f.write_bytes(idx_bytes(np.zeros((12, 2), np.uint8)))
    assert "dim" in error_of(f"mnist:{tmp_path}")


def test_mnist_broken_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert "train-images-idx3-ubyte.gz" in error_of(f"mnist:{tmp_path}")


def test_mnist_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    assert "labels" in error_of(f"mnist:{tmp_path}")


def test_mnist_missing_dir_and_file(tmp_path):
    msg = error_of(f"mnist:{tmp_path / 'nope'}")
    assert "nope" in msg and "IDX" in msg
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    msg = error_of(f"mnist:{tmp_path}")
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path) in msg


# --- CIFAR-10 binary -------------------------------------------------------------------


def test_cifar_planes_decode_as_rgb(tmp_path):
    write_cifar(tmp_path)
    ds = load_data(f"cifar10:{tmp_path}", (3, 32, 32), val_fraction=0.0)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (1, 3, 32, 32)
    assert ds.train_y.tolist() == [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]
    first = (ds.train_x[0] * 255).round()
    assert first[0].unique().tolist() == [10.0]   # R plane
    assert first[1].unique().tolist() == [101.0]  # G plane
    assert first[2].unique().tolist() == [201.0]  # B plane
    assert ds.test_y.tolist() == [9]
    assert (ds.test_x[0] * 255).round().mean(dim=(1, 2)).tolist() == [255.0, 0.0, 51.0]
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10


def test_cifar_parent_folder_meta_and_grey(tmp_path):
    names = [f"c{i}" for i in range(10)]
    write_cifar(tmp_path / "cifar-10-batches-bin", meta=names)
    ds = load_data(f"cifar10:{tmp_path}", (1, 16, 16), val_fraction=0.0)
    assert ds.class_names == names
    assert ds.test_x.shape == (1, 1, 16, 16)
    expected = 0.299 * 255 + 0.587 * 0 + 0.114 * 51
    assert ds.test_x[0, 0].mean().item() * 255 == pytest.approx(expected, abs=0.01)


def test_cifar_bad_size(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(cifar_record(1, 1, 1, 1)[:-1])
    msg = error_of(f"cifar10:{tmp_path}", (3, 32, 32))
    assert "data_batch_3.bin" in msg and "3073" in msg


def test_cifar_pickled_only_is_refused(tmp_path):
    tmp_path.joinpath("data_batch_1").write_bytes(b"\x80\x04not really a pickle")
    msg = error_of(f"cifar10:{tmp_path}", (3, 32, 32))
    assert "binary version" in msg and "pickled" in msg


def test_cifar_missing_file_and_dir(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    assert "test_batch.bin" in error_of(f"cifar10:{tmp_path}", (3, 32, 32))
    assert "missing-cifar" in error_of(f"cifar10:{tmp_path / 'missing-cifar'}", (3, 32, 32))


# --- image folders ---------------------------------------------------------------------


def test_folder_flat_classes_png_and_jpeg(tmp_path):
    for i in range(5):
        write_image(tmp_path / "dog" / f"{i}.png", (200, 10, 10))
        write_image(tmp_path / "cat" / f"{i}.JPG", (10, 10, 200), fmt="JPEG")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = load_data(f"folder:{tmp_path}", (3, 8, 8), val_fraction=0.0, seed=1)
    assert ds.class_names == ["cat", "dog"]
    assert len(ds.train_x) == 8 and len(ds.test_x) == 2  # a seeded 20 % test split
    assert ds.train_x.shape[1:] == (3, 8, 8)
    x, y = torch.cat([ds.train_x, ds.test_x]), torch.cat([ds.train_y, ds.test_y])
    dogs = x[y == 1].mean(dim=(0, 2, 3)) * 255
    assert dogs.tolist() == pytest.approx([200, 10, 10], abs=1)
    cats = x[y == 0].mean(dim=(0, 2, 3)) * 255
    assert cats.tolist() == pytest.approx([10, 10, 200], abs=6)  # JPEG is lossy
    again = load_data(f"folder:{tmp_path}", (3, 8, 8), val_fraction=0.0, seed=1)
    assert torch.equal(again.test_y, ds.test_y)


def test_folder_train_test_split_and_grey(tmp_path):
    for split, n in (("train", 3), ("test", 2), ("val", 1)):
        for cls, v in (("a", 30), ("b", 220)):
            for i in range(n):
                write_image(tmp_path / split / cls / f"{i}.png", v, size=(20, 20), mode="L")
    ds = load_data(f"folder:{tmp_path}", (1, 10, 10))
    assert ds.class_names == ["a", "b"]
    assert (len(ds.train_x), len(ds.val_x), len(ds.test_x)) == (6, 2, 4)
    assert ds.test_y.tolist() == [0, 0, 1, 1]
    assert (ds.train_x[ds.train_y == 1] * 255).round().unique().tolist() == [220.0]


def test_folder_errors(tmp_path):
    assert "no class folders" in error_of(f"folder:{tmp_path}")
    (tmp_path / "a").mkdir()
    write_image(tmp_path / "b" / "x.png", 5)
    msg = error_of(f"folder:{tmp_path}")
    assert "no PNG/JPEG images" in msg and str(tmp_path / "a") in msg
    write_image(tmp_path / "a" / "ok.png", 5)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    msg = error_of(f"folder:{tmp_path}")
    assert "broken.png" in msg and "cannot read image" in msg
    assert "nothing-here" in error_of(f"folder:{tmp_path / 'nothing-here'}")


# --- synthetic -------------------------------------------------------------------------


def test_synthetic_is_seeded_and_learnable():
    a = load_data("synthetic:200", (3, 12, 12), val_fraction=0.1, seed=5)
    b = load_data("synthetic:200", (3, 12, 12), val_fraction=0.1, seed=5)
    assert a.name == "synthetic:200" and a.num_classes == 10
    assert len(a.train_x) + len(a.val_x) + len(a.test_x) == 200
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.min() >= 0 and a.train_x.max() <= 1
    # Nearest class mean classifies the test set far above chance (10 %).
    means = torch.stack([a.train_x[a.train_y == k].mean(0) for k in range(10)])
    dist = ((a.test_x[:, None] - means[None]) ** 2).sum(dim=(2, 3, 4))
    assert (dist.argmin(1) == a.test_y).float().mean() > 0.5
    assert len(load_data("synthetic", (1, 8, 8), val_fraction=0.0).train_x) == 512 - 102


# --- source forms and options ----------------------------------------------------------


def test_unknown_source_lists_forms():
    msg = error_of("mnsit:/tmp")
    assert "did you mean 'mnist'" in msg and "cifar10:DIR" in msg and "synthetic" in msg
    assert "valid forms" in error_of("imagenet")
    assert "mnist:DIR" in error_of("mnist")
    assert "no argument" in error_of("digits:foo")
    assert "synthetic:N" in error_of("synthetic:abc")


def test_bare_directory_hints_folder(tmp_path):
    assert f"folder:{tmp_path}" in error_of(str(tmp_path))


def test_bad_options():
    assert "val_fraction" in error_of("synthetic:20", val_fraction=1.0)
    assert "limit" in error_of("synthetic:20", limit=0)
    assert "channel" in error_of("synthetic:20", shape=(2, 8, 8))


def test_channel_stats_by_hand():
    x = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.5]]],
                      [[[1.0, 1.0]], [[0.5, 0.5]]]])  # N=2, C=2, H=1, W=2
    mean, std = channel_stats(x)
    vals = [0.0, 1.0, 1.0, 1.0]
    m = sum(vals) / 4
    s = (sum((v - m) ** 2 for v in vals) / 4) ** 0.5
    assert mean.tolist() == pytest.approx([m, 0.5])
    assert std[0].item() == pytest.approx(s)
    assert std[1].item() > 0  # constant channel: clamped, never a division by zero
    assert mean.dtype == torch.float32 and mean.shape == (2,)
    with pytest.raises(CnnDslError):
        channel_stats(torch.zeros(0, 1, 2, 2))
