"""Data sets for `cnndsl train`: local files, never downloaded, as three splits.

Each split is a `splits.TensorSplit` (images in memory) or a `splits.FileSplit`
(image files decoded per batch in worker processes); the training loop sees only
their common interface. The small sets (digits, MNIST, CIFAR-10, synthetic) are held
in memory at their native size, as uint8 where the data is 8-bit, and resized per
batch. A folder is indexed without opening an image (`folder_index`), then decoded
once into memory or streamed from disk: `--cache auto` streams when the decoded images
would not fit a quarter of the machine's memory, or when `augment: {resized_crop: …}`
asks for a fresh random crop of every image each epoch (`images`); one line of the
run's log says which was chosen and why.

Source forms (the `--data` argument):

* `digits`         scikit-learn's bundled 8×8 digits, split as in its classic example.
* `mnist:DIR`      the four IDX files of MNIST / Fashion-MNIST / KMNIST (plain or .gz).
* `cifar10:DIR`    the CIFAR-10 *binary* version (`data_batch_1.bin` …, `test_batch.bin`).
* `folder:DIR`     one sub-folder of PNG/JPEG images per class (optionally train/ test/).
* `wds:SPEC`       WebDataset tar shards (a folder of train-*.tar …, or a {a..b} pattern).
* `wds:pipe:CMD`   WebDataset tar shards streamed from commands, one per shard (a pattern);
                   only ever from the `--data` flag (pipe_shards).
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

import functools
import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CnnDslError
from . import limits
from .images import one_line, open_regular
from .sources import SOURCES, parse_source
from .splits import FileSplit, TensorSplit, split_stats

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
# ITU-R 601 weights, the same ones Pillow uses for RGB -> L, so a folder read as "L"
# and an RGB data set reduced to one channel agree.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class DataSplits:
    """The three splits of a data set (see `splits`: in memory, or streamed from files)."""

    train: TensorSplit | FileSplit
    val: TensorSplit | FileSplit
    test: TensorSplit | FileSplit
    class_names: list[str]
    name: str
    how: str = ""   # one line: held in memory or streamed, and why
    skipped: set = field(default_factory=set)   # files that could not be decoded (--skip-bad-images)

    def skipped_files(self) -> list[str]:
        """Every file skipped so far: at decoding (in memory), or while streaming."""
        streamed = (getattr(s, "skipped", set()) for s in (self.train, self.val, self.test))
        return sorted(self.skipped.union(*streamed))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # The splits as whole float32 tensors at the network's input shape: for small sets
    # (tests, inspection); training never builds them.
    train_x = property(lambda self: _whole(self.train))
    val_x = property(lambda self: _whole(self.val))
    test_x = property(lambda self: _whole(self.test))
    train_y = property(lambda self: self.train.y)
    val_y = property(lambda self: self.val.y)
    test_y = property(lambda self: self.test.y)


@dataclass
class _Raw:
    """What a loader reads, before carving the validation split: images at their native
    size, uint8 (float32 in [0, 1] for the sets that are not 8-bit)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    val: tuple[torch.Tensor, torch.Tensor] | None = None  # a split the data set ships


@dataclass
class Options:
    """How `load_data` reads: the settings of `cnndsl train` that concern data."""

    val_fraction: float = 0.1
    seed: int = 0
    limit: int | None = None
    cache: str = "auto"            # auto | ram | stream (folders only)
    workers: int = 0               # DataLoader worker processes for a streamed folder
    skip_bad: bool = False         # a file that cannot be decoded is counted, not fatal
    augment: dict | None = None    # a spec's `augment:`; `resized_crop` is per sample
    index_dir: Path | None = None  # where a folder's index is cached


def load_data(source: str, input_shape: tuple[int, int, int], *, val_fraction: float = 0.1,
              seed: int = 0, limit: int | None = None, **options) -> DataSplits:
    """Load `source` (see the module doc) for a network whose input is (C, H, W).

    The validation split is a seeded random `val_fraction` of the training images
    (after `limit`), unless the data set ships its own (a folder's val/ next to test/).
    `options` are the other fields of `Options` (cache, workers, augment, index_dir).
    """
    opts = Options(val_fraction=val_fraction, seed=seed, limit=limit, **options)
    if not 0.0 <= opts.val_fraction < 1.0:
        raise CnnDslError(f"val_fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.limit is not None and opts.limit < 1:
        raise CnnDslError(f"limit must be a positive number of images, got {opts.limit}")
    c, h, w = (int(v) for v in input_shape)
    if c not in (1, 3):
        raise CnnDslError(f"data sets provide 1- or 3-channel images; the network wants {c}")
    kind, arg, name = parse_source(source)
    if kind == "wds":   # tar shards: files read by random access, or commands streamed
        from .pipe_shards import runs_command
        from .shards import pipe_splits, shard_splits   # here: shards.py uses this module
        read = pipe_splits if runs_command(source) else shard_splits
        return read(arg, name, (c, h, w), opts)
    if SOURCES[kind].load is None:
        return _folder_splits(arg, name, (c, h, w), opts)
    if (opts.augment or {}).get("resized_crop"):
        raise CnnDslError(f"augment resized_crop crops each image from its original, so it needs "
                          f"folder:DIR; '{name}' is held in memory at one size (use crop: N)")
    raw = globals()[SOURCES[kind].load](arg, (c, h, w), opts.seed)
    if kind == "synthetic":
        name = f"synthetic:{arg}"
    return _tensor_splits(raw, name, (c, h, w), opts)


def _tensor_splits(raw: _Raw, name: str, shape, opts: Options, how: str = "") -> DataSplits:
    train_x, train_y = raw.train_x, raw.train_y
    if opts.limit is not None:
        train_x, train_y = train_x[:opts.limit], train_y[:opts.limit]
    if raw.val is not None:
        val_x, val_y = raw.val
    else:
        kept, held = _carve_indices(len(train_y), opts.val_fraction, opts.seed)
        train_x, train_y, val_x, val_y = train_x[kept], train_y[kept], train_x[held], train_y[held]
    fit = functools.partial(_fit, shape=shape, name=name)
    splits = [TensorSplit(x, y, fit) for x, y in
              ((train_x, train_y), (val_x, val_y), (raw.test_x, raw.test_y))]
    total = sum(s.nbytes for s in splits)
    how = how or (f"{name}: in memory, {limits.human_bytes(total)} "
                  f"({str(train_x.dtype).removeprefix('torch.')} at native size, resized per batch)")
    return DataSplits(*splits, list(raw.class_names), name, how)


def _whole(split) -> torch.Tensor:
    if len(split) == 0:
        empty = split.x[:0] if isinstance(split, TensorSplit) else torch.zeros(0, *split.shape)
        return split.prepare(empty)
    x, _ = next(split.batches([torch.arange(len(split))]))
    return split.prepare(x)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of N×C×H×W images in [0, 1]: `split_stats`
    (the one computation training uses) of the images as an in-memory split."""
    if x.dim() != 4 or x.shape[0] == 0:
        raise CnnDslError("channel statistics need a non-empty N×C×H×W training set")
    return split_stats(TensorSplit(x, torch.zeros(len(x), dtype=torch.int64), lambda b: b))


# --- choosing a loader ---------------------------------------------------------------


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
        return torch.from_numpy(a).unsqueeze(1)   # uint8, as stored: 47 MB for MNIST

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
    with open_regular(path) as raw:
        try:
            with (gzip.open(raw, "rb") if path.suffix == ".gz" else raw) as f:
                return _read_idx_stream(f, path, ndim)
        except (OSError, EOFError, zlib.error) as e:  # unreadable, or a broken .gz
            raise CnnDslError(f"cannot read IDX file '{path}': {one_line(e)}") from None


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
    with open_regular(path) as f:
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
    x = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())   # uint8
    return x, _labels(labels)


def _cifar_names(d: Path) -> list[str]:
    meta = d / "batches.meta.txt"
    if meta.is_file():
        with open_regular(meta) as f:   # ten short names: the first 64 KiB is plenty
            text = f.read(64 * 1024).decode("utf-8", errors="replace")
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(names) >= 10:
            return names[:10]
    return list(CIFAR10_CLASSES)


# --- a folder of images per class -----------------------------------------------------


def _folder_splits(arg: str, name: str, shape, opts: Options) -> DataSplits:
    """A folder of class folders: indexed without opening an image, then either decoded
    once into memory (uint8, at the network's size) or streamed per batch (`--cache`)."""
    from .folder_index import index_folder
    from .images import Recipe

    d = _need_dir(arg, "one sub-folder of PNG/JPEG images per class")
    index = index_folder(d, opts.index_dir)
    parts = _folder_parts(index, opts)
    recipe = Recipe.from_augment(opts.augment or {})
    streamed = [FileSplit(files, y, shape, recipe, opts.seed, opts.workers, opts.skip_bad)
                for files, y in parts]
    return held_or_streamed(streamed, index.class_names, name, "", recipe, opts)


def held_or_streamed(streamed: list, class_names, name: str, where: str, recipe,
                     opts: Options, medium: str = "disk") -> DataSplits:
    """Splits of files (a folder's, or tar shards') decoded once into memory, or left to
    stream, as `--cache` says; `where` adds to the log line (" in 12 shards"), `medium`
    says what they stream from."""
    n = sum(len(s) for s in streamed)
    mode, why = _cache_choice(opts.cache, n * math.prod(streamed[0].shape), recipe, medium)
    how = f"{name}: {n:,} images{where}, {why}"
    if mode == "stream":
        return DataSplits(*streamed, list(class_names), name,
                          f"{how}; decoded by {opts.workers or 'no'} worker process"
                          f"{'es' if opts.workers != 1 else ''}")
    fit = functools.partial(_fit, shape=streamed[0].shape, name=name)
    held = [TensorSplit(_decode_all(s), s.y, fit) for s in streamed]
    skipped = set().union(*(s.skipped for s in streamed))
    if skipped:   # with --skip-bad-images: each replaced by another image of its batch
        how += f"; {len(skipped)} could not be decoded and were replaced (first: {min(skipped)})"
    return DataSplits(*held, list(class_names), name, how, skipped)


TEST_FRACTION = 0.2   # of the training images (a pipe: source: shards) that test, without a test set


def _folder_parts(index, opts: Options) -> list[tuple[list[str], torch.Tensor]]:
    """(files, labels) of train, val and test. The folder's train/ (or, flat, all of it)
    trains; its test/ (else its val/, else a seeded 20%) tests; its val/ next to a test/
    validates, else a seeded `val_fraction` of the training files (after `limit`)."""
    def part(files, labels, keep=None):
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if keep is None:
            return list(files), labels
        return [files[i] for i in keep.tolist()], labels[keep]

    train = part(*index.splits["train"])
    test_name = next((s for s in ("test", "val") if s in index.splits), None)
    val = None
    if test_name is None:
        kept, held = _carve_indices(len(train[1]), TEST_FRACTION, opts.seed)
        train, test = part(*train, kept), part(*train, held)
    else:
        test = part(*index.splits[test_name])
        if test_name == "test" and "val" in index.splits:
            val = part(*index.splits["val"])
    if opts.limit is not None:   # before anything is decoded
        train = (train[0][:opts.limit], train[1][:opts.limit])
    if val is None:
        kept, held = _carve_indices(len(train[1]), opts.val_fraction, opts.seed)
        train, val = part(*train, kept), part(*train, held)
    return [train, val, test]


def _cache_choice(cache: str, nbytes: int, recipe, medium: str = "disk") -> tuple[str, str]:
    """ram or stream, and the reason, in words for the run's log (streamed from `medium`)."""
    memory = limits.machine_memory() or 8 * limits.GiB
    if cache == "ram":
        if nbytes > memory // 2:   # asked for, but it would take the machine down
            raise CnnDslError(f"--cache ram: decoded, the images would take "
                              f"{limits.human_bytes(nbytes)}, more than half of this machine's "
                              f"{limits.human_bytes(memory)}; use --cache stream (or auto)")
        return "ram", f"decoded into memory ({limits.human_bytes(nbytes)} as uint8; --cache ram)"
    if cache == "stream":
        return "stream", f"streamed from {medium} (--cache stream)"
    if recipe.resized_crop:
        return "stream", f"streamed from {medium}: augment.resized_crop crops every image anew each epoch"
    # Every process torchrun starts on this machine holds its own copy.
    budget = memory // 4 // _local_processes()
    if nbytes <= budget:
        return "ram", (f"decoded into memory: {limits.human_bytes(nbytes)} as uint8 fits a quarter "
                       f"of the memory, {limits.human_bytes(budget)} (--cache auto)")
    return "stream", (f"streamed from {medium}: decoded they would take {limits.human_bytes(nbytes)}, "
                      f"more than a quarter of the memory, {limits.human_bytes(budget)} (--cache auto)")


def _local_processes() -> int:
    """How many training processes share this machine (torchrun's LOCAL_WORLD_SIZE)."""
    text = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(text) if text.isdigit() and int(text) > 0 else 1


def _decode_all(split) -> torch.Tensor:
    """Every image of a split, decoded (in the split's worker processes) into one uint8 tensor."""
    out = torch.empty((len(split), *split.shape), dtype=torch.uint8)
    batches = list(torch.arange(len(split)).split(256))
    for idx, (x, _) in zip(batches, split.batches(batches)):
        out[idx] = x
    return out


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




# --- shared helpers -------------------------------------------------------------------


def _labels(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.int64)


def _carve(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    """Split off a seeded random `fraction` of (x, y); both parts keep their original order."""
    kept, held = _carve_indices(len(y), fraction, seed)
    return x[kept], y[kept], x[held], y[held]


def _carve_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) indices of 0..n-1, held a seeded random `fraction`, both in order."""
    k = round(n * fraction)
    if fraction > 0 and n > 1:
        k = min(max(k, 1), n - 1)  # a requested split is never empty, never everything
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return perm[k:].sort().values, perm[:k].sort().values


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
        grey = torch.tensordot(x, torch.tensor(LUMA, dtype=x.dtype, device=x.device),
                               dims=([1], [0])).unsqueeze(1)
        return _resize(grey, shape[1:]).contiguous()
    raise CnnDslError(f"'{name}' has {x.shape[1]}-channel images; cannot adapt to {c}")


def _resize(x: torch.Tensor, hw) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(hw) or x.shape[0] == 0:
        return x if x.shape[0] else x.new_zeros((0, x.shape[1], *hw))
    # Antialiasing matters when shrinking (e.g. 32×32 → 8×8); bilinear is enough for growing.
    out = F.interpolate(x, size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)
