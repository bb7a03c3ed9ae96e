"""Data augmentation for training, and test-time augmentation (TTA) for evaluation.

Everything works on whole batches N×C×H×W of images in [0, 1] (apply it before
normalising: the colour jitter clamps to [0, 1]). All randomness is drawn from the
`torch.Generator` passed in, so a run with the same seed sees the same distortions.
Random numbers are drawn on the generator's device and moved to the batch's device,
so a CPU generator also drives augmentation of a GPU batch.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import CnnDslError, did_you_mean

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
TTA_MODES = ("none", "flip", "10crop")
LUMA = (0.299, 0.587, 0.114)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    """n samples from U(lo, hi), drawn on the generator's device, returned on x's device."""
    u = torch.rand(n, generator=gen, device=gen.device)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


# --- single augmentations -------------------------------------------------------------


def hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p (drawn per sample)."""
    flip = _uniform(gen, x.shape[0], 0.0, 1.0, x) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def random_crop(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by `pad` on every side, then cut each image back to H×W at a random offset."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    # One gather for the whole batch: row/column indices per sample, broadcast over C.
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def color_jitter(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2) -> torch.Tensor:
    """Scale brightness, contrast and saturation by per-sample factors in [1-s, 1+s]."""
    n = x.shape[0]
    b = _uniform(gen, n, 1 - brightness, 1 + brightness, x).view(-1, 1, 1, 1)
    k = _uniform(gen, n, 1 - contrast, 1 + contrast, x).view(-1, 1, 1, 1)
    s = _uniform(gen, n, 1 - saturation, 1 + saturation, x).view(-1, 1, 1, 1)
    x = (x * b).clamp(0, 1)
    # Contrast pulls each image towards (or away from) its own mean grey level.
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * k + mean).clamp(0, 1)
    if x.shape[1] == 3:  # saturation only means something for colour images
        grey = _grey(x)
        x = ((x - grey) * s + grey).clamp(0, 1)
    return x


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees: float = 10,
                  translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Rotate by ±degrees, shift by ±translate of the side, zoom by `scale`; per sample."""
    n, _, h, w = x.shape
    angle = _uniform(gen, n, -degrees, degrees, x) * (math.pi / 180)
    tx = _uniform(gen, n, -translate, translate, x) * 2  # normalised coords span 2
    ty = _uniform(gen, n, -translate, translate, x) * 2
    zoom = _uniform(gen, n, scale[0], scale[1], x)
    # affine_grid maps output to input coordinates, so build the inverse transform:
    # in = (R(angle)·zoom)⁻¹ (out − t). Rotation is done in pixel units (the h/w
    # factors) so a non-square image is rotated, not sheared.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    a = torch.stack([cos, sin * h / w, -sin * w / h, cos], dim=1).view(n, 2, 2)
    t = torch.stack([tx, ty], dim=1).unsqueeze(2)
    theta = torch.cat([a, -(a @ t)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --- building a pipeline from a spec's config -----------------------------------------

AUGMENT_KEYS = ("hflip", "crop", "jitter", "affine")
# Per-sample, at decoding (images.Recipe): a folder's images only; batches ignore it here.
SAMPLE_KEYS = ("resized_crop",)
MAX_CROP_PAD = 1024


def build_augment(config: dict | None) -> Augment:
    """A function (x, gen) -> x from e.g. {"hflip": true, "crop": 4, "jitter": 0.2, "affine": true}.

    hflip: true / probability; crop: padding in pixels (true = 4); jitter: strength of
    brightness/contrast/saturation (true = 0.2); affine: true for the default distortion.
    false / 0 turns a step off. Empty or None: the identity.
    """
    if not config:
        return _identity
    if not isinstance(config, dict):
        raise CnnDslError(f"augment must be a mapping like {{hflip: true, crop: 4}}, got {config!r}")
    steps: list[Augment] = []
    for key in config:
        if key not in AUGMENT_KEYS + SAMPLE_KEYS:
            valid = AUGMENT_KEYS + SAMPLE_KEYS
            raise CnnDslError(f"unknown augmentation '{key}'{did_you_mean(str(key), valid)}"
                              f"; valid: {', '.join(valid)}")
    if "resized_crop" in config:   # checked here too, so a spec's mistake shows at once
        from .images import Recipe
        Recipe.from_augment(config)
    # Fixed order: geometry first (affine, crop, flip), then colour.
    if _on(config, "affine"):
        if config["affine"] is not True:
            raise CnnDslError(f"augment affine takes true or false, got {config['affine']!r}")
        steps.append(random_affine)
    if _on(config, "crop"):
        # A pad beyond the image itself crops mostly padding; 1024 px bounds what is allocated.
        pad = _number(config, "crop", 4, whole=True, upper=MAX_CROP_PAD)
        steps.append(lambda x, g: random_crop(x, g, pad=pad))
    if _on(config, "hflip"):
        p = _number(config, "hflip", 0.5, upper=1.0)
        steps.append(lambda x, g: hflip(x, g, p=p))
    if _on(config, "jitter"):
        s = _number(config, "jitter", 0.2, upper=1.0)
        steps.append(lambda x, g: color_jitter(x, g, s, s, s))

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for step in steps:
            x = step(x, gen)
        return x

    return augment


def _identity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x


def _on(config: dict, key: str) -> bool:
    value = config.get(key, False)
    return value is not None and value is not False and value != 0


def _number(config: dict, key: str, default: float, *, whole: bool = False,
            upper: float | None = None) -> float:
    """The value of an augmentation key: true means the default, else a positive number."""
    value = config[key]
    if value is True:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    ok = ok and (not whole or float(value).is_integer()) and (upper is None or value <= upper)
    if not ok:
        kind = (f"a whole number of pixels up to {upper}" if whole
                else f"a number in (0, {upper}]")
        shown = repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
        raise CnnDslError(f"augment {key} takes true, false or {kind}, got {shown[:80]}")
    return int(value) if whole else float(value)


# --- test-time augmentation -----------------------------------------------------------


def ten_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The ten patches: four corners and the centre, then their mirror images.

    Views 0..4 are top-left, top-right, bottom-left, bottom-right, centre; views 5..9
    are the same patches flipped left-right. Returns V×N×C×h×w.
    """
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        raise CnnDslError(f"ten-crop size {ch}×{cw} is larger than the {h}×{w} images")
    top, left = (h - ch) // 2, (w - cw) // 2
    origins = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (top, left)]
    crops = [x[..., r:r + ch, c:c + cw] for r, c in origins]
    return torch.stack(crops + [c.flip(-1) for c in crops])


def tta_views(x: torch.Tensor, mode: str, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """The views to average predictions over: V×N×C×H×W.

    "none": just x. "flip": x and its mirror. "10crop": ten_crop to `size` (the network
    input; default x's own size). When x already has that size, it is first padded by
    1/8 of its side (reflecting) so the ten crops actually differ.
    """
    if mode not in TTA_MODES:
        raise CnnDslError(f"unknown test-time augmentation '{mode}'{did_you_mean(str(mode), TTA_MODES)}"
                          f"; valid: {', '.join(TTA_MODES)}")
    if mode == "none":
        return x.unsqueeze(0)
    if mode == "flip":
        return torch.stack([x, x.flip(3)])
    h, w = x.shape[-2:]
    ch, cw = (h, w) if size is None else ((size, size) if isinstance(size, int) else size)
    if (ch, cw) == (h, w):
        ph, pw = min(h // 8, h - 1), min(w // 8, w - 1)  # reflect needs pad < side
        x = F.pad(x, (pw, pw, ph, ph), mode="reflect") if ph or pw else x
    return ten_crop(x, (ch, cw))
