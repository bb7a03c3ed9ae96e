"""images.py: decoding one file to uint8 C×H×W, and the ImageNet recipe's per-sample transforms.

Expected values are computed by hand here (Pillow calls with literal sizes, integer
arithmetic), not by calling the helpers under test.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cnndsl.errors import CnnDslError
from cnndsl.training import images
from cnndsl.training.images import IMAGE_SUFFIXES, Recipe, decode, probe, resized_crop_box

EXACT = Recipe(resize_ratio=1.0)   # a square image decoded at its own size: no resampling


def decode_eval(path, channels, size, recipe=EXACT):
    return decode(path, channels, size, train=False, recipe=recipe, seed=0)


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(CnnDslError) as e:
        fn(*args, **kw)
    msg = e.value.message
    assert "\n" not in str(e.value) and "Traceback" not in msg, msg
    return msg


def smooth_rgb(w: int, h: int) -> np.ndarray:
    """A photo-like smooth image (gradients and slow waves), so JPEG and draft are kind."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / w * 6.0)
    g = 255 * y / h
    b = 128 + 90 * np.cos((x + y) / (w + h) * 9.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def test_suffixes():
    assert IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg")


# --- every Pillow mode becomes 8-bit L or RGB ------------------------------------------


@pytest.mark.parametrize("mode, value, grey, rgb", [
    ("RGB", (200, 10, 10), 67, (200, 10, 10)),        # 0.299·200 + 0.587·10 + 0.114·10 = 66.8
    ("L", 77, 77, (77, 77, 77)),
    ("RGBA", (10, 200, 10, 0), 122, (10, 200, 10)),    # alpha dropped, as torchvision's loader
    ("LA", (90, 3), 90, (90, 90, 90)),
])
def test_png_modes_decode_to_uint8(tmp_path, mode, value, grey, rgb):
    path = tmp_path / f"{mode}.png"
    Image.new(mode, (16, 16), value).save(path)
    x3 = decode_eval(path, 3, (16, 16))
    assert x3.dtype == torch.uint8 and x3.shape == (3, 16, 16) and x3.is_contiguous()
    assert x3[:, 5, 7].tolist() == list(rgb) and x3.unique(dim=1).shape[1] == 1
    x1 = decode_eval(path, 1, (16, 16))
    assert x1.dtype == torch.uint8 and x1.shape == (1, 16, 16)
    assert x1.unique().tolist() == [grey]


def test_palette_and_one_bit_pngs(tmp_path):
    pal = Image.new("RGB", (8, 8), (0, 0, 255))
    pal.paste((255, 255, 0), (0, 0, 4, 8))
    pal.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    x = decode_eval(tmp_path / "p.png", 3, (8, 8))
    assert x[:, 0, 0].tolist() == [255, 255, 0] and x[:, 0, 7].tolist() == [0, 0, 255]
    bits = np.zeros((8, 8), dtype=bool)
    bits[::2] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    x = decode_eval(tmp_path / "one.png", 1, (8, 8))
    assert x[0, :, 0].tolist() == [255, 0] * 4


def test_16_bit_greys_are_scaled_by_bit_depth(tmp_path):
    v = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    Image.fromarray(v).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    x = decode_eval(tmp_path / "deep.png", 1, (64, 64))
    expected = (v.astype(np.int64) * 255 + 65535 // 2) // 65535   # round(v · 255 / 65535)
    assert np.array_equal(x[0].numpy(), expected)
    assert x.max() == 255 and x.min() == 0      # not saturated at v = 255 as Pillow's own L
    rgb = decode_eval(tmp_path / "deep.png", 3, (64, 64))
    assert all(torch.equal(rgb[c], x[0]) for c in range(3))


def test_jpeg_rgb_grey_and_cmyk(tmp_path):
    Image.new("RGB", (16, 16), (30, 140, 220)).save(tmp_path / "c.jpg", quality=95)
    Image.new("L", (16, 16), 99).save(tmp_path / "g.JPEG")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "k.jpg")
    assert Image.open(tmp_path / "k.jpg").mode == "CMYK"
    c = decode_eval(tmp_path / "c.jpg", 3, (16, 16)).float().mean(dim=(1, 2))
    assert c.tolist() == pytest.approx([30, 140, 220], abs=3)
    assert decode_eval(tmp_path / "g.JPEG", 1, (16, 16)).float().mean().item() == pytest.approx(99, abs=1)
    k = decode_eval(tmp_path / "k.jpg", 3, (16, 16)).float().mean(dim=(1, 2))
    assert k.tolist() == pytest.approx([255, 0, 0], abs=3)


# --- the eval transform: Resize(round(max(H, W) · 256/224)) + CenterCrop ------------------


def test_eval_is_resize_shorter_side_then_centre_crop(tmp_path):
    a = smooth_rgb(100, 50)
    Image.fromarray(a).save(tmp_path / "wide.png")
    # By hand: 32 · 256/224 = 36.57 -> 37 for the shorter side (50), 100 -> int(37 · 2) = 74;
    # centre crop 32×32 of 74×37: left round(21.0) = 21, top round(2.5) = 2 (half to even).
    src = Image.open(tmp_path / "wide.png").convert("RGB")
    want = src.resize((74, 37), Image.Resampling.BILINEAR).crop((21, 2, 53, 34))
    got = decode(tmp_path / "wide.png", 3, (32, 32), train=False, recipe=Recipe(), seed=5)
    assert got.shape == (3, 32, 32)
    assert torch.equal(got, torch.from_numpy(np.array(want)).permute(2, 0, 1))
    grey = decode(tmp_path / "wide.png", 1, (32, 32), train=False, recipe=Recipe(), seed=5)
    want_grey = src.convert("L").resize((74, 37), Image.Resampling.BILINEAR).crop((21, 2, 53, 34))
    assert torch.equal(grey[0], torch.from_numpy(np.array(want_grey)))


def test_eval_of_a_tall_image_and_a_non_square_target(tmp_path):
    Image.fromarray(smooth_rgb(60, 90)).save(tmp_path / "tall.png")
    # Target 20×30 (H×W): S = round(30 · 256/224) = round(34.29) = 34 for the width (60);
    # height int(34 · 90 / 60) = 51. Crop 30 wide, 20 high: left 2, top round(15.5) = 16.
    src = Image.open(tmp_path / "tall.png")
    want = src.resize((34, 51), Image.Resampling.BILINEAR).crop((2, 16, 32, 36))
    got = decode_eval(tmp_path / "tall.png", 3, (20, 30), recipe=Recipe())
    assert got.shape == (3, 20, 30)
    assert torch.equal(got, torch.from_numpy(np.array(want)).permute(2, 0, 1))


def test_train_without_resized_crop_is_the_eval_transform(tmp_path):
    Image.fromarray(smooth_rgb(70, 40)).save(tmp_path / "x.png")
    ev = decode(tmp_path / "x.png", 3, (24, 24), train=False, recipe=Recipe(), seed=1)
    tr = decode(tmp_path / "x.png", 3, (24, 24), train=True, recipe=Recipe(), seed=1)
    assert torch.equal(ev, tr)


# --- RandomResizedCrop ------------------------------------------------------------------


def test_resized_crop_boxes_obey_scale_and_ratio_and_the_seed():
    boxes = [resized_crop_box(500, 375, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(s))
             for s in range(300)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        # w and h are rounded to whole pixels: the bounds hold to a pixel's worth.
        assert 0.08 * 0.97 <= w * h / (500 * 375) <= 1.0
        assert 3 / 4 * 0.98 <= w / h <= 4 / 3 * 1.02
    assert len(set(boxes)) > 290          # seeds give different crops
    again = resized_crop_box(500, 375, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(7))
    assert again == boxes[7]
    areas = [h * w / (500 * 375) for _, _, h, w in boxes]
    assert min(areas) < 0.15 and max(areas) > 0.9   # the whole scale range is used


def test_resized_crop_falls_back_to_a_centre_crop_clamped_to_the_ratio():
    # 1000×10: no box of area ≥ 8 % with ratio ≤ 4/3 fits in 10 rows, so after ten tries
    # torchvision keeps the full height and the widest allowed ratio, centred:
    # w = round(10 · 4/3) = 13, left = (1000 - 13) // 2 = 493.
    assert resized_crop_box(1000, 10, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(3)) == (0, 493, 10, 13)
    assert resized_crop_box(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(3)) == (493, 0, 13, 10)
    # A full-scale, fixed-ratio crop of an image of that ratio is the whole image.
    assert resized_crop_box(40, 30, (1.0, 1.0), (4 / 3, 4 / 3), random.Random(0)) == (0, 0, 30, 40)


def test_train_decode_is_the_drawn_box_resized(tmp_path):
    Image.fromarray(smooth_rgb(120, 90)).save(tmp_path / "x.png")
    recipe = Recipe(resized_crop=True)
    for seed in (0, 1, 2):
        top, left, h, w = resized_crop_box(120, 90, recipe.scale, recipe.ratio, random.Random(seed))
        src = Image.open(tmp_path / "x.png")
        want = src.crop((left, top, left + w, top + h)).resize((32, 32), Image.Resampling.BILINEAR)
        got = decode(tmp_path / "x.png", 3, (32, 32), train=True, recipe=recipe, seed=seed)
        assert torch.equal(got, torch.from_numpy(np.array(want)).permute(2, 0, 1))


def test_train_decode_depends_only_on_the_seed(tmp_path):
    Image.fromarray(smooth_rgb(120, 90)).save(tmp_path / "x.png")
    recipe = Recipe(resized_crop=True, hflip=0.5)
    run = lambda seed: decode(tmp_path / "x.png", 3, (32, 32), train=True, recipe=recipe, seed=seed)  # noqa: E731
    a, b = run(12345), run(12345)
    assert torch.equal(a, b) and torch.equal(a, run(np.int64(12345)))   # a numpy seed too
    assert sum(not torch.equal(a, run(s)) for s in range(10)) >= 9
    # ... and in another process (a DataLoader worker): the same bytes.
    code = ("import sys, torch; from cnndsl.training.images import decode, Recipe; "
            "x = decode(sys.argv[1], 3, (32, 32), train=True, "
            "recipe=Recipe(resized_crop=True, hflip=0.5), seed=12345); "
            "sys.stdout.write(x.numpy().tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == a.numpy().tobytes().hex()


def test_hflip_mirrors_only_in_training(tmp_path):
    Image.fromarray(smooth_rgb(64, 48)).save(tmp_path / "x.png")
    plain = Recipe(resized_crop=True)
    flip = Recipe(resized_crop=True, hflip=1.0)
    for seed in (4, 5):
        a = decode(tmp_path / "x.png", 3, (24, 24), train=True, recipe=plain, seed=seed)
        b = decode(tmp_path / "x.png", 3, (24, 24), train=True, recipe=flip, seed=seed)
        assert torch.equal(b, a.flip(2)) and not torch.equal(a, b)   # same crop, mirrored
    ev = decode(tmp_path / "x.png", 3, (24, 24), train=False, recipe=flip, seed=4)
    assert torch.equal(ev, decode(tmp_path / "x.png", 3, (24, 24), train=False, recipe=plain, seed=4))
    half = Recipe(resized_crop=True, hflip=0.5)
    flips = sum(torch.equal(decode(tmp_path / "x.png", 3, (24, 24), train=True, recipe=half, seed=s),
                            decode(tmp_path / "x.png", 3, (24, 24), train=True, recipe=flip, seed=s))
                for s in range(40))
    assert 8 <= flips <= 32


# --- JPEG draft (reduced-scale decoding) -------------------------------------------------


@pytest.fixture
def drafts(monkeypatch):
    """The reductions libjpeg was asked for (Pillow's draft), recorded."""
    from PIL import JpegImagePlugin

    seen = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        full = self.size
        done = real(self, mode, size)
        seen.append(full[0] // size[0] if size and done else 1)
        return done

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return seen


def test_draft_eval_is_close_to_the_full_decode(tmp_path, drafts):
    Image.fromarray(smooth_rgb(1600, 1200)).save(tmp_path / "big.jpg", quality=92)
    got = decode_eval(tmp_path / "big.jpg", 3, (224, 224), recipe=Recipe())
    assert drafts == [4]      # 1600×1200 -> 341×256 fits 4 times (1600 // 341 = 4)
    full = Image.open(tmp_path / "big.jpg").convert("RGB")
    # By hand: shorter side 1200 -> 256, 1600 -> int(256 · 4/3) = 341; crop left 58, top 16.
    want = np.asarray(full.resize((341, 256), Image.Resampling.BILINEAR).crop((58, 16, 282, 240)))
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want.astype(int))
    print(f"draft vs full decode: mean |diff| {diff.mean():.3f}, max {diff.max()}")
    # libjpeg's scaled IDCT is a box-like filter, not Pillow's bilinear: close, not equal
    # (measured: mean 0.26, max 2 levels of 255 on this smooth image).
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_draft_train_crop_is_close_and_never_upsamples(tmp_path, drafts):
    Image.fromarray(smooth_rgb(1600, 1200)).save(tmp_path / "big.jpg", quality=92)
    whole = Recipe(resized_crop=True, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
    got = decode(tmp_path / "big.jpg", 3, (224, 224), train=True, recipe=whole, seed=0)
    assert drafts == [4]      # the box is the whole 1600×1200; 1200 // 224 = 5 -> 4
    want = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB")
                      .resize((224, 224), Image.Resampling.BILINEAR))
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want.astype(int))
    print(f"draft crop vs full decode: mean |diff| {diff.mean():.3f}, max {diff.max()}")
    assert diff.mean() < 1.0 and diff.max() <= 8
    # A small box (under twice the output) is decoded at full size: no draft.
    drafts.clear()
    small = Recipe(resized_crop=True, scale=(0.02, 0.02), ratio=(1.0, 1.0))
    decode(tmp_path / "big.jpg", 3, (224, 224), train=True, recipe=small, seed=0)
    assert drafts == []       # a 196×196 box: smaller than 224, must not be reduced


def test_draft_grey_decodes_luma(tmp_path, drafts):
    Image.fromarray(smooth_rgb(900, 900)).save(tmp_path / "big.jpg", quality=92)
    got = decode_eval(tmp_path / "big.jpg", 1, (64, 64), recipe=Recipe())
    assert drafts == [8] and got.shape == (1, 64, 64)
    # Shorter side -> round(64 · 256/224) = 73; centre crop: round(4.5) = 4.
    want = np.asarray(Image.open(tmp_path / "big.jpg").convert("L")
                      .resize((73, 73), Image.Resampling.BILINEAR).crop((4, 4, 68, 68)))
    diff = np.abs(got[0].numpy().astype(int) - want.astype(int))
    print(f"grey draft vs full decode: mean |diff| {diff.mean():.3f}, max {diff.max()}")
    assert diff.mean() < 1.0 and diff.max() <= 8


# --- probe --------------------------------------------------------------------------------


def test_probe_reads_only_the_header(tmp_path):
    Image.fromarray(smooth_rgb(300, 200)).save(tmp_path / "x.jpg")
    data = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])   # the pixels are truncated
    assert probe(tmp_path / "x.jpg") == (300, 200)
    assert probe(str(tmp_path / "cut.jpg")) == (300, 200)
    msg = error_of(decode_eval, tmp_path / "cut.jpg", 3, (8, 8))
    assert msg.startswith(f"cannot read image '{tmp_path / 'cut.jpg'}': ") and "truncated" in msg


# --- hostile files ------------------------------------------------------------------------


def test_corrupt_empty_and_missing_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG\n" * 10)
    assert error_of(decode_eval, tmp_path / "broken.png", 3, (8, 8)).startswith(
        f"cannot read image '{tmp_path / 'broken.png'}': ")
    assert error_of(decode_eval, tmp_path / "empty.png", 3, (8, 8)) == (
        f"cannot read image '{tmp_path / 'empty.png'}': the file is empty")
    assert error_of(decode_eval, tmp_path / "text.jpg", 3, (8, 8)) == (
        f"cannot read image '{tmp_path / 'text.jpg'}': not an image format Pillow can identify")
    assert error_of(probe, tmp_path / "empty.png").startswith("cannot read image")
    msg = error_of(decode_eval, tmp_path / "gone.png", 3, (8, 8))
    assert msg.startswith(f"cannot read '{tmp_path / 'gone.png'}'") and "No such file" in msg


def test_fifo_device_and_folder_are_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "dir.png").mkdir()
    found = {}

    def attempt():   # in a thread: if the FIFO were opened for a blocking read, it would hang
        for name in ("pipe.png", "zero.png", "dir.png"):
            try:
                decode_eval(tmp_path / name, 3, (8, 8))
            except CnnDslError as e:
                found[name] = e.message

    start = time.monotonic()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "decode blocked on a FIFO"
    assert time.monotonic() - start < 5
    for name, kind in (("pipe.png", "FIFO"), ("zero.png", "character device"), ("dir.png", "directory")):
        assert found[name] == (f"'{tmp_path / name}' is not a regular file (a {kind}): cnndsl "
                               "reads data only from regular files")


def test_open_regular_follows_symlinks_to_regular_files(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert decode_eval(tmp_path / "link.png", 1, (4, 4)).unique().tolist() == [200]
    with images.open_regular(str(tmp_path / "real.png")) as f:
        assert f.read(4) == b"\x89PNG"


def test_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    Image.new("L", (20, 20), 1).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)    # 400 > 300: our own check
    assert images.max_pixels() == 300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        msg = error_of(decode_eval, tmp_path / "big.png", 1, (4, 4))
        assert msg == (f"image '{tmp_path / 'big.png'}' is 20×20 = 400 pixels, more than the "
                       "300 cnndsl reads (a decompression bomb?)")
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # 400 > 2 · 100: Pillow refuses
        msg = error_of(decode_eval, tmp_path / "big.png", 1, (4, 4))
        assert msg.startswith(f"cannot read image '{tmp_path / 'big.png'}': ") and "exceeds" in msg


def test_bad_arguments(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "x.png")
    assert "1 or 3 channels" in error_of(decode_eval, tmp_path / "x.png", 2, (4, 4))
    assert "positive size" in error_of(decode_eval, tmp_path / "x.png", 1, (0, 4))


# --- Recipe.from_augment ------------------------------------------------------------------


def test_recipe_from_augment_parses():
    # Without resized_crop nothing is cropped away: the shorter side goes to the target's.
    plain = Recipe(resize_ratio=1.0)
    assert Recipe.from_augment({}) == plain and Recipe.from_augment(None) == plain
    assert Recipe.from_augment({"hflip": True, "crop": 4, "jitter": 0.2, "affine": True}) == plain
    assert Recipe.from_augment({"resized_crop": False}) == plain
    on = Recipe.from_augment({"resized_crop": True, "hflip": True})
    assert on.resized_crop and on.scale == (0.08, 1.0) and on.ratio == (0.75, 4 / 3)
    assert on.hflip == 0.0    # hflip stays a batch augmentation
    custom = Recipe.from_augment({"resized_crop": {"scale": [0.35, 1], "ratio": [0.5, 2.0]}})
    assert custom == Recipe(resized_crop=True, scale=(0.35, 1.0), ratio=(0.5, 2.0))
    assert Recipe.from_augment({"resized_crop": {}}) == Recipe(resized_crop=True)


@pytest.mark.parametrize("value, words", [
    (3, "takes true, false or a mapping"),
    ("yes", "takes true, false or a mapping"),
    ({"sclae": [0.1, 1]}, "unknown key 'sclae'"),
    ({"scale": [0.5, 0.2]}, "scale must be [low, high] with 0 < low <= high <= 1"),
    ({"scale": [0, 1]}, "scale must be"),
    ({"scale": [0.1, 1.5]}, "scale must be"),
    ({"scale": 0.5}, "takes two numbers"),
    ({"scale": [0.1, 0.5, 1]}, "takes two numbers"),
    ({"scale": [True, 1]}, "takes two numbers"),
    ({"ratio": [float("nan"), 1]}, "takes two numbers"),
    ({"ratio": [2, 1]}, "ratio must be [low, high] with 0 < low <= high"),
    ({"ratio": [-1, 1]}, "ratio must be"),
])
def test_recipe_from_augment_refuses_bad_values(value, words):
    msg = error_of(Recipe.from_augment, {"resized_crop": value})
    assert words in msg


def test_recipe_fields_are_checked():
    assert "augment must be a mapping" in error_of(Recipe.from_augment, ["resized_crop"])
    assert "resize_ratio" in error_of(Recipe, resize_ratio=0.5)
    assert "hflip" in error_of(Recipe, hflip=1.5)
    assert Recipe(resize_ratio=1.0).resize_ratio == 1.0
