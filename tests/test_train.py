"""`cnndsl train`: config precedence, outputs, resume after kill -9, divergence, transfer
learning, DDP on CPU. Small data throughout: 8×8 digits with --limit, synthetic images."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnndsl.training import checkpoint
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.lang.spec import load, parse
from cnndsl.training.loop import epoch_batches
from cnndsl.training.optim import lr_at
from cnndsl.training.settings import Config, make_config
from helpers import ROOT, run_main, tiny_spec

METRIC_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
               "train_tflops", "mfu", "data_wait"}   # the last three since streaming data
SUMMARY_KEYS = {"test_acc", "test_top5", "epochs", "seconds", "images_per_s", "params", "macs",
                "best_val_acc", "device"}
# Subprocesses: idle OpenMP threads sleep (the CLI sets this itself; be explicit for torchrun).
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}


def train(capsys, *argv):
    return run_main(capsys, "train", *argv)


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def cli(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "cnndsl", *map(str, argv)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=180, **kwargs)


# --- config ---------------------------------------------------------------------------


def test_defaults_then_spec_then_flags(tmp_path):
    spec = load(tiny_spec(tmp_path, "  epochs: 7\n  optimizer: {name: adam, weight_decay: 0.01}\n"
                                    "  schedule: step\n  data: synthetic:64\n"))
    config = make_config(spec, {"weight_decay": 0.5, "lr": None, "data": "digits"})
    assert config.epochs == 7 and config.optimizer == "adam" and config.schedule == "step"
    assert config.weight_decay == 0.5 and config.data == "digits"       # flags win
    assert config.lr == 1e-3                                            # Adam's default lr
    assert config.batch_size == Config().batch_size                     # untouched default
    assert make_config(parse("INPUT(1, 8, 8) -> FC-10")).lr == 0.01     # SGD's default lr


def test_yaml_numbers_written_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads `1e-3` as text; a setting that must be a number converts it.
    spec = load(tiny_spec(tmp_path, "  optimizer: {lr: 1e-3}\n"))
    assert make_config(spec).lr == 1e-3


@pytest.mark.parametrize("train, line, col, words", [
    ("  epoch: 3\n", 6, 3, "unknown train key 'epoch' — did you mean 'epochs'?"),
    ("  optimizer: {name: sgd, momentun: 0.9}\n", 6, 26, "did you mean 'optimizer.momentum'?"),
    ("  lr: 0.1\n", 6, 3, "did you mean 'optimizer.lr'"),
    ("  epochs: -2\n", 6, 3, "epochs must be a number ≥ 1"),
    ("  optimizer: adagrad\n", 6, 3, "optimizer must be one of sgd, adam, adamw"),
    ("  augment: {hflip: true, flop: true}\n", 6, 3, "unknown augmentation 'flop'"),
    ("  schedule: {name: cosine, warmup_epochs: abc}\n", 6, 28, "warmup_epochs must be a number"),
])
def test_bad_train_keys_point_at_the_key(tmp_path, train, line, col, words):
    path = tiny_spec(tmp_path, train)
    with pytest.raises(CnnDslError) as e:
        make_config(load(path))
    assert words in e.value.message
    assert (e.value.span.source.path, e.value.line, e.value.col) == (str(path), line, col)


def test_bad_key_on_the_command_line_is_file_line_col(tmp_path, capsys):
    path = tiny_spec(tmp_path, "  epoch: 3\n")
    status, _, err = train(capsys, path, "--out", tmp_path / "run")
    assert status == 1
    assert err.startswith(f"{path}:6:3: error: unknown train key 'epoch'")


def test_bad_flag_value_is_a_usage_error(tmp_path, capsys):
    status, _, err = train(capsys, tiny_spec(tmp_path), "--lr", "-1", "--out", tmp_path / "run")
    assert status == 2 and err.strip() == "error: lr must be a number > 0, got -1.0"


# --- schedules ------------------------------------------------------------------------


def test_schedules_move_per_iteration():
    c = Config(lr=1.0, epochs=4, schedule="step", step_size=2, gamma=0.1)
    assert [lr_at(c, s, 10) for s in (0, 19, 20, 39)] == [1.0, 1.0, 0.1, 0.1]
    c = Config(lr=1.0, epochs=10, schedule="onecycle")   # Smith 2018: up for 30%, then down
    lrs = [lr_at(c, s, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(lrs[30]) == pytest.approx(1.0)
    assert lrs[-1] < 1e-3
    c = Config(lr=1.0, epochs=2, schedule="none", warmup_epochs=1)
    assert [lr_at(c, s, 4) for s in (0, 3, 7)] == [0.25, 1.0, 1.0]


def test_batches_drop_a_last_batch_too_small_for_batch_norm():
    assert [len(b) for b in epoch_batches(65, 32, 1)] == [32, 32]
    assert [len(b) for b in epoch_batches(66, 32, 1)] == [32, 32, 2]
    assert [len(b) for b in epoch_batches(67, 32, 2)] == [32, 32]


# --- a short run ----------------------------------------------------------------------


def test_short_run_learns_and_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, _ = train(capsys, tiny_spec(tmp_path), "--limit", 400, "--out", out)
    assert status == 0
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(set(r) == METRIC_KEYS for r in rows)
    assert rows[-1]["train_acc"] > rows[0]["train_acc"] + 0.2 and rows[-1]["val_acc"] > 0.6
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["test_acc"] > 0.5 and summary["params"] == 8714
    assert summary["device"] == "cpu" and summary["epochs"] == 3
    for name in ("last.pt", "best.pt"):
        state = checkpoint.load(out / name)
        assert set(checkpoint.KEYS) <= set(state)
        assert state["spec"]["digest"] == load(tiny_spec(tmp_path)).digest
    assert checkpoint.load(out / "last.pt")["epoch"] == 3
    # CI: stdout is not a terminal, so no progress bar, one line per epoch.
    lines = stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3 and "\x1b" not in stdout
    assert not list(out.glob(".*.tmp"))   # no temporary file left behind


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path, capsys):
    out, spec = tmp_path / "run", tiny_spec(tmp_path, "  epochs: 1\n")
    assert train(capsys, spec, "--limit", 100, "--out", out)[0] == 0
    status, _, err = train(capsys, spec, "--limit", 100, "--out", out)
    assert status == 2 and "--resume" in err and "--overwrite" in err
    assert train(capsys, spec, "--limit", 100, "--out", out, "--overwrite")[0] == 0
    assert len(metrics(out)) == 1   # the old run's lines went with it


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, tiny_spec(tmp_path, "  epochs: 1\n"), "--limit", 100, "--out", out)[0] == 0
    other = tiny_spec(tmp_path, "  epochs: 2\n", name="other.yaml")
    status, _, err = train(capsys, other, "--out", out, "--resume")
    assert status == 2 and "is a checkpoint of spec 'tiny'" in err and len(err.splitlines()) == 1
    status, _, err = train(capsys, other, "--out", tmp_path / "nothing", "--resume")
    assert status == 2 and "nothing to resume" in err


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    """kill -9 after the first checkpoint, then --resume: the same numbers as one run."""
    spec = tiny_spec(tmp_path, "  epochs: 4\n  batch_size: 8\n  augment: {affine: true}\n"
                               "  optimizer: {name: sgd, lr: 0.05}\n")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = ("train", spec, "--limit", 300, "--out", killed)
    proc = subprocess.Popen([sys.executable, "-m", "cnndsl", *map(str, args)], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    done = checkpoint.load(killed / "last.pt")["epoch"]
    assert 1 <= done < 4, "the run was not killed in the middle"
    assert cli(*args, "--resume").returncode == 0
    assert train(capsys, spec, "--limit", 300, "--out", whole)[0] == 0
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [[r[k] for k in keys] for r in metrics(killed)] == [[r[k] for k in keys] for r in metrics(whole)]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (killed, whole))
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]


def test_ctrl_c_stops_at_a_clean_checkpoint(tmp_path):
    spec = tiny_spec(tmp_path, "  epochs: 50\n  batch_size: 8\n")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnndsl", "train", str(spec), "--limit", "400",
                             "--out", str(out)], env=ENV, cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted: the last checkpoint is" in err and "--resume" in err and "Traceback" not in err
    state = checkpoint.load(out / "last.pt")
    assert len(metrics(out)) == state["epoch"] < 50


# --- divergence -----------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    spec, out = tiny_spec(tmp_path, "  epochs: 1\n  batch_size: 32\n"), tmp_path / "run"
    assert train(capsys, spec, "--limit", 200, "--out", out)[0] == 0
    good = checkpoint.load(out / "last.pt")["model"]
    status, _, err = train(capsys, spec, "--limit", 200, "--out", out, "--resume",
                           "--epochs", 3, "--lr", 1e30)
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "training diverged: the loss became nan at epoch 2" in err and "last.pt (epoch 1)" in err
    kept = checkpoint.load(out / "last.pt")
    assert kept["epoch"] == 1 and all(torch.equal(good[k], kept["model"][k]) for k in good)
    assert len(metrics(out)) == 1


def test_nan_in_the_first_epoch_says_no_checkpoint(tmp_path, capsys):
    status, _, err = train(capsys, tiny_spec(tmp_path), "--limit", 100, "--lr", 1e30,
                           "--out", tmp_path / "run")
    assert status == 1 and "no checkpoint was written" in err


# --- data errors ----------------------------------------------------------------------


@pytest.mark.parametrize("data, words", [
    ("mnist:/no/such/dir", "data directory '/no/such/dir' does not exist"),
    ("imagenet", "unknown data source 'imagenet'"),
])
def test_bad_data_is_one_line(tmp_path, capsys, data, words):
    status, _, err = train(capsys, tiny_spec(tmp_path), "--data", data, "--out", tmp_path / "run")
    assert status == 2 and words in err and len(err.strip().splitlines()) == 1


def test_too_few_outputs_for_the_classes_points_at_the_last_layer(tmp_path, capsys):
    path = tmp_path / "five.cnn"
    path.write_text("INPUT(1, 8, 8) -> CONV3-4 -> FC-5\n")
    status, _, err = train(capsys, path, "--out", tmp_path / "run")
    assert status == 1 and "but 'digits' has 10 classes: end the net in FC-10" in err
    assert f"{path}:1:30:" in err


# --- transfer learning ----------------------------------------------------------------


def test_init_from_and_freeze(tmp_path, capsys):
    spec, base, tuned = tiny_spec(tmp_path), tmp_path / "base", tmp_path / "tuned"
    assert train(capsys, spec, "--limit", 300, "--out", base)[0] == 0
    status, out, _ = train(capsys, spec, "--limit", 300, "--out", tuned, "--epochs", 1,
                           "--init-from", base / "last.pt", "--freeze", "hidden")
    assert status == 0
    assert "loaded 6 of 6 tensors" in out and "frozen: 4 layers, conv1 … hidden" in out
    before, after = (checkpoint.load(d / "last.pt")["model"] for d in (base, tuned))
    for name in ("conv1.weight", "conv1.bias", "hidden.weight", "hidden.bias"):
        assert torch.equal(before[name], after[name])
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])


def test_init_from_skips_tensors_whose_shapes_differ(tmp_path, capsys):
    base = tmp_path / "base"
    assert train(capsys, tiny_spec(tmp_path, "  epochs: 1\n"), "--limit", 100, "--out", base)[0] == 0
    wide = tmp_path / "wide.cnn"
    wide.write_text("INPUT(1, 8, 8) -> conv1: CONV3-16 -> RELU -> POOL -> FC-12\n")
    status, out, _ = train(capsys, wide, "--limit", 100, "--epochs", 1, "--out", tmp_path / "w",
                           "--init-from", base / "last.pt")
    assert status == 0 and "loaded 2 of 4 tensors" in out


def test_freeze_an_unknown_layer(tmp_path, capsys):
    status, _, err = train(capsys, tiny_spec(tmp_path), "--freeze", "hiden", "--out", tmp_path / "r")
    assert status == 2 and "no layer named 'hiden' — did you mean 'hidden'?" in err


# --- several processes ----------------------------------------------------------------


def test_ddp_on_cpu_with_two_processes(tmp_path):
    """torchrun, gloo: each process trains on its half of every batch; rank 0 writes."""
    spec, out = tiny_spec(tmp_path, "  epochs: 2\n  batch_size: 32\n"), tmp_path / "ddp"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "cnndsl", "train", str(spec),
                          "--data", "synthetic:256", "--out", str(out)],
                         capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"},
                         cwd=ROOT, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cpu ×2 (DDP)" in run.stdout and run.stdout.count("epoch 2/2") == 1   # rank 0 only
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["train_acc"] > rows[0]["train_acc"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["test_images"] == 51


# --- GPU ------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("flags", [[], ["--no-bf16", "--no-channels-last"], ["--compile"]])
def test_cuda_training(tmp_path, capsys, flags):
    out = tmp_path / "run"
    status, stdout, _ = train(capsys, tiny_spec(tmp_path), "--limit", 400, "--out", out, *flags)
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["test_acc"] > 0.5
    assert ("bf16" in stdout) == ("--no-bf16" not in flags)
    assert checkpoint.load(out / "last.pt")["epoch"] == 3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resume_and_eval(tmp_path, capsys):
    spec, out = tiny_spec(tmp_path, "  epochs: 2\n"), tmp_path / "run"
    assert train(capsys, spec, "--limit", 300, "--out", out, "--epochs", 1)[0] == 0
    assert train(capsys, spec, "--limit", 300, "--out", out, "--resume")[0] == 0
    assert [r["epoch"] for r in metrics(out)] == [1, 2]
    assert main(["eval", str(out / "best.pt"), "--tta", "10crop", "--device", "cuda"]) == 0
    assert math.isfinite(json.loads((out / "summary.json").read_text())["test_loss"])
