"""A split of a data set (train, val or test), and how its batches reach the model.

Two kinds, one interface: `len(split)`, `split.y` (all labels, int64), `split.batches(
index_batches, epoch=…)` (raw CPU batches for the given lists of indices, in order) and
`split.prepare(x)` (a raw batch, already on the device, as float32 in [0, 1] at the
network's input shape). The training loop and `evaluate` see nothing else.

* `TensorSplit` — the images in memory as uint8 (float32 only for the small sets that
  are not 8-bit: the digits, synthetic images), at their native size: channels are
  adapted and images resized per batch, on the device. Fast, and small enough to live
  on the GPU; MNIST at 224×224 costs 47 MB, not 9 GB.
* `FileSplit` — image files, decoded and transformed per sample in `DataLoader` worker
  processes (`--workers`, kept alive from epoch to epoch), batches in pinned memory,
  four prefetched per worker; memory does not grow with the number of images. Each sample's random crop is seeded from (seed, epoch,
  index), so which worker decodes it does not matter: a run resumed at epoch e sees
  exactly the samples (and crops) of the uninterrupted run.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Callable

import torch

from ..errors import CnnDslError
from .images import Recipe, decode


class TensorSplit:
    """Images held in memory; `fit` turns a float batch into the network's C×H×W."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, fit: Callable):
        self.x, self.y, self.fit = x, y, fit

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> "TensorSplit":
        return TensorSplit(self.x[:n], self.y[:n], self.fit)

    def batches(self, index_batches, *, epoch: int = 0, train: bool = False):
        for idx in index_batches:
            idx = idx.to(self.x.device)
            yield self.x[idx], self.y[idx]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return self.fit(x)

    def to(self, device) -> None:
        """Keep the images on `device` (the GPU, for a small set): no copy per step."""
        self.x, self.y = self.x.to(device), self.y.to(device)

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size()


class FileSplit:
    """Image files decoded in worker processes; `prepare` only scales to [0, 1]."""

    def __init__(self, files: list[str], y: torch.Tensor, shape: tuple[int, int, int],
                 recipe: Recipe, seed: int, workers: int, skip_bad: bool = False):
        self.files, self.y, self.shape = files, y, tuple(shape)
        self.recipe, self.seed, self.workers = recipe, seed, workers
        self.skip_bad = skip_bad
        self.skipped: set[str] = set()   # what could not be decoded (with skip_bad), one line each

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> "FileSplit":
        return FileSplit(self.files[:n], self.y[:n], self.shape, self.recipe, self.seed,
                         self.workers, self.skip_bad)

    def batches(self, index_batches, *, epoch: int = 0, train: bool = False):
        """The batches, decoded by `workers` processes (none: in this one), in order.

        The workers persist from one call to the next (no start-up each epoch): the epoch
        and the train/eval transform travel with each index, not in the workers' state."""
        lists = [[(i, epoch, train) for i in idx.tolist()] for idx in index_batches]
        if not lists:
            return iter(())
        loader = self._loader()
        loader.batch_sampler.lists = lists
        return _raising(iter(loader), self.skipped if self.skip_bad else None)

    def _loader(self):
        if getattr(self, "_cached_loader", None) is None:
            workers = self.workers
            self._cached_loader = torch.utils.data.DataLoader(
                _Samples(self), batch_sampler=_Batches(), num_workers=workers,
                collate_fn=functools.partial(_stack, shape=self.shape),
                pin_memory=torch.cuda.is_available(),
                # Its own generator: a DataLoader otherwise draws its workers' seed from the
                # global RNG, and the model's initialisation would differ from a run in memory.
                generator=torch.Generator().manual_seed(self.seed),
                prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
                multiprocessing_context="fork" if workers and _can_fork() else None)
        return self._cached_loader

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)

    def to(self, device) -> None:
        pass   # files stay on disk

    @property
    def nbytes(self) -> int:
        return 0


class _Batches:
    """The batch sampler of a persistent loader: the lists of the current call."""

    def __init__(self):
        self.lists: list = []

    def __iter__(self):
        return iter(self.lists)

    def __len__(self) -> int:
        return len(self.lists)


class _Samples(torch.utils.data.Dataset):
    """What a worker decodes: item (i, epoch, train) is sample i of a FileSplit in that epoch."""

    def __init__(self, split: FileSplit):
        self.files, self.y, self.shape = split.files, split.y, split.shape
        self.recipe, self.seed = split.recipe, split.seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        i, epoch, train = item
        c, h, w = self.shape
        try:
            x = decode(self.files[i], c, (h, w), train=train, recipe=self.recipe,
                       seed=sample_seed(self.seed, epoch, i))
        except CnnDslError as e:   # reported by the main process, in one line (_raising)
            return None, e.message
        return x, self.y[i]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random crop: from (seed, epoch, index) alone."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _stack(items, shape):
    """A batch (x, y, messages): a sample that could not be decoded is replaced by another
    of its batch (so every DDP process keeps the batch size) and its message kept."""
    bad = [message for x, message in items if x is None]
    good = [item for item in items if item[0] is not None]
    if not good:   # an empty index list, or nothing decodable: an empty batch
        return (torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), bad)
    good += [good[i % len(good)] for i in range(len(bad))]
    xs, ys = zip(*good)
    return torch.stack(xs), torch.stack(ys), bad


def _raising(loader, skipped: set | None = None):
    """The loader's (x, y); a file a worker could not decode is a one-line error here, in
    the main process (a worker's own exception would carry its traceback) — or, when
    `skipped` is given (--skip-bad-images), noted there and its place taken by another."""
    for x, y, bad in loader:
        if bad and (skipped is None or len(x) == 0):
            raise CnnDslError(bad[0] if len(x) else f"no image of a batch could be read: {bad[0]}")
        if bad:
            skipped.update(bad)
        yield x, y


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def split_stats(split, batch_size: int = 512, sample: int = 2000, seed: int = 0):
    """Per-channel mean and (population) std of a split's images, for centring the inputs
    (the notes: "center your data"). In memory: over every image; from files: over a
    seeded sample of at most `sample` images (decoding all of ImageNet for two numbers per
    channel is not worth an hour). Accumulated in float64, std clamped to ≥ 1e-3."""
    n = len(split)
    if n == 0:
        raise CnnDslError("channel statistics need a non-empty training set")
    order = torch.arange(n)
    if getattr(split, "sequential", False):   # a stream (wds:pipe:): its first images, not a read of all
        order = order[:sample]
    elif not isinstance(split, TensorSplit) and n > sample:   # streamed: a sample
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:sample].sort().values
    batches = list(order.split(batch_size))
    total = squares = None
    count = 0
    for xb, _ in split.batches(batches):
        x = split.prepare(xb).double()
        s, q = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        total, squares = (s, q) if total is None else (total + s, squares + q)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.float(), std.float()
