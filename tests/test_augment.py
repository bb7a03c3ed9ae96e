"""Augmentation and test-time augmentation on small batches."""
from __future__ import annotations

import pytest
import torch

from cnndsl.training.augment import (build_augment, color_jitter, hflip, random_affine, random_crop,
                            ten_crop, tta_views)
from cnndsl.errors import CnnDslError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(6, 3, 16, 12, generator=gen(123))


AUGS = [
    lambda x, g: hflip(x, g),
    lambda x, g: random_crop(x, g, pad=3),
    lambda x, g: color_jitter(x, g),
    lambda x, g: random_affine(x, g),
    build_augment({"hflip": True, "crop": 4, "jitter": 0.2, "affine": True}),
]


@pytest.mark.parametrize("aug", AUGS)
def test_shape_range_and_determinism(x, aug):
    a, b = aug(x, gen(7)), aug(x, gen(7))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    c = aug(x, gen(8))
    assert not torch.equal(a, c)


def test_hflip_probabilities(x):
    assert torch.equal(hflip(x, gen(), p=1.0), torch.flip(x, [3]))
    assert torch.equal(hflip(x, gen(), p=0.0), x)
    out = hflip(x, gen(3), p=0.5)
    for i in range(len(x)):  # each sample is either itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))


def test_random_crop(x):
    assert torch.equal(random_crop(x, gen(), pad=0), x)
    out = random_crop(x, gen(1), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # every output is some window of the zero-padded image
        windows = [padded[i, :, r:r + 16, c:c + 12] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_jitter_and_affine_identity_settings(x):
    assert torch.allclose(color_jitter(x, gen(), 0.0, 0.0, 0.0), x, atol=1e-6)
    ident = random_affine(x, gen(), degrees=0, translate=0, scale=(1.0, 1.0))
    assert torch.allclose(ident, x, atol=1e-5)
    grey = torch.rand(4, 1, 8, 8, generator=gen())
    assert color_jitter(grey, gen()).shape == grey.shape


def test_build_augment_config():
    t = torch.rand(2, 1, 8, 8)
    assert build_augment(None)(t, gen()) is t
    assert build_augment({})(t, gen()) is t
    assert torch.equal(build_augment({"hflip": 1.0})(t, gen()), t.flip(3))
    assert torch.equal(build_augment({"hflip": False, "crop": 0})(t, gen()), t)
    with pytest.raises(CnnDslError, match="did you mean 'hflip'"):
        build_augment({"hfilp": True})
    with pytest.raises(CnnDslError, match="crop"):
        build_augment({"crop": 2.5})
    with pytest.raises(CnnDslError, match="jitter"):
        build_augment({"jitter": "lots"})
    # Hostile sizes are refused before anything is allocated (a 1e300-pixel pad would be).
    with pytest.raises(CnnDslError, match="up to 1024"):
        build_augment({"crop": 1e300})
    with pytest.raises(CnnDslError, match=r"got list"):
        build_augment({"crop": [1] * 10_000})


def test_ten_crop_views():
    x = torch.arange(2 * 1 * 6 * 7, dtype=torch.float32).view(2, 1, 6, 7)
    v = ten_crop(x, 4)
    assert v.shape == (10, 2, 1, 4, 4)
    assert torch.equal(v[0], x[..., 0:4, 0:4])  # top-left
    assert torch.equal(v[1], x[..., 0:4, 3:7])  # top-right
    assert torch.equal(v[2], x[..., 2:6, 0:4])  # bottom-left
    assert torch.equal(v[3], x[..., 2:6, 3:7])  # bottom-right
    assert torch.equal(v[4], x[..., 1:5, 1:5])  # centre
    for i in range(5):
        assert torch.equal(v[5 + i], v[i].flip(3))
    with pytest.raises(CnnDslError):
        ten_crop(x, 8)


def test_tta_views(x):
    assert torch.equal(tta_views(x, "none"), x[None])
    f = tta_views(x, "flip")
    assert f.shape == (2, *x.shape) and torch.equal(f[1], x.flip(3))
    v = tta_views(x, "10crop")
    assert v.shape == (10, *x.shape)
    assert all(not torch.equal(v[i], v[j]) for i in range(10) for j in range(i))
    # the centre view of the padded image is the image itself
    assert torch.equal(v[4], x)
    big = torch.rand(2, 3, 20, 20)
    assert tta_views(big, "10crop", size=16).shape == (10, 2, 3, 16, 16)
    with pytest.raises(CnnDslError, match="did you mean '10crop'"):
        tta_views(x, "10crops")
