"""Data sets for `cnndsl train`: read from local files into memory as tensors.

Nothing is downloaded. Every source becomes float32 images N×C×H×W in [0, 1], already
resized to the network's input shape, plus int64 labels, split into train / val / test.

Source forms (the `--data` argument):

* `digits`         scikit-learn's bundled 8×8 digits, split as in its classic example.
* `mnist:DIR`      the four IDX files of MNIST / Fashion-MNIST / KMNIST (plain or .gz).
* `cifar10:DIR`    the CIFAR-10 *binary* version (`data_batch_1.bin` …, `test_batch.bin`).
* `folder:DIR`     one sub-folder of PNG/JPEG images per class (optionally train/ test/).
* `synthetic[:N]`  N seeded random images with learnable class structure (smoke tests).

A user's mistake (missing folder, truncated file, unknown form) is a one-line
`CnnDslError`, never a traceback.

Every file is treated as hostile (see `limits`): an IDX header's dims are checked
before its data is read, and a .gz is inflated only as far as the header says, so a
gzip bomb is refused; files are read only if they are regular files (symlinks
followed), so a FIFO, socket or device named `x.png` in a class folder is *refused*
with a one-line error naming it, never read (reading a FIFO would block forever);
an image larger than Pillow's pixel limit is refused before it is decoded; 16-bit
greys (PNG mode I;16) are scaled by their bit depth, not saturated to 8 bits.
"""
from __future__ import annotations

import gzip
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CnnDslError, did_you_mean
from . import limits

SOURCE_FORMS = ("digits", "mnist:DIR", "cifar10:DIR", "folder:DIR", "synthetic[:N]")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# ITU-R 601 weights, the same ones Pillow uses for RGB -> L, so a folder read as "L"
# and an RGB data set reduced to one channel agree.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class DataSplits:
    train_x: torch.Tensor  # float32 N×C×H×W in [0, 1]
    train_y: torch.Tensor  # int64 N
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class _Raw:
    """What a loader reads, before resizing and carving the validation split."""

    train_x: torch.Tensor  # float32 N×C×H×W in [0, 1], native size
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # a split the data set ships


def load_data(source: str, input_shape: tuple[int, int, int], *, val_fraction: float = 0.1,
              seed: int = 0, limit: int | None = None) -> DataSplits:
    """Load `source` (see the module doc) resized to `input_shape` = (C, H, W).

    The validation split is a seeded random `val_fraction` of the training images
    (after `limit`), unless the data set ships its own (a folder's val/ next to test/).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise CnnDslError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 1:
        raise CnnDslError(f"limit must be a positive number of images, got {limit}")
    c, h, w = (int(v) for v in input_shape)
    if c not in (1, 3):
        raise CnnDslError(f"data sets provide 1- or 3-channel images; the network wants {c}")
    kind, arg, name = _parse_source(source)
    raw = _LOADERS[kind](arg, (c, h, w), seed)
    if kind == "synthetic":
        name = f"synthetic:{arg}"

    train_x, train_y = raw.train_x, raw.train_y
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    if raw.val is not None:
        val_x, val_y = raw.val
    else:
        train_x, train_y, val_x, val_y = _carve(train_x, train_y, val_fraction, seed)
    fit = lambda x: _fit(x, (c, h, w), name)  # noqa: E731
    return DataSplits(fit(train_x), train_y, fit(val_x), val_y, fit(raw.test_x), raw.test_y,
                      list(raw.class_names), name)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std over N, H, W, for centring the inputs.

    Accumulated in float64 so 60 000 images do not lose precision. The std is
    clamped to at least 1e-3 so a constant channel (say, a blank border plane)
    does not turn normalisation into a division by zero.
    """
    if x.dim() != 4 or x.shape[0] == 0:
        raise CnnDslError("channel statistics need a non-empty N×C×H×W training set")
    x64 = x.detach().to(torch.float64)
    mean = x64.mean(dim=(0, 2, 3))
    std = x64.std(dim=(0, 2, 3), correction=0).clamp_min(1e-3)
    return mean.float(), std.float()


# --- choosing a loader ---------------------------------------------------------------


def _parse_source(source: str) -> tuple[str, str, str]:
    """Split 'kind:arg', checking that the kind exists and takes the argument it needs."""
    kind, sep, arg = source.strip().partition(":")
    kind = kind.lower()
    forms = ", ".join(SOURCE_FORMS)
    if kind not in _LOADERS:
        hint = did_you_mean(kind, list(_LOADERS))
        if not hint and Path(source).is_dir():
            hint = f" — for a folder of class sub-folders write 'folder:{source}'"
        raise CnnDslError(f"unknown data source '{source}'{hint}; valid forms: {forms}")
    if kind in ("mnist", "cifar10", "folder") and not arg:
        raise CnnDslError(f"data source '{kind}' needs a directory: write '{kind}:DIR'")
    if kind == "digits" and sep:
        raise CnnDslError("data source 'digits' takes no argument (it is bundled with scikit-learn)")
    return kind, arg, source.strip()


def _need_dir(path: str, what: str) -> Path:
    d = Path(path).expanduser()
    if not d.is_dir():
        raise CnnDslError(f"data directory '{path}' does not exist or is not a directory "
                          f"(expected {what} there)")
    return d


# --- digits ----------------------------------------------------------------------------


def _load_digits(arg: str, shape, seed: int) -> _Raw:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Exactly scikit-learn's "Recognizing hand-written digits" split: first half
    # trains, second half tests, no shuffling, so results are comparable with it.
    x_tr, x_te, y_tr, y_te = train_test_split(digits.images, digits.target,
                                              test_size=0.5, shuffle=False)

    def images(a: np.ndarray) -> torch.Tensor:  # pixel values are 0..16
        return torch.from_numpy(a.astype(np.float32) / 16.0).unsqueeze(1)

    return _Raw(images(x_tr), _labels(y_tr), images(x_te), _labels(y_te),
                [str(i) for i in range(10)])


# --- MNIST-style IDX files ------------------------------------------------------------


def _load_mnist(arg: str, shape, seed: int) -> _Raw:
    d = _need_dir(arg, "the four MNIST IDX files, e.g. train-images-idx3-ubyte[.gz]")
    tr_x = _read_idx(_find_idx(d, "train-images-idx3-ubyte"), 3)
    tr_y = _read_idx(_find_idx(d, "train-labels-idx1-ubyte"), 1)
    te_x = _read_idx(_find_idx(d, "t10k-images-idx3-ubyte"), 3)
    te_y = _read_idx(_find_idx(d, "t10k-labels-idx1-ubyte"), 1)
    for (x, xp), (y, yp) in (((tr_x, "train images"), (tr_y, "train labels")),
                             ((te_x, "t10k images"), (te_y, "t10k labels"))):
        if len(x) != len(y):
            raise CnnDslError(f"{arg}: {len(x)} {xp} but {len(y)} {yp}")
    n_classes = max(10, int(max(tr_y.max(initial=0), te_y.max(initial=0))) + 1)

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).unsqueeze(1).float().div_(255.0)

    return _Raw(images(tr_x), _labels(tr_y), images(te_x), _labels(te_y),
                [str(i) for i in range(n_classes)])


def _find_idx(d: Path, base: str) -> Path:
    # Mirrors spell it 'train-images-idx3-ubyte' or 'train-images.idx3-ubyte', gzipped or not.
    dotted = base.replace("-idx", ".idx")
    for stem in (base, dotted):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    raise CnnDslError(f"missing file '{base}' (or '{base}.gz') in '{d}'")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file: 2 zero bytes, dtype code, ndim, big-endian uint32 dims, data.

    Streamed: the header is read and its dims checked against `limits` before the data,
    and then exactly as many bytes as the header says are read (a .gz is inflated only
    that far), so a small gzip bomb cannot inflate to gigabytes.
    """
    with _open_regular(path) as raw:
        try:
            with (gzip.open(raw, "rb") if path.suffix == ".gz" else raw) as f:
                return _read_idx_stream(f, path, ndim)
        except (OSError, EOFError, zlib.error) as e:  # unreadable, or a broken .gz
            raise CnnDslError(f"cannot read IDX file '{path}': {_one_line(e)}") from None


def _read_idx_stream(f, path: Path, ndim: int) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise CnnDslError(f"'{path}' is not an IDX file (bad magic number)")
    if magic[2] != 0x08:
        raise CnnDslError(f"'{path}': IDX dtype code 0x{magic[2]:02x} is not 0x08 (unsigned byte)")
    if magic[3] != ndim:
        raise CnnDslError(f"'{path}': expected a {ndim}-dimensional IDX file, found {magic[3]} dims")
    header = 4 + 4 * ndim
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise CnnDslError(f"'{path}' is truncated (header incomplete)")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    if dims[0] > limits.IDX_MAX_ITEMS or any(d > limits.IDX_MAX_DIM for d in dims[1:]):
        raise CnnDslError(f"'{path}': header dims {dims} are beyond cnndsl's limits "
                          f"({limits.IDX_MAX_ITEMS:,} items of at most {limits.IDX_MAX_DIM:,} "
                          f"per dimension): damaged, or not an image data set")
    size = math.prod(dims)
    budget = limits.data_budget()
    if size > budget:
        raise CnnDslError(f"'{path}': header dims {dims} need {limits.human_bytes(size)}, more than "
                          f"the {limits.human_bytes(budget)} a data file may hold "
                          f"(set CNNDSL_MAX_DATA_BYTES to allow more)")
    out = np.empty(size, dtype=np.uint8)   # writable: torch can take it as it is
    view, got = memoryview(out), 0
    while got < size:
        n = f.readinto(view[got:got + _CHUNK])
        if not n:
            break
        got += n
    if got < size:
        raise CnnDslError(f"'{path}' is truncated: {header + got} bytes, header {dims} "
                          f"needs {header + size}")
    if f.read(1):
        raise CnnDslError(f"'{path}' is longer than its header says: header {dims} "
                          f"needs {header + size} bytes")
    return out.reshape(dims)


_CHUNK = 16 * 2 ** 20


def _one_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return limits.clip(lines[0] if lines else type(e).__name__, 160)


def _need_regular(path: Path) -> None:
    """Refuse anything but a regular file (after symlinks): a FIFO or a device would block
    the read forever or never end."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise CnnDslError(f"cannot read '{path}': {_one_line(e)}") from None
    if not stat.S_ISREG(mode):
        raise CnnDslError(f"'{path}' is not a regular file (a {_file_kind(mode)}): cnndsl reads "
                          "data only from regular files")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return "special file"


# --- CIFAR-10 binary version ----------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32×32


def _load_cifar10(arg: str, shape, seed: int) -> _Raw:
    d = _need_dir(arg, "the CIFAR-10 binary files data_batch_1.bin … test_batch.bin")
    if (d / "cifar-10-batches-bin").is_dir():
        d = d / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    for name in names + ["test_batch.bin"]:
        if not (d / name).is_file():
            raise CnnDslError(_cifar_missing(d, name))
    train = [_read_cifar(d / n) for n in names]
    tr_x = torch.cat([x for x, _ in train])
    tr_y = torch.cat([y for _, y in train])
    te_x, te_y = _read_cifar(d / "test_batch.bin")
    return _Raw(tr_x, tr_y, te_x, te_y, _cifar_names(d))


def _cifar_missing(d: Path, name: str) -> str:
    # The python version is pickles: loading them would run arbitrary code, so refuse
    # it and point the user at the binary download instead.
    if (d / name[:-4]).is_file() or (d / "cifar-10-batches-py").is_dir():
        return (f"'{d}' holds the pickled (python) CIFAR-10; cnndsl needs the binary version "
                "(cifar-10-binary.tar.gz, files data_batch_1.bin … test_batch.bin)")
    return f"missing file '{name}' in '{d}' (expected the CIFAR-10 binary version)"


def _read_cifar(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limits.data_budget():
            raise CnnDslError(f"'{path}' is {limits.human_bytes(size)}, more than the "
                              f"{limits.human_bytes(limits.data_budget())} a data file may hold "
                              f"(set CNNDSL_MAX_DATA_BYTES to allow more)")
        data = np.fromfile(f, dtype=np.uint8)
    if data.size == 0 or data.size % _CIFAR_RECORD:
        raise CnnDslError(f"'{path}' is not a CIFAR-10 binary batch: {data.size} bytes is not "
                          f"a multiple of {_CIFAR_RECORD}")
    records = data.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise CnnDslError(f"'{path}': label {labels.max()} out of range 0..9")
    x = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy()).float().div_(255.0)
    return x, _labels(labels)


def _cifar_names(d: Path) -> list[str]:
    meta = d / "batches.meta.txt"
    if meta.is_file():
        with _open_regular(meta) as f:   # ten short names: the first 64 KiB is plenty
            text = f.read(64 * 1024).decode("utf-8", errors="replace")
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(names) >= 10:
            return names[:10]
    return list(CIFAR10_CLASSES)


# --- a folder of images per class -----------------------------------------------------


def _load_folder(arg: str, shape, seed: int) -> _Raw:
    d = _need_dir(arg, "one sub-folder of PNG/JPEG images per class")
    mode = "L" if shape[0] == 1 else "RGB"
    hw = shape[1:]
    if (d / "train").is_dir():
        # Ready-made splits: train/ plus test/ (or val/ standing in for a missing test/).
        names = _class_dirs(d / "train")
        tr_x, tr_y = _read_classes(d / "train", names, mode, hw)
        test_dir = next((d / s for s in ("test", "val") if (d / s).is_dir()), None)
        val = None
        if test_dir is None:
            tr_x, tr_y, te_x, te_y = _carve(tr_x, tr_y, 0.2, seed)
        else:
            te_x, te_y = _read_classes(test_dir, names, mode, hw)
            if test_dir.name == "test" and (d / "val").is_dir():
                val = _read_classes(d / "val", names, mode, hw)
        return _Raw(tr_x, tr_y, te_x, te_y, names, val)
    names = _class_dirs(d)
    x, y = _read_classes(d, names, mode, hw)
    tr_x, tr_y, te_x, te_y = _carve(x, y, 0.2, seed)
    return _Raw(tr_x, tr_y, te_x, te_y, names)


def _class_dirs(d: Path) -> list[str]:
    names = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise CnnDslError(f"no class folders in '{d}' (expected one sub-folder of images per class)")
    return names


def _read_classes(d: Path, names: list[str], mode: str, hw) -> tuple[torch.Tensor, torch.Tensor]:
    extra = sorted(set(_class_dirs(d)) - set(names))
    if extra:
        raise CnnDslError(f"'{d}' has class folder '{extra[0]}' that the training split lacks")
    xs, ys = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (d / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files and (d / name).is_dir():
            raise CnnDslError(f"class folder '{d / name}' has no PNG/JPEG images")
        for f in files:
            xs.append(_read_image(f, mode, hw))
            ys.append(label)
    if not xs:
        raise CnnDslError(f"no PNG/JPEG images in the class folders of '{d}'")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def _read_image(path: Path, mode: str, hw) -> torch.Tensor:
    from PIL import Image

    try:
        with _open_regular(path) as f, Image.open(f) as im:
            w, h = im.size
            if w * h > _max_pixels():
                raise CnnDslError(f"image '{path}' is {w}×{h} = {w * h:,} pixels, more than the "
                                  f"{_max_pixels():,} cnndsl reads (a decompression bomb?)")
            x = _image_array(im, mode)
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as e:
        raise CnnDslError(f"cannot read image '{path}': {_one_line(e)}") from None
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
    # Images differ in size, so each is resized on its own before they are stacked.
    return _resize(x.unsqueeze(0), hw)[0]


def _max_pixels() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def _image_array(im, mode: str) -> torch.Tensor:
    """The image as float32 H×W (mode L) or H×W×3 (RGB) in [0, 1], scaled by its bit depth.

    8-bit modes (L, RGB, P, 1, LA, RGBA, CMYK …) go through Pillow's `convert`; 16- and
    32-bit integer greys (I;16*, I) are divided by 65535 (Pillow's own I;16 → L would
    saturate everything above 255 to white).
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        grey = np.asarray(im).astype(np.float32) / 65535.0
        x = torch.from_numpy(np.clip(grey, 0.0, 1.0, out=grey))
        return x if mode == "L" else x.unsqueeze(-1).expand(-1, -1, 3).contiguous()
    arr = np.asarray(im.convert(mode), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).float().div_(255.0)


def _open_regular(path: Path):
    """`path` opened for reading, if it is a regular file (symlinks followed); else a
    one-line error. Opened non-blocking and checked again on the open file, so a FIFO
    (or a device) swapped in between cannot block the read."""
    _need_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise CnnDslError(f"cannot read '{path}': {_one_line(e)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CnnDslError(f"'{path}' is not a regular file (a {_file_kind(mode)}): cnndsl reads "
                          "data only from regular files")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# --- synthetic ------------------------------------------------------------------------


def _load_synthetic(arg: str, shape, seed: int) -> _Raw:
    n = 512 if arg == "" else _positive_int(arg)
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    # Each class gets a smooth random template (a 4×4 pattern blown up to H×W); an
    # image is its class template plus noise, so a small CNN can learn it but not trivially.
    templates = F.interpolate(torch.rand(10, c, 4, 4, generator=g), size=(h, w),
                              mode="bilinear", align_corners=False)
    y = torch.arange(n) % 10
    y = y[torch.randperm(n, generator=g)]
    x = (0.5 + 0.6 * (templates[y] - 0.5) + 0.15 * torch.randn(n, c, h, w, generator=g))
    x = x.clamp_(0.0, 1.0)
    n_test = n // 5
    return _Raw(x[n_test:], y[n_test:], x[:n_test], y[:n_test], [str(i) for i in range(10)])


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise CnnDslError(f"synthetic:N needs a whole number of images N >= 2, got '{text}'")
    return n


_LOADERS = {"digits": _load_digits, "mnist": _load_mnist, "cifar10": _load_cifar10,
            "folder": _load_folder, "synthetic": _load_synthetic}


# --- shared helpers -------------------------------------------------------------------


def _labels(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.int64)


def _carve(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    """Split off a seeded random `fraction` of (x, y); both parts keep their original order."""
    n = len(x)
    k = round(n * fraction)
    if fraction > 0 and n > 1:
        k = min(max(k, 1), n - 1)  # a requested split is never empty, never everything
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    held, kept = perm[:k].sort().values, perm[k:].sort().values
    return x[kept], y[kept], x[held], y[held]


def _fit(x: torch.Tensor, shape, name: str) -> torch.Tensor:
    """Adapt channels and resize to the network's input (C, H, W).

    Resizing happens on the fewer channels (before 1→3, after 3→1): it is the slow part.
    """
    c = shape[0]
    if x.shape[1] == c:
        return _resize(x, shape[1:]).contiguous()
    if x.shape[1] == 1 and c == 3:
        # grey to RGB: the same value in every plane
        return _resize(x, shape[1:]).expand(-1, 3, -1, -1).contiguous()
    if x.shape[1] == 3 and c == 1:
        grey = torch.tensordot(x, torch.tensor(LUMA), dims=([1], [0])).unsqueeze(1)
        return _resize(grey, shape[1:]).contiguous()
    raise CnnDslError(f"'{name}' has {x.shape[1]}-channel images; cannot adapt to {c}")


def _resize(x: torch.Tensor, hw) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(hw) or x.shape[0] == 0:
        return x if x.shape[0] else x.new_zeros((0, x.shape[1], *hw))
    # Antialiasing matters when shrinking (e.g. 32×32 → 8×8); bilinear is enough for growing.
    out = F.interpolate(x, size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)
