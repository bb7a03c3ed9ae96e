"""The `cnndsl` command: entry points, exit status, JSON schema, flags."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnndsl.cli import main
from helpers import ROOT, run_main as run

NET = "INPUT(3, 32, 32) -> (CONV3-16 -> BN -> RELU)*2 -> POOL -> FC-10"


def test_table_then_totals(capsys):
    status, out, err = run(capsys, "analyze", NET, "--batch", "8")
    assert status == 0 and err == ""
    assert "conv2" in out and "16×32×32" in out
    for label in ("params (trainable)", "MACs", "FLOPs", "activations / batch of 8", "training memory"):
        assert label in out


def test_json_schema(capsys):
    status, out, _ = run(capsys, "analyze", NET, "--json", "--input", "3,16,16")
    data = json.loads(out)
    assert status == 0
    assert set(data) >= {"name", "input", "output", "totals", "layers", "diagnostics"}
    assert data["input"] == [3, 16, 16] and data["output"] == [10]
    assert set(data["totals"]) >= {"params", "trainable_params", "macs", "flops",
                                   "activation_elements", "unshared_params"}
    row = data["layers"][1]
    assert set(row) >= {"name", "kind", "output", "params", "macs", "rf", "jump"}
    assert row["name"] == "conv1" and row["kind"] == "CONV" and row["output"] == [16, 16, 16]
    # conv1 feeds BN, so no bias: 3·3·3·16 weights (docs/language.md 2.1).
    assert row["params"] == 432 and row["macs"] == 16 * 16 * 432


def test_json_diagnostics(capsys):
    status, out, _ = run(capsys, "analyze", "INPUT(1, 7, 7) -> CONV3-2/3(pad=0)", "--json")
    [d] = json.loads(out)["diagnostics"]
    assert status == 0 and d["severity"] == "warning"
    assert (d["file"], d["line"], d["col"]) == (None, 1, 19)
    status, out, _ = run(capsys, "analyze", "INPUT(1, 7, 7) -> CONVV3-2", "--json")
    [d] = json.loads(out)["diagnostics"]
    assert status == 1 and d["severity"] == "error" and "did you mean 'CONV'" in d["message"]


@pytest.mark.parametrize("argv, status", [
    (["analyze", NET], 0),
    (["analyze", "INPUT(1, 7, 7) -> CONV3-2/3(pad=0)"], 0),             # a warning only
    (["analyze", "INPUT(1, 7, 7) -> CONV3-2/3(pad=0)", "--strict"], 1),
    (["analyze", "INPUT(1, 7, 7) -> CONV3-2 -> ADD(ID, POOL)"], 1),
    (["analyze", "no/such/spec.yaml"], 2),
    (["analyze", NET, "--input", "3,32"], 2),
    (["analyze", NET, "--batch", "0"], 2),
    (["analyze"], 2),
    (["frobnicate"], 2),
])
def test_exit_status(argv, status, capsys):
    try:
        assert main(argv) == status
    except SystemExit as e:  # argparse's own usage errors
        assert e.code == status
    _, err = capsys.readouterr()
    assert "Traceback" not in err


def test_missing_file_is_one_line(capsys):
    status, out, err = run(capsys, "analyze", "specs/nope.yaml")
    assert status == 2 and err.strip() == "error: no such spec file: specs/nope.yaml"


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "cnndsl"],
    [sys.executable, str(ROOT / "cli.py")],
    [str(Path(sys.executable).parent / "cnndsl")],
], ids=["python -m cnndsl", "cli.py", "console script"])
def test_entry_points(command):
    result = subprocess.run(command + ["analyze", NET, "--json"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"] == [10]


def test_a_reader_that_stops_early_gets_no_traceback():
    """`cnndsl analyze efficientnet_v2_l | head -1`: the pipe closes while the table is written."""
    child = subprocess.Popen([sys.executable, "-m", "cnndsl", "analyze", "efficientnet_v2_l"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.readline()
    child.stdout.close()          # as `head -1` does once it has its line
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == 1      # the table (over 100 KB) did not fit the pipe
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
