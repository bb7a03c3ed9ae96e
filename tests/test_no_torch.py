"""`cnndsl analyze` works on a machine without torch, and never imports it (the README's
Quick start: "Analysis alone needs no torch at all").

Each test runs the command in a fresh interpreter, so that nothing this test session
imported (torch, by other tests) can hide an import.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import NO_TORCH, run_without_torch


SPEC = "INPUT(3, 32, 32) -> [CONV3-32 -> BN -> RELU]*2 -> POOL -> RES(CONV3-32 -> BN) -> GAP -> FC-10"

YAML = """\
name: small
input: [3, 32, 32]
blocks:
  unit(c): (CONV3-c -> BN -> RELU)*2 -> POOL
net: unit(32) -> unit(64) -> FC-256 -> RELU -> DROPOUT -> FC-10
train:
  epochs: 3
"""


run = run_without_torch


def test_the_blocker_blocks():
    result = subprocess.run([sys.executable, "-c", NO_TORCH.replace("from cnndsl.cli import main",
                                                                     "import torch"), "--block", "analyze"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "blocked by the test" in result.stderr


def test_analyze_prints_the_table_without_torch():
    result = run("analyze", SPEC)
    assert result.returncode == 0, result.stderr
    assert "conv1" in result.stdout and "res1" in result.stdout and "fc1" in result.stdout
    assert "params (trainable)" in result.stdout and "32×32×32" in result.stdout
    assert "Traceback" not in result.stderr


def test_analyze_a_yaml_spec_as_json_without_torch(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(YAML, encoding="utf-8")
    result = run("analyze", str(spec), "--json", "--batch", "64")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "small" and report["output"] == [10]
    assert report["totals"]["layers"] == len(report["layers"]) - 1   # INPUT is not a layer


def test_diagnostics_without_torch():
    result = run("analyze", "INPUT(3, 7, 7) -> CONV3-8/3(pad=0) -> RELU", "--strict")
    assert result.returncode == 1
    assert result.stderr.startswith("<inline>:1:19: error: CONV3-8/3(pad=0) does not fit its 7×7 input")


@pytest.mark.parametrize("argv", [["analyze", SPEC], ["analyze", SPEC, "--json"]])
def test_analyze_does_not_import_torch_even_when_it_could(argv):
    pytest.importorskip("torch")  # where torch is installed, analyze still leaves it alone
    result = run(*argv, block=False)
    assert result.returncode == 0, result.stderr
