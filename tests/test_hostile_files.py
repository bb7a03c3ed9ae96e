"""Hostile data files and checkpoints: none may choose where we write, exhaust memory,
hang us or run code.

Every check that reads a hostile file runs in a subprocess under an address-space limit
(`MARGIN` beyond what the imports map, far below what the bombs would inflate to) and a timeout, so a regression fails
fast with a MemoryError or a timeout instead of taking the machine down. Each asserts
the exit status, no traceback, and a one-line message that says what is wrong.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.training import checkpoint, limits
from helpers import memory_limit_prelude

ROOT = Path(__file__).resolve().parent.parent
# Address space beyond what `import torch, cnndsl` maps (`cnndsl eval` of a tiny net needs
# ~0.3 GiB more). The bombs below would need more than 4 GB.
MARGIN = 2 ** 30
TIMEOUT = 120
BOMB_BYTES = 4_400_000_000
MiB = 2 ** 20

PRELUDE = memory_limit_prelude(MARGIN)

# As the CLI does (cli.main): a CnnDslError is its message on stderr and exit status 2.
LOAD_DATA = """\
from cnndsl.errors import CnnDslError
from cnndsl.training.data import load_data
try:
    ds = load_data(SOURCE, SHAPE, val_fraction=0.0)
except CnnDslError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
print("loaded", len(ds.train_x) + len(ds.test_x))
"""


def limited(code: str, *, cwd=None, env=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python under the memory limit and a timeout."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2", **(env or {})}
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess, *words: str, status: int = 2) -> str:
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == status, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count("\n") == 1 and len(r.stderr) < 600, r.stderr[-2000:]
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def load_data_in_child(source: str, shape=(1, 28, 28), **kw) -> subprocess.CompletedProcess:
    return limited(f"SOURCE, SHAPE = {source!r}, {tuple(shape)!r}\n" + LOAD_DATA, **kw)


# --- 1. decompression bombs ---------------------------------------------------------------


def idx_header(dims) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def write_gzip_bomb(path: Path, head: bytes, zeros: int) -> None:
    """`head` and then `zeros` zero bytes, gzipped into ~1 KB per MiB: one gzip member per
    MiB of zeros (all the same bytes), written one at a time to keep this test small."""
    member = gzip.compress(bytes(MiB), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(zeros // MiB):
            f.write(member)


def write_small_mnist(d: Path) -> None:
    rng = np.random.default_rng(0)
    for name, shape in (("train-images-idx3-ubyte", (12, 28, 28)), ("train-labels-idx1-ubyte", (12,)),
                        ("t10k-images-idx3-ubyte", (5, 28, 28)), ("t10k-labels-idx1-ubyte", (5,))):
        arr = rng.integers(0, 10 if "labels" in name else 256, shape, dtype=np.uint8)
        (d / name).write_bytes(idx_header(arr.shape) + arr.tobytes())


def test_gzip_bomb_whose_header_claims_gigabytes_is_refused_before_inflating(tmp_path):
    write_small_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    n = BOMB_BYTES // (28 * 28)                  # 5.6 million 28×28 images: 4.4 GB
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    write_gzip_bomb(bomb, idx_header((n, 28, 28)), BOMB_BYTES)
    assert bomb.stat().st_size < 6_000_000
    r = load_data_in_child(f"mnist:{tmp_path}", timeout=60)
    one_line_error(r, "train-images-idx3-ubyte.gz", "need 4.1 GiB", "CNNDSL_MAX_DATA_BYTES")


def test_gzip_bomb_behind_a_small_header_is_read_only_as_far_as_the_header_says(tmp_path):
    write_small_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    write_gzip_bomb(bomb, idx_header((12, 28, 28)) + bytes(12 * 28 * 28), BOMB_BYTES)
    r = load_data_in_child(f"mnist:{tmp_path}", timeout=60)
    one_line_error(r, "train-images-idx3-ubyte.gz", "longer than its header says")


@pytest.mark.parametrize("dims, words", [
    ((20_000_000, 1, 1), "beyond cnndsl's limits"),      # too many items
    ((10, 100_000, 2), "beyond cnndsl's limits"),        # a dimension too large
    ((4000, 1000, 1000), "more than the 2.0 GiB"),       # 4 GB in all
])
def test_idx_header_limits(tmp_path, dims, words):
    write_small_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_header(dims) + bytes(100))
    r = load_data_in_child(f"mnist:{tmp_path}", timeout=60)
    one_line_error(r, "train-images-idx3-ubyte", words)


def test_data_budget_can_be_set(tmp_path):
    write_small_mnist(tmp_path)
    r = load_data_in_child(f"mnist:{tmp_path}", env={"CNNDSL_MAX_DATA_BYTES": "1000"})
    one_line_error(r, "train-images-idx3-ubyte", "more than the 1000 B")
    r = load_data_in_child(f"mnist:{tmp_path}")
    assert r.returncode == 0 and "loaded 17" in r.stdout, r.stderr


def write_zip_bomb(path: Path, inflated: int = BOMB_BYTES) -> None:
    """A torch-style zip whose archive/data.pkl is `inflated` zero bytes, deflated (zip64).

    The deflate stream is one flushed 1 MiB block of zeros repeated (~1 KB each), so the
    file is ~4 MB and is written without compressing gigabytes; its CRC is the real one.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    n = inflated // MiB
    inflated = n * MiB
    crc, zeros = 0, bytes(64 * MiB)
    for _ in range(n // 64):
        crc = zlib.crc32(zeros, crc)
    for _ in range(n % 64):
        crc = zlib.crc32(zeros[:MiB], crc)
    compressed = len(block) * n + len(tail)
    name, extra = b"archive/data.pkl", struct.pack("<HHQQ", 1, 16, inflated, compressed)
    version = b"3\n"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc,
                            0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra)) + name + extra)
        for _ in range(n):
            f.write(block)
        f.write(tail)
        second = f.tell()
        vname = b"archive/version"
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, zlib.crc32(version),
                            len(version), len(version), len(vname), 0) + vname + version)
        central = f.tell()
        f.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc,
                            0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, 0)
                + name + extra)
        f.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21,
                            zlib.crc32(version), len(version), len(version), len(vname),
                            0, 0, 0, 0, 0, second) + vname)
        size = f.tell() - central
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 2, 2, size, central, 0))


def test_zip_bomb_checkpoint_is_refused_before_torch_load(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.pt"
    write_zip_bomb(bomb)
    assert bomb.stat().st_size < 6_000_000
    with zipfile.ZipFile(bomb) as z:            # a well-formed zip: its sizes are what it says
        assert z.getinfo("archive/data.pkl").file_size > 4 * 10 ** 9
        with z.open("archive/data.pkl") as m:
            assert m.read(MiB) == bytes(MiB)
    r = limited(f"from cnndsl.cli import main\nsys.exit(main(['eval', {str(bomb)!r}]))",
                cwd=tmp_path, timeout=60)
    one_line_error(r, "bomb.pt", "archive/data.pkl", "100:1")
    r = limited(f"from cnndsl.cli import main\nsys.exit(main(['eval', {str(bomb)!r}]))",
                cwd=tmp_path, timeout=60, env={"CNNDSL_MAX_CHECKPOINT_BYTES": str(2 ** 30)})
    one_line_error(r, "bomb.pt", "would inflate to 4.1 GiB", "CNNDSL_MAX_CHECKPOINT_BYTES")


def test_checkpoint_budget_applies_to_every_load(tmp_path, monkeypatch):
    torch.save({"conv1.weight": torch.zeros(100, 100)}, tmp_path / "w.pt")
    monkeypatch.setenv("CNNDSL_MAX_CHECKPOINT_BYTES", "10000")
    with pytest.raises(CnnDslError, match="more than the 9.8 KiB a checkpoint may hold"):
        checkpoint.load_weights_file(tmp_path / "w.pt")
    monkeypatch.delenv("CNNDSL_MAX_CHECKPOINT_BYTES")
    assert list(checkpoint.load_weights_file(tmp_path / "w.pt")) == ["conv1.weight"]


# --- 2. checkpoint contents ----------------------------------------------------------------

TINY = "INPUT(1, 8, 8) -> conv1: CONV3-4 -> RELU -> POOL -> FC-10"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile_ckpt")
    assert main(["train", TINY, "--limit", "60", "--epochs", "1", "--out", str(folder / "run")]) == 0
    return folder / "run" / "last.pt"


def alias_bomb(depth: int = 30, fan: int = 10):
    """10**30 lists if expanded, a few hundred bytes pickled (shared references): str() or
    a walk of it never ends."""
    x: list = []
    for _ in range(depth):
        x = [x] * fan
    return x


def edits(state: dict) -> dict:
    """Case name → (the damaged state, words its one-line error must hold)."""
    bomb = alias_bomb()
    cfg = state["config"]
    return {
        "epoch_str": ({**state, "epoch": "x"}, "epoch is str, expected int"),
        "epoch_bool": ({**state, "epoch": True}, "epoch is bool, expected int"),
        "config_list": ({**state, "config": [1, 2]}, "config is list, expected dict"),
        "config_value": ({**state, "config": {**cfg, "epochs": "x"}}, "config.epochs is str and not a valid setting"),
        "config_key": ({**state, "config": {**cfg, "bogus": 1}}, "config.bogus is not a setting"),
        "config_nested": ({**state, "config": {**cfg, "lr": {"a": 1}}}, "config.lr is dict, expected a plain value"),
        "normalize_int": ({**state, "normalize": 3}, "normalize is int, expected dict"),
        "normalize_len": ({**state, "normalize": {"mean": torch.zeros(5), "std": torch.ones(5)}},
                          "normalize.mean is a torch.float32 tensor of 5 values, expected 1 floats"),
        "normalize_zero": ({**state, "normalize": {"mean": torch.zeros(1), "std": torch.zeros(1)}},
                           "normalize.std holds non-positive"),
        "class_names_dict": ({**state, "class_names": {"a": 1}}, "class_names is dict, expected list"),
        "class_names_int": ({**state, "class_names": ["a", 3]}, "class_names[1] is int, expected str"),
        "model_str": ({**state, "model": "str"}, "model is str, expected dict"),
        "model_value": ({**state, "model": {**state["model"], "conv1.weight": [1.0]}},
                        "model.conv1.weight is list, expected Tensor"),
        "model_huge_view": ({**state, "model": {**state["model"],
                                                "conv1.weight": torch.zeros(1).expand(2 ** 40)}},
                            "model.conv1.weight is a tensor of 4,398,046,511,104 bytes"),
        "optimizer_lr": ({**state, "optimizer": {**state["optimizer"], "param_groups": [
            {**state["optimizer"]["param_groups"][0], "lr": "x"}]}},
            "optimizer.param_groups[0].lr is str, expected a number"),
        "optimizer_list": ({**state, "optimizer": []}, "optimizer is list, expected dict"),
        "input_shape": ({**state, "input_shape": [1, 8]}, "input_shape has 2 entries"),
        "best_str": ({**state, "best": "x"}, "best is str, expected dict or None"),
        "elapsed": ({**state, "elapsed": {"seconds": "1"}}, "elapsed.seconds is str, expected a number"),
        "rng": ({**state, "rng": {**state["rng"], "torch": "x"}}, "rng.torch is str, expected Tensor"),
        "scheduler": ({**state, "scheduler": None}, "scheduler is NoneType, expected dict"),
        "spec_name": ({**state, "spec": {**state["spec"], "name": ["x"]}}, "spec.name is list, expected str"),
        "version_str": ({**state, "version": "1"}, "checkpoint version of type str"),
        "version_huge": ({**state, "version": 2 ** 70}, "checkpoint version of type int"),
        # Alias bombs: the message names the type; str() of them would never end.
        "bomb_epoch": ({**state, "epoch": bomb}, "epoch is list, expected int"),
        "bomb_class_names": ({**state, "class_names": bomb}, "class_names[0] is list, expected str"),
        "bomb_config": ({**state, "config": {**cfg, "data": bomb}}, "config.data is list, expected a plain value"),
        "bomb_version": ({**state, "version": bomb}, "checkpoint version of type list"),
        "bomb_best": ({**state, "best": {"metric": "val_acc", "value": bomb}}, "best.value is list"),
        "bomb_spec_text": ({**state, "spec": {**state["spec"], "text": bomb}}, "spec.text is list, expected str"),
        "bomb_format": ({**state, "format": bomb}, "not a cnndsl checkpoint (it holds format, version"),
        "bomb_optimizer": ({**state, "optimizer": {"state": {0: {"momentum_buffer": bomb}},
                                                   "param_groups": []}},
                           "optimizer.state[0].momentum_buffer is list, expected a number"),
    }


@pytest.fixture(scope="module")
def damaged(good, tmp_path_factory) -> dict:
    """Every damaged checkpoint through `cnndsl eval`, in one memory-limited subprocess."""
    folder = tmp_path_factory.mktemp("damaged")
    state = checkpoint.load(good)
    cases = edits(state)
    for name, (bad, _) in cases.items():
        torch.save(bad, folder / f"{name}.pt")
    code = f"""\
        import contextlib, io, json
        from cnndsl.cli import main
        results = {{}}
        for name in {sorted(cases)!r}:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                status = main(["eval", {str(folder)!r} + "/" + name + ".pt"])
            results[name] = [status, err.getvalue() + out.getvalue()]
        print(json.dumps(results))
        """
    r = limited(code, cwd=folder, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return {"results": json.loads(r.stdout), "cases": cases}


def _case_names() -> list[str]:
    state = {"config": {}, "model": {}, "optimizer": {"param_groups": [{}]}, "rng": {}, "spec": {}}
    return sorted(edits(state))


@pytest.mark.parametrize("name", _case_names())
def test_damaged_checkpoint_is_one_line_naming_the_field(damaged, name):
    status, err = damaged["results"][name]
    words = damaged["cases"][name][1]
    assert status == 2 and err.count("\n") == 1 and words in err, err
    assert len(err) < 400 and "Traceback" not in err


def test_the_good_checkpoint_still_loads_and_evaluates(good, capsys):
    assert main(["eval", str(good)]) == 0
    assert capsys.readouterr().out.startswith("test (digits, 899 images")


def test_spec_text_of_another_type_is_never_str_ed():
    with pytest.raises(CnnDslError, match="spec.text is list, expected str"):
        checkpoint.spec_of({"spec": {"text": alias_bomb(), "name": "x", "suffix": "", "path": "p"}})


def test_bare_state_dict_keeps_only_named_tensors():
    weights = {"a": torch.zeros(2), ("t",): torch.zeros(2), "b": alias_bomb(), "c": torch.zeros(1).expand(2 ** 40)}
    assert list(checkpoint.state_dict_of(weights)) == ["a"]


# --- 3. features never writes over the checkpoint -------------------------------------------


def test_features_refuses_to_write_over_its_checkpoint(good, tmp_path, capsys):
    before = good.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(good)
    for out in (good, link, good.parent / ".." / good.parent.name / good.name):
        assert main(["features", str(good), "--layer", "conv1", "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is the checkpoint" in err and err.count("\n") == 1
    assert good.read_bytes() == before


def test_features_overwrites_other_files_only_when_asked(good, tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "f.npz"      # missing folders are created, as before
    assert main(["features", str(good), "--layer", "conv1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["features", str(good), "--layer", "conv1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists: add --overwrite" in err and err.count("\n") == 1
    assert main(["features", str(good), "--layer", "conv1", "--out", str(out), "--overwrite"]) == 0
    (tmp_path / "d.npz").mkdir()
    assert main(["features", str(good), "--layer", "conv1", "--out", str(tmp_path / "d.npz"),
                 "--overwrite"]) == 2
    assert "is a folder" in capsys.readouterr().err


# --- 4. 16-bit PNGs -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 6, 6)])
def test_16_bit_pngs_are_scaled_by_their_bit_depth(tmp_path, shape):
    from cnndsl.training.data import load_data

    for cls, value in (("a", 1000), ("b", 30000)):
        for i in range(3):
            (tmp_path / cls).mkdir(exist_ok=True)
            im = Image.fromarray(np.full((6, 6), value, dtype=np.uint16))
            assert im.mode == "I;16"
            im.save(tmp_path / cls / f"{i}.png")
    ds = load_data(f"folder:{tmp_path}", shape, val_fraction=0.0)
    x, y = torch.cat([ds.train_x, ds.test_x]), torch.cat([ds.train_y, ds.test_y])
    # Decoded images are 8-bit (uint8, as every folder is held): within one step of 255.
    assert x[y == 0].unique().tolist() == pytest.approx([1000 / 65535], abs=0.5 / 255)
    assert x[y == 1].unique().tolist() == pytest.approx([30000 / 65535], abs=0.5 / 255)


@pytest.mark.parametrize("mode, value, expected", [("1", 1, 1.0), ("P", 7, None), ("LA", (128, 5), 128 / 255)])
def test_other_modes_still_read(tmp_path, mode, value, expected):
    from cnndsl.training.data import load_data

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new(mode, (4, 4), value).save(tmp_path / cls / "x.png")
        Image.new(mode, (4, 4), value).save(tmp_path / cls / "y.png")
    ds = load_data(f"folder:{tmp_path}", (1, 4, 4), val_fraction=0.0)
    if expected is not None:
        assert ds.train_x.unique().tolist() == pytest.approx([expected], abs=1e-6)


# --- 5. FIFOs and devices ----------------------------------------------------------------------


def test_a_fifo_in_a_class_folder_is_refused_not_read(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", (4, 4), 9).save(tmp_path / cls / "ok.png")
    os.mkfifo(tmp_path / "a" / "x.png")
    r = load_data_in_child(f"folder:{tmp_path}", (1, 4, 4), timeout=60)
    one_line_error(r, "x.png", "not a regular file (a FIFO)")


def test_a_link_to_a_device_is_refused(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", (4, 4), 9).save(tmp_path / cls / "ok.png")
    (tmp_path / "b" / "zero.png").symlink_to("/dev/zero")
    r = load_data_in_child(f"folder:{tmp_path}", (1, 4, 4), timeout=60)
    one_line_error(r, "zero.png", "not a regular file (a character device)")


def test_a_fifo_as_checkpoint_or_idx_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "ckpt.pt")
    r = limited(f"from cnndsl.cli import main\nsys.exit(main(['eval', {str(tmp_path / 'ckpt.pt')!r}]))",
                timeout=60)
    one_line_error(r, "ckpt.pt", "not a regular file")
    write_small_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    os.mkfifo(tmp_path / "t10k-labels-idx1-ubyte")
    r = load_data_in_child(f"mnist:{tmp_path}", timeout=60)
    one_line_error(r, "t10k-labels-idx1-ubyte")


# --- 6. a network too large for the machine -------------------------------------------------


def test_check_memory_refuses_a_layer_too_large_to_allocate():
    import cnndsl

    analysis = cnndsl.parse("INPUT(1,8,8) -> FC-1000000000000").analyze()
    with pytest.raises(CnnDslError) as e:
        limits.check_memory(analysis)
    msg = e.value.message
    assert "65,000,000,000,000 parameters" in msg and "bytes" in msg and "\n" not in msg
    with pytest.raises(CnnDslError, match="more than the 1.0 GiB"):
        limits.check_memory(analysis, 2 ** 30, optimizer_states=0)
    small = cnndsl.parse("INPUT(1,8,8) -> FC-10").analyze()
    limits.check_memory(small, 10 ** 6)              # 650 weights: fits
    with pytest.raises(CnnDslError):
        limits.check_memory(small, 100)


def test_eval_of_a_checkpoint_whose_spec_is_too_large(good, tmp_path):
    import hashlib

    state = checkpoint.load(good)
    text = "INPUT(1,8,8) -> FC-1000000000000\n"
    state["spec"] = {**state["spec"], "text": text, "digest": hashlib.sha256(text.encode()).hexdigest()}
    torch.save(state, tmp_path / "huge.pt")
    r = limited(f"from cnndsl.cli import main\nsys.exit(main(['eval', {str(tmp_path / 'huge.pt')!r}]))",
                timeout=120)
    one_line_error(r, "too large for this machine", "65,000,000,000,000 parameters")
