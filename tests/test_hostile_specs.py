"""Hostile specs: input built to exhaust memory or time, or to crash, gets a diagnostic.

Every check runs in a child process whose address space is capped at 1 GiB
(RLIMIT_AS), so a regression fails fast (a MemoryError, a timeout) instead of taking
the machine down. What must hold: the exit status, no traceback on stderr, and a
message that says what is wrong, in a few lines.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 1 << 30  # bytes of address space for the child

_PRELUDE = f"""\
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))
"""

_CLI = _PRELUDE + """\
from cnndsl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(code: str, args, cwd: Path, timeout: int = 60) -> tuple[int, str, str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env, encoding="utf-8")
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def analyze(cwd: Path, *args: str, timeout: int = 60) -> tuple[int, str, str, float]:
    """`cnndsl analyze ARGS` in a child capped at 1 GiB: (status, stdout, stderr, seconds)."""
    return _run(_CLI, ["analyze", *args], cwd, timeout)


def python(cwd: Path, code: str, timeout: int = 60) -> tuple[int, str, str, float]:
    """Python code in a child capped at 1 GiB."""
    return _run(_PRELUDE + code, [], cwd, timeout)


def _clean(err: str, limit: int = 2000) -> None:
    assert "Traceback" not in err and "MemoryError" not in err, err[-3000:]
    assert len(err.encode()) < limit, err[:3000]


def _head(err: str) -> str:
    return err.splitlines()[0]


def test_a_small_spec_fits_under_the_limit(tmp_path):
    status, out, err, _ = analyze(tmp_path, "INPUT(3, 32, 32) -> (CONV3-8 -> RELU)*4 -> POOL -> FC-10")
    assert status == 0, err
    assert "params" in out and "Traceback" not in err
    status, out, err, _ = analyze(tmp_path, "resnet50", "--depth", "1")
    assert status == 0, err


# --- 1. YAML alias bombs --------------------------------------------------------------

def _bomb(levels: int = 9) -> str:
    """A flow list holding 10**levels strings through nested aliases (~600 bytes)."""
    parts = ['&a0 [' + ",".join(['"lol"'] * 10) + "]"]
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


NET = 'net: "INPUT(3, 8, 8) -> CONV3-4 -> RELU"\n'


@pytest.mark.parametrize("where, text", [
    ("description", f"description: {_bomb()}\n" + NET),
    ("name", f"name: {_bomb()}\n" + NET),
    ("fit", f"fit: {_bomb()}\n" + NET),
    ("input", f"input: {_bomb()}\n" + NET),
    ("train.data", NET + f"train:\n  data: {_bomb()}\n"),
    ("train.optimizer.name", NET + f"train:\n  optimizer:\n    name: {_bomb()}\n"),
    ("train.deep", NET + f"train:\n  schedule:\n    x:\n      - {_bomb()}\n"),
    ("key", NET + f"train:\n  ? {_bomb()}\n  : 1\n"),
])
def test_yaml_alias_bombs_are_refused_at_the_alias(tmp_path, where, text):
    assert len(text) < 800
    (tmp_path / "bomb.yaml").write_text(text, encoding="utf-8")
    status, out, err, seconds = analyze(tmp_path, "bomb.yaml")
    _clean(err)
    assert status == 1 and out == ""
    line, col = map(int, re.match(r"bomb\.yaml:(\d+):(\d+): error: ", err).groups())
    assert "more than 100,000 values once its aliases are expanded" in _head(err)
    # The caret is under an alias.
    assert text.splitlines()[line - 1][col - 1] == "*"
    assert seconds < 30


@pytest.mark.parametrize("key", ["name", "description", "fit"])
def test_an_alias_to_a_list_where_one_value_is_expected(tmp_path, key):
    text = NET + f"train:\n  data: &big [{', '.join(['lol'] * 50)}]\n{key}: *big\n"
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    status, _, err, _ = analyze(tmp_path, "s.yaml")
    _clean(err)
    assert status == 1
    assert _head(err) == f"s.yaml:4:{len(key) + 3}: error: `{key}:` is one value, not a list"


def test_a_recursive_alias_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text(NET + "train: &t\n  x: *t\n", encoding="utf-8")
    status, _, err, _ = analyze(tmp_path, "s.yaml")
    _clean(err)
    assert status == 1 and _head(err).startswith("s.yaml:3:6: error: the alias '*t' stands inside")


def test_aliases_of_plain_values_still_work(tmp_path):
    text = ("name: &n small\ndescription: *n\ninput: [&c 3, 8, 8]\n"
            "net: CONV3-4 -> RELU\ntrain:\n  epochs: &e 3\n  batch_size: *e\n")
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    status, out, err, _ = python(tmp_path, "import cnndsl\ns = cnndsl.load('s.yaml')\n"
                                           "print(s.name, s.description, s.train, s.analyze().ok)")
    assert status == 0, err
    assert out.split("\n")[0] == "small small {'epochs': 3, 'batch_size': 3} True"


# --- 2. numbers too long to read or print -----------------------------------------------

BIG = "9" * 5000


@pytest.mark.parametrize("text", [
    f"INPUT(3, 8, 8) -> CONV3-{BIG}",
    f"INPUT(3, 8, 8) -> CONV{BIG}-8",
    f"INPUT(3, 8, 8) -> CONV3x{BIG}-8",
    f"INPUT[8x8x{BIG}] -> RELU",
    f"INPUT(3, {BIG}, 8) -> RELU",
    f"INPUT(3, 8, 8) -> RELU*{BIG}",
    f"INPUT(3, 8, 8) -> CONV3-8(pad={BIG})",
    f"INPUT(3, 8, 8) -> DROPOUT(-{BIG})",
    f"INPUT(3, 8, 8) -> CONV{{{BIG} + 1}}-8",
], ids=["head", "head-size", "head-size-2", "dims", "input", "repeat", "option", "negative", "brace"])
def test_a_huge_number_in_the_dsl_is_refused_where_it_is(tmp_path, text):
    status, out, err, _ = analyze(tmp_path, text)
    _clean(err)
    assert status == 1 and out == ""
    col = text.index(BIG) + 1
    assert _head(err) == f"<inline>:1:{col}: error: a number with 5,000 digits is too large (at most 50 digits)"


def test_numbers_up_to_the_digit_limit_are_read(tmp_path):
    fifty = "9" * 50
    status, _, err, _ = python(tmp_path, f"import cnndsl\nprint(cnndsl.parse('INPUT(3,8,8) -> CONV3-8(pad={fifty})').analyze().ok)")
    assert status == 0 and "Traceback" not in err


@pytest.mark.parametrize("text", [
    f"input: [3, {BIG}, 32]\n" + NET,
    NET + f"train:\n  epochs: {BIG}\n",
    f"name: {BIG}\n" + NET,
    f"fit: {BIG}\n" + NET,
    NET + f"train:\n  ? {BIG}\n  : 1\n",   # an explicit key: a plain one is at most 1024 characters
], ids=["input", "train", "name", "fit", "key"])
def test_a_huge_yaml_number_is_refused(tmp_path, text):
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    status, _, err, _ = analyze(tmp_path, "s.yaml")
    _clean(err)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if BIG in row)
    col = text.splitlines()[line - 1].index(BIG) + 1
    assert status == 1
    assert _head(err) == f"s.yaml:{line}:{col}: error: a number with 5,000 digits is too large (at most 50 digits)"


def test_a_huge_number_in_a_flag_is_refused(tmp_path):
    status, _, err, _ = analyze(tmp_path, "INPUT(3, 8, 8) -> RELU", "--input", f"3,{BIG},8")
    assert status == 2 and "Traceback" not in err
    assert err.splitlines()[-1].endswith("a number with 5,000 digits is too large (at most 50 digits)")
    assert len(err) < 2000


# --- 3. very long specs ---------------------------------------------------------------------

CHAIN_10MB = "INPUT(3,8,8) -> " + "RELU -> " * 1_300_000 + "RELU"


def test_a_10mb_spec_file_is_refused_unread(tmp_path):
    (tmp_path / "chain.cnn").write_text(CHAIN_10MB, encoding="utf-8")
    status, out, err, seconds = analyze(tmp_path, "chain.cnn")
    _clean(err)
    assert status == 2 and out == ""
    assert err == (f"error: chain.cnn is {len(CHAIN_10MB):,} bytes, more than the limit of "
                   f"1,048,576 bytes for a spec file\n")
    assert seconds < 15


def test_a_10mb_inline_spec_is_refused(tmp_path):
    status, out, err, seconds = python(tmp_path, """\
import cnndsl
text = "INPUT(3,8,8) -> " + "RELU -> " * 1_300_000 + "RELU"
try:
    cnndsl.parse(text)
except cnndsl.CnnDslError as e:
    print(str(e))
""")
    assert status == 0, err
    assert out == (f"error: the inline spec is {len(CHAIN_10MB):,} bytes long, more than the limit "
                   f"of 1,048,576 bytes for a spec\n")
    assert seconds < 15


def test_a_chain_longer_than_max_layers_is_refused_unparsed(tmp_path):
    text = "INPUT(3,8,8) -> " + "RELU -> " * 130_000 + "RELU"   # under 1 MiB
    (tmp_path / "chain.cnn").write_text(text, encoding="utf-8")
    status, out, err, seconds = analyze(tmp_path, "chain.cnn")
    _clean(err)
    assert status == 1 and out == ""
    col = len("INPUT(3,8,8) -> ") + 8 * 100_000 - 2
    assert _head(err) == (f"chain.cnn:1:{col}: error: this is '->' number 100,001 of the chain, so it "
                          f"expands to more layers than the limit of 100,000 (raise it with --max-layers)")
    assert seconds < 15   # parsing it would take ~10 s and 200 MB


def test_a_long_line_is_shown_as_a_window_with_the_caret_aligned(tmp_path):
    text = "INPUT(3,8,8) -> " + "RELU -> " * 5000 + "RELUX -> " + "RELU -> " * 5000 + "RELU"
    status, _, err, _ = analyze(tmp_path, text)
    _clean(err)
    assert status == 1
    head, shown, caret = err.splitlines()[:3]
    col = text.index("RELUX") + 1
    assert head.startswith(f"<inline>:1:{col}: error: unknown layer 'RELUX'")
    assert shown.startswith("    …") and shown.endswith("…") and len(shown) < 140
    assert shown[caret.index("^"):caret.index("^") + 5] == "RELUX" and caret.strip() == "^^^^^"


def test_a_megabyte_name_makes_a_short_diagnostic(tmp_path):
    name = "Q" * 1_000_000
    (tmp_path / "s.cnn").write_text(f"INPUT(3,8,8) -> {name}", encoding="utf-8")
    status, _, err, _ = analyze(tmp_path, "s.cnn", timeout=120)
    _clean(err, limit=3000)
    assert status == 1 and _head(err).startswith("s.cnn:1:17: error: unknown layer 'QQQ")


# --- 4. what is not a spec file, typos, BOM, merge keys --------------------------------------

def test_a_directory_is_not_a_spec_file(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "net.cnn").mkdir()
    for argument in ("specs/", "net.cnn", str(tmp_path)):
        status, _, err, _ = analyze(tmp_path, argument)
        assert status == 2 and err == f"error: {argument} is a directory, not a spec file\n"


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_is_not_a_spec_file(tmp_path, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    status, _, err, seconds = analyze(tmp_path, device, timeout=30)
    assert status == 2
    assert err == f"error: {device} is not a regular file but a character device, so not a spec file\n"
    (tmp_path / "z.cnn").symlink_to(device)
    status, _, err, _ = analyze(tmp_path, "z.cnn", timeout=30)
    assert status == 2 and "z.cnn is not a regular file but a character device" in err
    status, out, err, _ = python(tmp_path, "import cnndsl\ntry:\n    cnndsl.load('z.cnn')\n"
                                           "except cnndsl.CnnDslError as e:\n    print(e)", timeout=30)
    assert out.startswith("error: z.cnn is not a regular file"), err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.cnn")
    status, _, err, _ = analyze(tmp_path, "pipe.cnn", timeout=30)   # opening it would block
    assert status == 2
    assert err == "error: pipe.cnn is not a regular file but a FIFO (named pipe), so not a spec file\n"


@pytest.mark.parametrize("typo, name", [("resnet5O", "resnet50"), ("RESNET50", "resnet50"),
                                        ("vggI6", "vgg16"), ("resnetl8", "resnet18")])
def test_a_misspelt_zoo_name_is_suggested(tmp_path, typo, name):
    status, _, err, _ = analyze(tmp_path, typo)
    assert status == 2
    assert err == f"error: no spec named '{typo}' in the zoo — did you mean '{name}'?\n"


def test_a_layer_name_is_not_taken_for_a_zoo_name(tmp_path):
    status, _, err, _ = analyze(tmp_path, "CONV3")
    assert status == 1 and "the network has no input" in err


@pytest.mark.parametrize("suffix, text, col", [
    (".cnn", "INPUT(1, 8, 8) -> RELUX\n", 19),
    (".yaml", 'net: "INPUT(1, 8, 8) -> RELUX"\n', 25),
])
def test_a_utf8_bom_is_skipped_and_columns_stay_right(tmp_path, suffix, text, col):
    (tmp_path / f"bad{suffix}").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / f"good{suffix}").write_bytes(b"\xef\xbb\xbf" + text.replace("RELUX", "RELU").encode())
    status, _, err, _ = analyze(tmp_path, f"good{suffix}")
    assert status == 0, err
    status, _, err, _ = analyze(tmp_path, f"bad{suffix}")
    assert status == 1
    assert err.splitlines()[:2] == [f"bad{suffix}:1:{col}: error: unknown layer 'RELUX' — did you mean 'RELU'?",
                                    "    " + text.rstrip("\n")]
    assert err.splitlines()[2] == " " * (4 + col - 1) + "^^^^^"


def test_a_yaml_merge_key_is_named(tmp_path):
    text = NET + "train:\n  base: &b {epochs: 3}\n  optimizer:\n    <<: *b\n    name: sgd\n"
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    status, _, err, _ = analyze(tmp_path, "s.yaml")
    _clean(err)
    assert status == 1
    assert err.splitlines() == ["s.yaml:5:5: error: YAML merge keys (<<) are not supported in a spec: "
                                "write the keys out", "        <<: *b", "        ^^"]
