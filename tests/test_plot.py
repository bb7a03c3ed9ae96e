"""`cnndsl plot` and the curves it reads (cnndsl/training/curves.py): a run folder's
metrics.jsonl read back with limits, bad lines skipped and counted; the picture written
whole, at the asked size; bad input in one line; no torch. Torch-free and fast: the run
folders are written by hand."""
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from cnndsl.training import curves
from helpers import ROOT, run_main

matplotlib = pytest.importorskip("matplotlib")

RECORDS = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "val_loss": 2.5 / e,
            "val_acc": 0.15 * e, "lr": 0.1, "mfu": None} for e in (1, 2, 3)]


def run_folder(folder: Path, records=RECORDS, extra: bytes = b"") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    (folder / "metrics.jsonl").write_bytes(text + extra)
    return folder


def plot(capsys, *argv):
    return run_main(capsys, "plot", *argv)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature, every chunk's CRC and IEND."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND" and pos == len(data)
    return struct.unpack(">II", chunks[0][1][:8])


# --- reading the curves ---------------------------------------------------------------------


def test_curves_read_back_equal_what_was_written(tmp_path):
    read = curves.read_curves(run_folder(tmp_path / "a"))
    assert read == (RECORDS, 0, False)
    assert curves.series(read.records, "val_loss") == ([1, 2, 3], [2.5, 1.25, 2.5 / 3])
    assert curves.series(read.records, "mfu") == ([], [])        # null: no point
    assert curves.series(read.records, "nothing") == ([], [])


def test_bad_lines_are_skipped_and_counted(tmp_path):
    lines = [b'{"epoch": 1, "train_loss": 1.0}', b"not json", b"\xff\xfe binary", b"[1, 2]",
             b'{"epoch": "2"}', b'{"epoch": true}', b'{"epoch": 1, "again": 1}', b"",
             b"[" * 100_000, b"9" * 5000, b'{"epoch": 3, "train_loss": NaN, "x": {"y": [1]}}',
             b'{"epoch": 4, ' + b'"k": 1, ' * 10 + b'"big": ' + json.dumps({f"k{i}": i for i in range(200)}).encode() + b"}",
             b'{"epoch": 5, "train_loss": 0.5', ]   # the last one torn by kill -9
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines))
    read = curves.read_curves(tmp_path)
    assert [r["epoch"] for r in read.records] == [1, 3] and read.skipped == 10 and not read.cut
    assert read.records[1]["x.y"] == "[1]"                       # nested: flattened
    assert curves.series(read.records, "train_loss") == ([1], [1.0])   # NaN: no point
    assert read.notes("m") == ["m: skipped 10 lines that are not an epoch record"]


def test_a_huge_file_is_read_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(curves, "READ_LIMIT", 64 * 1024)
    monkeypatch.setattr(curves, "LINE_LIMIT", 4 * 1024)
    path = tmp_path / "metrics.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"epoch": 1}\n' + b"z" * (1024 * 1024) + b'\n{"epoch": 2}\n')   # an overlong line
        f.write(b"".join(b'{"epoch": %d}\n' % e for e in range(3, 100_000)))
    read = curves.read_curves(tmp_path)
    # The overlong line is skipped in pieces, not read whole, and spends the budget.
    assert read.cut and [r["epoch"] for r in read.records] == [1] and read.skipped == 1
    assert read.notes("m")[1] == "m: read only its first 0.0625 MiB (1 epoch record)"
    path.write_bytes(b'{"epoch": 1}\n' + b"z" * 10_000 + b'\n{"epoch": 2}\n')
    assert [r["epoch"] for r in curves.read_curves(tmp_path).records] == [1, 2]
    assert curves.read_curves(tmp_path).skipped == 1


def test_not_a_run_is_one_line(tmp_path):
    with pytest.raises(curves.CnnDslError, match="is not a run folder: it has no metrics.jsonl"):
        curves.read_curves(tmp_path)
    with pytest.raises(curves.CnnDslError, match="does not exist"):
        curves.read_curves(tmp_path / "missing")
    os.mkfifo(tmp_path / "metrics.jsonl")   # would block a reader forever
    with pytest.raises(curves.CnnDslError, match="is not a regular file"):
        curves.read_curves(tmp_path)


# --- the picture ------------------------------------------------------------------------------


def test_png_of_two_runs_at_the_asked_size(tmp_path, capsys):
    a, b = run_folder(tmp_path / "runs" / "a"), run_folder(tmp_path / "runs" / "b", RECORDS[:2])
    out = tmp_path / "curves.png"
    status, stdout, err = plot(capsys, a, b, "-o", out, "--size", "900x400")
    assert status == 0, err
    assert stdout == f"wrote {out}: 2 runs, up to 3 epochs\n" and err == ""
    assert png_size(out.read_bytes()) == (900, 400)
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["curves.png"]   # no temporary left
    assert plot(capsys, a, "-o", out)[0] == 2                         # never written over ...
    assert plot(capsys, a, "-o", out, "--overwrite")[0] == 0          # ... unless asked
    assert png_size(out.read_bytes()) == (1200, 500)                  # the default size


@pytest.mark.parametrize("suffix, start", [(".svg", b"<?xml"), (".pdf", b"%PDF"), (".PNG", b"\x89PNG")])
def test_the_suffix_picks_the_format(tmp_path, capsys, suffix, start):
    out = tmp_path / f"curves{suffix}"
    status, _, err = plot(capsys, run_folder(tmp_path / "a"), "-o", out, "--label", "lr=0.1 $x$ _y")
    assert status == 0, err
    assert out.read_bytes().startswith(start)


def test_corrupt_lines_are_said_and_the_rest_plotted(tmp_path, capsys):
    run = run_folder(tmp_path / "a", extra=b"garbage\n{\"epoch\": 4, \"torn")
    status, _, err = plot(capsys, run, "-o", tmp_path / "c.png")
    assert status == 0
    assert err == f"note: {run / 'metrics.jsonl'}: skipped 2 lines that are not an epoch record\n"


@pytest.mark.parametrize("make, argv, words", [
    (lambda t: run_folder(t / "a"), ["-o", "{t}/c.jpg"], "-o {t}/c.jpg: the suffix picks the format; "
                                                          "give one of .png, .svg, .pdf"),
    (lambda t: t / "a", ["-o", "{t}/c.png"], "{t}/a does not exist; give a run folder"),
    (lambda t: run_folder(t / "a") / "metrics.jsonl", ["-o", "{t}/c.png"],
     "{t}/a/metrics.jsonl is not a folder; give a run folder"),
    (lambda t: (t / "a").mkdir() or t / "a", ["-o", "{t}/c.png"],
     "{t}/a is not a run folder: it has no metrics.jsonl"),
    (lambda t: run_folder(t / "a", []), ["-o", "{t}/c.png"],
     "{t}/a/metrics.jsonl holds no epoch record yet: nothing to plot"),
    (lambda t: run_folder(t / "a", [], b"junk\n"), ["-o", "{t}/c.png"],
     "{t}/a/metrics.jsonl holds no epoch record yet: nothing to plot (1 line skipped: not epoch records)"),
    (lambda t: run_folder(t / "a"), ["-o", "{t}/c.png", "--label", "x", "--label", "y"],
     "give one --label per RUN, in order: 1 RUN, 2 --label"),
    (lambda t: run_folder(t / "a"), ["-o", "{t}"], "-o {t} is a folder"),
    (lambda t: run_folder(t / "a"), ["-o", "{t}/no/c.png"], "-o {t}/no/c.png: the folder {t}/no does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, make, argv, words):
    run = make(tmp_path)
    status, stdout, err = plot(capsys, run, *[a.format(t=tmp_path) for a in argv])
    assert status == 2 and stdout == ""
    assert err.startswith("error: " + words.format(t=tmp_path)), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("size", ["12x5000000", "100x100", "big", "10000x500"])
def test_a_bad_size_is_a_usage_error(tmp_path, capsys, size):
    with pytest.raises(SystemExit) as e:
        plot(capsys, run_folder(tmp_path / "a"), "-o", tmp_path / "c.png", "--size", size)
    assert e.value.code == 2 and "--size" in capsys.readouterr().err


def test_labels_default_to_the_folder_names_or_their_paths(tmp_path):
    from cnndsl.cli.plot import run_labels

    assert run_labels(["runs/a", "runs/b/"], None) == ["a", "b"]
    assert run_labels(["x/a", "y/a"], None) == ["x/a", "y/a"]   # the same name: the paths
    assert run_labels(["x/a"], ["mine"]) == ["mine"]


def test_missing_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import fails
    status, _, err = plot(capsys, run_folder(tmp_path / "a"), "-o", tmp_path / "c.png")
    assert status == 2 and err == "error: cnndsl plot needs matplotlib: pip install 'cnndsl[plot]'\n"


def test_plot_does_not_import_torch(tmp_path):
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
            "            raise ImportError('blocked by the test')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from cnndsl.cli import main\n"
            "status = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules\n"
            "sys.exit(status)\n")
    run = run_folder(tmp_path / "a")
    result = subprocess.run([sys.executable, "-c", code, "plot", str(run), "-o", str(tmp_path / "c.png")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert png_size((tmp_path / "c.png").read_bytes()) == (1200, 500)
