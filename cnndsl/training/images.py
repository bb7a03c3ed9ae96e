"""Decoding one image file to a uint8 tensor, with the ImageNet recipe's per-sample transforms.

A folder of 1.28 M JPEGs cannot be decoded into RAM up front, so a `DataLoader` worker
calls `decode` once per sample. Everything is done in Pillow on 8-bit images, exactly as
torchvision's reference scripts do it (and timm), so recipes and accuracies carry over:

* eval (and train without `resized_crop`): `Resize(S)` of the shorter side with
  S = round(max(H, W) · resize_ratio) (256 for 224), then `CenterCrop((H, W))`;
* train with `resized_crop`: `RandomResizedCrop((H, W), scale, ratio)` — the crop box
  drawn by torchvision's `get_params` algorithm, then the box resized to H×W; then,
  when `hflip` > 0, a left-right mirror with that probability.

All resizing is Pillow's `Image.Resampling.BILINEAR` with its default `reducing_gap=None`:
Pillow widens the filter when it shrinks, i.e. bilinear *with antialiasing*, which is what
torchvision's PIL path calls. The output is uint8 C×H×W (1 channel: Pillow "L", 3: "RGB");
the training loop converts whole batches to float on the device, which is 4× less data
through the worker pipes than float32.

Randomness: every draw comes from `random.Random(seed)`, in a fixed order (crop box, then
flip), so a sample's crop depends only on the seed the caller passes — bit-identical in any
worker process, whatever the worker count or the order samples are served in.

Speed: a JPEG much larger than needed is decoded by libjpeg at 1/2, 1/4 or 1/8 scale
(`Image.draft`), but only when the reduced image still has at least as many pixels as the
box that is resized to the output, so the shortcut never upsamples what full decoding
would have shrunk. The crop box is always drawn on the *full* size (from the header), so
the draft changes pixel values slightly, never which part of the image is seen.

Every file is hostile (see `limits`): only regular files are opened (a FIFO named x.png
would block a worker forever), an image over Pillow's pixel limit is refused from its
header before anything is decoded, and a corrupt, truncated or empty file is a one-line
`CnnDslError` naming it. 16-bit greys are scaled by their bit depth, not saturated.
"""
from __future__ import annotations

import math
import operator
import os
import random
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CnnDslError
from . import limits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}
_DRAFT_SCALES = (8, 4, 2)   # the reductions libjpeg's scaled IDCT offers (besides 1)


# --- opening files safely -------------------------------------------------------------


def one_line(e: BaseException) -> str:
    """The first line of an exception's message, clipped: for a one-line error."""
    lines = str(e).strip().splitlines()
    return limits.clip(lines[0] if lines else type(e).__name__, 160)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, from its `st_mode`."""
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return "special file"


def not_regular_error(path, mode: int) -> CnnDslError:
    return CnnDslError(f"'{path}' is not a regular file (a {file_kind(mode)}): cnndsl reads "
                       "data only from regular files")


def need_regular(path: str | Path) -> None:
    """Refuse anything but a regular file (after symlinks): a FIFO or a device would block
    the read forever or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise CnnDslError(f"cannot read '{path}': {one_line(e)}") from None
    if not stat.S_ISREG(mode):
        raise not_regular_error(path, mode)


def open_regular(path: str | Path):
    """`path` opened for binary reading, if it is a regular file (symlinks followed); else a
    one-line error. Opened non-blocking and checked again on the open file, so a FIFO
    (or a device) swapped in between the stat and the open cannot block the read."""
    need_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise CnnDslError(f"cannot read '{path}': {one_line(e)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise not_regular_error(path, mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def max_pixels() -> int:
    """The most pixels (width × height) cnndsl decodes: Pillow's decompression-bomb limit."""
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


# --- the recipe -----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """The per-sample transforms: torchvision's `RandomResizedCrop(scale, ratio)` when
    `resized_crop` (training only), a mirror with probability `hflip` (training only), and
    the eval resize (shorter side to round(max(H, W) · `resize_ratio`)) + centre crop.

    >>> Recipe.from_augment({"resized_crop": True, "hflip": True}).scale
    (0.08, 1.0)
    >>> Recipe.from_augment({"resized_crop": {"scale": [0.35, 1]}}).scale
    (0.35, 1.0)
    """

    resized_crop: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    resize_ratio: float = 256 / 224

    def __post_init__(self) -> None:
        _check_range("scale", self.scale, upper=1.0)
        _check_range("ratio", self.ratio, upper=None)
        if not _is_number(self.hflip) or not 0.0 <= self.hflip <= 1.0:
            raise CnnDslError(f"hflip must be a probability in [0, 1], got {self.hflip!r}")
        # Below 1 the resized image would not cover the centre crop (torchvision pads it
        # with black; a recipe never wants that).
        if not _is_number(self.resize_ratio) or not 1.0 <= self.resize_ratio <= 16.0:
            raise CnnDslError(f"resize_ratio must be a number in [1, 16], got {self.resize_ratio!r}")

    @classmethod
    def from_augment(cls, augment: dict | None) -> "Recipe":
        """The recipe a spec's `augment:` mapping asks for. Only its `resized_crop` key is
        read (`true`, `false`, or `{scale: [a, b], ratio: [c, d]}`); hflip, crop, jitter and
        affine are batch augmentations, applied elsewhere."""
        if augment is None:
            return cls(resize_ratio=1.0)
        if not isinstance(augment, dict):
            raise CnnDslError(f"augment must be a mapping like {{resized_crop: true}}, "
                              f"got {_show(augment)}")
        value = augment.get("resized_crop", False)
        if value is None or value is False:
            # Without the ImageNet recipe nothing is cropped away: the shorter side is
            # scaled to the network's, the longer one centre-cropped (none for a square).
            return cls(resize_ratio=1.0)
        if value is True:
            return cls(resized_crop=True)
        if not isinstance(value, dict):
            raise CnnDslError("augment resized_crop takes true, false or a mapping like "
                              f"{{scale: [0.08, 1.0], ratio: [0.75, 1.333]}}, got {_show(value)}")
        unknown = [k for k in value if k not in ("scale", "ratio")]
        if unknown:
            raise CnnDslError(f"augment resized_crop has unknown key {_show(unknown[0])}; "
                              "valid: scale, ratio")
        fields = {k: _pair(f"resized_crop {k}", value[k]) for k in ("scale", "ratio") if k in value}
        return cls(resized_crop=True, **fields)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v) -> str:
    """A hostile YAML value, shown short (never str() of something huge)."""
    return limits.clip(repr(v) if isinstance(v, (str, int, float, bool)) or v is None
                       else f"a {type(v).__name__}")


def _pair(name: str, value) -> tuple[float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value))):
        raise CnnDslError(f"augment {name} takes two numbers [low, high], got {_show(value)}")
    return float(value[0]), float(value[1])


def _check_range(name: str, pair, upper: float | None) -> None:
    ok = (isinstance(pair, tuple) and len(pair) == 2 and all(map(_is_number, pair))
          and 0 < pair[0] <= pair[1] and (upper is None or pair[1] <= upper))
    if not ok:
        bound = f"0 < low <= high <= {upper:g}" if upper is not None else "0 < low <= high"
        raise CnnDslError(f"augment resized_crop {name} must be [low, high] with {bound}, "
                          f"got {_show(list(pair) if isinstance(pair, tuple) else pair)}")


# --- geometry (pure arithmetic on sizes: what torchvision computes) --------------------


def resized_crop_box(width: int, height: int, scale, ratio, rng: random.Random
                     ) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop: torchvision's `RandomResizedCrop.get_params`.

    Ten tries of an area fraction U(scale) and a log-uniform aspect ratio; the first box
    that fits wins, else the whole image, centre-cropped to the nearest allowed ratio.

    >>> resized_crop_box(500, 375, (0.08, 1.0), (3/4, 4/3), random.Random(0))
    (3, 5, 372, 432)
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_resize(width: int, height: int, size: tuple[int, int], resize_ratio: float
                ) -> tuple[int, int]:
    """(width, height) after torchvision's `Resize(S)` with S = round(max(H, W) · ratio):
    the shorter side becomes S, the longer is scaled with it (truncated, as torchvision).

    >>> eval_resize(500, 375, (224, 224), 256 / 224)
    (341, 256)
    """
    target = int(round(max(size) * resize_ratio))
    if width <= height:
        return target, int(target * height / width)
    return int(target * width / height), target


def centre_crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pillow box (left, upper, right, lower) of torchvision's `CenterCrop(size)`.

    >>> centre_crop_box(341, 256, (224, 224))
    (58, 16, 282, 240)
    """
    h, w = size
    top = int(round((height - h) / 2.0))
    left = int(round((width - w) / 2.0))
    return left, top, left + w, top + h


# --- decoding -------------------------------------------------------------------------


def probe(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image, read from its header only (nothing is decoded)."""
    from PIL import Image

    with _reading(path), open_regular(path) as f, Image.open(f) as im:
        return im.size


def decode(path: str | Path, channels: int, size: tuple[int, int], *, train: bool,
           recipe: Recipe, seed: int) -> torch.Tensor:
    """The image at `path` as uint8 `channels`×H×W, transformed by `recipe` (see the
    module doc): random crop and flip when `train`, resize + centre crop otherwise."""
    _check_target(channels, size)
    with _reading(path), open_regular(path) as f:
        return decode_file(f, path, channels, size, train=train, recipe=recipe, seed=seed)


def decode_file(f, name, channels: int, size: tuple[int, int], *, train: bool, recipe: Recipe,
                seed: int) -> torch.Tensor:
    """`decode` of an open binary file (a tar member's bytes in a BytesIO, say); `name`
    is what errors call it."""
    _check_target(channels, size)
    # operator.index: a numpy or torch integer seed works too (Random refuses them), and
    # Random(int) seeds the same way in every process (no hash randomisation).
    rng = random.Random(operator.index(seed))
    with _reading(name):
        im = _transformed(f, name, _MODES[channels], tuple(int(v) for v in size), train, recipe, rng)
    return _to_tensor(im)


def _check_target(channels: int, size) -> None:
    if channels not in _MODES:
        raise CnnDslError(f"images are decoded with 1 or 3 channels, not {channels}")
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise CnnDslError(f"images are decoded to a positive size, not {h}×{w}")


class _reading:
    """Turns whatever Pillow raises on a bad file into "cannot read image 'PATH': why"."""

    def __init__(self, path) -> None:
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb) -> bool:
        from PIL import Image

        bad = (OSError, ValueError, EOFError, SyntaxError, struct.error, zlib.error, IndexError,
               ZeroDivisionError, Image.DecompressionBombError)
        if e is None or isinstance(e, CnnDslError) or not isinstance(e, bad):
            return False
        raise CnnDslError(f"cannot read image '{self.path}': {_reason(e, self.path)}") from None


def _reason(e: BaseException, path) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        # Pillow's own text names the file object ("<_io.BufferedReader name=7>"), not the file.
        empty = _size_or_none(path) == 0
        return "the file is empty" if empty else "not an image format Pillow can identify"
    return one_line(e)


def _size_or_none(path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _transformed(f, path, mode: str, size: tuple[int, int], train: bool, recipe: Recipe,
                 rng: random.Random):
    """The opened file decoded and transformed: a Pillow image of `mode`, `size` (H, W)."""
    from PIL import Image

    with Image.open(f) as im:
        width, height = im.size
        if width * height > max_pixels():
            raise CnnDslError(f"image '{path}' is {width}×{height} = {width * height:,} pixels, "
                              f"more than the {max_pixels():,} cnndsl reads (a decompression bomb?)")
        if train and recipe.resized_crop:
            out = _random_resized_crop(im, mode, size, recipe, rng)
        else:
            out = _resize_centre_crop(im, mode, size, recipe.resize_ratio)
    if train and recipe.hflip > 0 and rng.random() < recipe.hflip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def _random_resized_crop(im, mode: str, size: tuple[int, int], recipe: Recipe, rng):
    """torchvision's RandomResizedCrop: the box is drawn on the full size, then resized."""
    width, height = im.size
    top, left, h, w = resized_crop_box(width, height, recipe.scale, recipe.ratio, rng)
    out_h, out_w = size
    # A draft may reduce by s only if the box, reduced by s, still has out_w × out_h pixels.
    s = _draft(im, mode, _draft_scale(min(w // out_w, h // out_h)))
    box = (left / s, top / s, (left + w) / s, (top + h) / s)
    return _crop_resize(im, box, mode, (out_w, out_h))


def _resize_centre_crop(im, mode: str, size: tuple[int, int], resize_ratio: float):
    """torchvision's eval transform: Resize(round(max(H, W) · ratio)), CenterCrop((H, W))."""
    width, height = im.size
    new_size = eval_resize(width, height, size, resize_ratio)
    s = _draft(im, mode, _draft_scale(min(width // new_size[0], height // new_size[1])))
    resized = _crop_resize(im, (0.0, 0.0, width / s, height / s), mode, new_size)
    return resized.crop(centre_crop_box(*new_size, size))


def _draft_scale(fits: int) -> int:
    """The largest JPEG reduction (8, 4, 2, else 1) not above `fits`."""
    return next((s for s in _DRAFT_SCALES if fits >= s), 1)


def _draft(im, mode: str, s: int) -> int:
    """Ask libjpeg to decode `im` reduced by `s` (and straight to `mode` if it can); the
    reduction it will really apply (1 for a PNG, or when `s` is 1)."""
    if s <= 1:
        return 1
    width, height = im.size
    # Pillow reduces by the largest of 8, 4, 2 not above min(width // w, height // h): for
    # w = width // s that is exactly s. Its size becomes ceil(width / s) × ceil(height / s).
    done = im.draft(mode, (width // s, height // s))
    if done is None:
        return 1
    return int(round(width / done[1][2]))   # draft's box: (0, 0, width / s, height / s)


def _crop_resize(im, box: tuple[float, float, float, float], mode: str, out_wh: tuple[int, int]):
    """`box` of `im` (fractional after a draft) resized to `out_wh`, in 8-bit `mode`.

    The whole pixels around the box are cut out first and converted on their own (the
    conversion is per pixel, so cutting first gives the same values, and a small crop of a
    big image converts only what is used); an integer box is then exactly torchvision's
    crop followed by resize.
    """
    from PIL import Image

    x0, y0, x1, y1 = box
    outer = (math.floor(x0), math.floor(y0), min(math.ceil(x1), im.size[0]),
             min(math.ceil(y1), im.size[1]))
    piece = to_mode(im.crop(outer), mode)
    inner = (x0 - outer[0], y0 - outer[1], x1 - outer[0], y1 - outer[1])
    if out_wh == piece.size and inner == (0, 0, *piece.size):
        return piece
    # BILINEAR with reducing_gap=None: antialiased bilinear, the filter torchvision uses.
    return piece.resize(out_wh, Image.Resampling.BILINEAR, box=inner, reducing_gap=None)


def to_mode(im, mode: str):
    """`im` as an 8-bit Pillow image of `mode` ("L" or "RGB"), scaled by its bit depth.

    8-bit modes (L, RGB, P, 1, LA, RGBA, CMYK …) go through Pillow's `convert`; 16- and
    32-bit integer greys (I;16*, I) and float greys (F) map v to round(v · 255 / 65535),
    clipped to [0, 255] (Pillow's own I;16 → L would saturate everything above 255).
    """
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        grey = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        # v / 257 is never exactly half-way for an integer v (257 is odd), so rint is round.
        levels = np.rint(np.clip(grey, 0.0, 65535.0) / 257.0).astype(np.uint8)
        im = Image.fromarray(levels)   # 2-D uint8: mode "L"
    return im if im.mode == mode else im.convert(mode)


def _to_tensor(im) -> torch.Tensor:
    """uint8 C×H×W (contiguous, writable) from an "L" or "RGB" Pillow image."""
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())
