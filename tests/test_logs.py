"""A run's logs beside metrics.jsonl (cnndsl/training/logs.py): metrics.csv always,
TensorBoard's event files with `--tensorboard`; both equal metrics.jsonl, epoch for
epoch, also after an interrupted run is resumed, and under DDP (rank 0 writes).
Tiny runs: the 8×8 digits with --limit, synthetic images."""
import csv
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.lang.spec import load
from cnndsl.training import checkpoint, logs, rundir
from cnndsl.training.settings import make_config
from helpers import ROOT, run_main, tiny_spec

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
DIGITS = ("--limit", 300)
# What TensorBoard shows of a run on the CPU: every number of the epoch record but the
# epoch (the step) and mfu (null without a known GPU).
CPU_TAGS = {"loss/train", "acc/train", "loss/val", "acc/val", "lr", "seconds", "images_per_s",
            "tflops/train", "data_wait"}


class Killed(BaseException):
    """Stands in for kill -9 between two file writes."""


def train(capsys, *argv):
    return run_main(capsys, "train", *argv)


def jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def csv_rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def float32(x: float) -> float:
    """What TensorBoard keeps of a scalar: a 32-bit float."""
    return struct.unpack("f", struct.pack("f", x))[0]


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows of the run: tag → [(step, value)], as TensorBoard
    itself reads the event files (purged steps hidden)."""
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {t: [(s.step, s.value) for s in events.Scalars(t)] for t in events.Tags()["scalars"]}


def expected_scalars(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard should show it: each number, float32, at its epoch."""
    wanted: dict = {}
    for r in records:
        for key, value in r.items():
            if key != "epoch" and isinstance(value, (int, float)):
                wanted.setdefault(logs.tag(key), []).append((r["epoch"], float32(value)))
    return wanted


def assert_logs_equal_metrics(out: Path, tensorboard: bool = True) -> None:
    records = jsonl(out)
    rows = csv_rows(out)
    assert [list(row) for row in rows] == [list(r) for r in records]    # columns: the record's keys
    assert rows == [{k: "" if v is None else json.dumps(v) for k, v in r.items()} for r in records]
    if tensorboard:
        assert tensorboard_scalars(out) == expected_scalars(records)


# --- a run: metrics.csv always, TensorBoard when asked ------------------------------------


def test_tensorboard_and_csv_equal_metrics_jsonl(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = train(capsys, tiny_spec(tmp_path), *DIGITS, "--out", out, "--tensorboard")
    assert status == 0, err
    records = jsonl(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert set(tensorboard_scalars(out)) == CPU_TAGS
    assert_logs_equal_metrics(out)
    assert len(rundir.tensorboard_events(out)) == 1
    assert checkpoint.load(out / "last.pt")["config"]["tensorboard"] is True


def test_csv_is_written_without_a_flag_and_tensorboard_is_not(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, tiny_spec(tmp_path), *DIGITS, "--out", out)[0] == 0
    assert_logs_equal_metrics(out, tensorboard=False)
    assert len(csv_rows(out)) == 3 and not (out / "tensorboard").exists()


def test_tensorboard_from_the_spec_or_the_flag(tmp_path, capsys):
    assert make_config(load(tiny_spec(tmp_path, "  tensorboard: true\n"))).tensorboard is True
    assert make_config(None, {"tensorboard": True}).tensorboard is True
    assert make_config(None).tensorboard is False
    path = tiny_spec(tmp_path, "  tensorboard: yes please\n")
    status, _, err = train(capsys, path, "--out", tmp_path / "run")
    assert status == 1 and err.count("error:") == 1 and "Traceback" not in err
    assert err.startswith(f"{path}:6:3: error: tensorboard must be true or false, got 'yes please'")


def test_the_flag_passes_through_torchrun():
    # torchrun's own parser takes any unambiguous prefix of its options, and refuses an
    # ambiguous one even after the script: `--log` would match --log-dir and --logs-specs.
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(["--standalone", "-m", "cnndsl", "train", "x", "--tensorboard"])
    assert args.training_script_args == ["train", "x", "--tensorboard"]


def test_tensorboard_missing_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    out = tmp_path / "run"
    status, stdout, err = train(capsys, tiny_spec(tmp_path), *DIGITS, "--out", out, "--tensorboard")
    assert status == 2 and err.strip() == ("error: --tensorboard needs the tensorboard package: "
                                           "pip install 'cnndsl[tensorboard]'")
    assert "epoch" not in stdout and not (out / "metrics.jsonl").exists()


# --- resuming: one row and one step per epoch ----------------------------------------------


def test_an_interrupted_epoch_is_logged_once_after_resuming(tmp_path, capsys, monkeypatch):
    """Killed after epoch 2's metrics line and logs, before its last.pt: resuming redoes
    epoch 2 (here with another --lr, so its numbers differ) and every log keeps the new one."""
    spec, out = tiny_spec(tmp_path), tmp_path / "run"
    real_save = checkpoint.save

    def dying(path, state):
        if Path(path).name == "last.pt" and state["epoch"] == 2:
            raise Killed
        real_save(path, state)
    monkeypatch.setattr(checkpoint, "save", dying)
    with pytest.raises(Killed):
        main(["train", str(spec), *map(str, DIGITS), "--out", str(out), "--tensorboard"])
    capsys.readouterr()
    killed = jsonl(out)
    assert [r["epoch"] for r in killed] == [1, 2] and len(csv_rows(out)) == 2
    assert [s for s, _ in tensorboard_scalars(out)["loss/train"]] == [1, 2]

    monkeypatch.setattr(checkpoint, "save", real_save)
    status, _, err = train(capsys, spec, *DIGITS, "--out", out, "--resume", "--lr", "1e-3")
    assert status == 0, err
    records = jsonl(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[0] == killed[0] and records[1]["train_loss"] != killed[1]["train_loss"]
    assert_logs_equal_metrics(out)   # TensorBoard went on without --tensorboard: the run's setting
    assert len(rundir.tensorboard_events(out)) == 2   # the first file still holds the old epoch 2


@pytest.mark.slow
def test_kill_9_and_resume_keep_one_row_per_epoch(tmp_path):
    spec = tiny_spec(tmp_path, "  epochs: 4\n  batch_size: 8\n  optimizer: {name: sgd, lr: 0.05}\n")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cnndsl", "train", str(spec), *map(str, DIGITS), "--out", str(out),
            "--tensorboard"]
    proc = subprocess.Popen(args, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert 1 <= checkpoint.load(out / "last.pt")["epoch"] < 4, "the run was not killed in the middle"
    resumed = subprocess.run(args + ["--resume"], env=ENV, cwd=ROOT, capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in jsonl(out)] == [1, 2, 3, 4]
    assert_logs_equal_metrics(out)


def test_tensorboard_turned_on_when_resuming_gets_the_earlier_epochs(tmp_path, capsys):
    spec, out = tiny_spec(tmp_path, "  epochs: 2\n  batch_size: 32\n"), tmp_path / "run"
    assert train(capsys, spec, *DIGITS, "--out", out)[0] == 0
    assert not (out / "tensorboard").exists()
    status, _, err = train(capsys, spec, *DIGITS, "--out", out, "--resume", "--epochs", 3, "--tensorboard")
    assert status == 0, err
    assert [r["epoch"] for r in jsonl(out)] == [1, 2, 3]
    assert_logs_equal_metrics(out)   # epochs 1 and 2 replayed from metrics.jsonl


def test_overwrite_starts_the_logs_afresh(tmp_path, capsys):
    spec, out = tiny_spec(tmp_path), tmp_path / "run"
    assert train(capsys, spec, *DIGITS, "--out", out, "--tensorboard")[0] == 0
    (out / "tensorboard" / "notes.txt").write_text("mine")   # not TensorBoard's: kept
    status, _, err = train(capsys, spec, *DIGITS, "--out", out, "--overwrite", "--epochs", 2,
                           "--lr", "1e-3", "--tensorboard")
    assert status == 0, err
    assert [r["epoch"] for r in jsonl(out)] == [1, 2]
    assert_logs_equal_metrics(out)
    assert len(rundir.tensorboard_events(out)) == 1
    assert (out / "tensorboard" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_ddp_only_rank_0_writes_the_logs(tmp_path):
    spec, out = tiny_spec(tmp_path, "  epochs: 2\n  batch_size: 32\n"), tmp_path / "ddp"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "cnndsl", "train", str(spec),
                          "--data", "synthetic:256", "--out", str(out), "--tensorboard"],
                         capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"},
                         cwd=ROOT, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(rundir.tensorboard_events(out)) == 1
    assert [r["epoch"] for r in jsonl(out)] == [1, 2]
    assert_logs_equal_metrics(out)


# --- the CSV itself -------------------------------------------------------------------------


def test_csv_columns_follow_the_latest_record(tmp_path):
    out = tmp_path
    first = {"epoch": 1, "loss": 0.5}
    (out / "metrics.jsonl").write_text(json.dumps(first) + "\n")
    log = logs.RunLogs(out, False, 1)
    assert (out / "metrics.csv").read_text() == "epoch,loss\n1,0.5\n"
    second = {"epoch": 2, "loss": 0.25, "val": {"acc": 0.75, "top5": None}}   # nested: flattened
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(second) + "\n")
    log.write(second)   # new keys: the file is rewritten from metrics.jsonl
    third = {"epoch": 3, "loss": 1e-05, "val": {"acc": 1.0, "top5": True}}
    log.write(third)    # the same keys: one row appended
    assert (out / "metrics.csv").read_text() == ("epoch,loss,val.acc,val.top5\n1,0.5,,\n"
                                                 "2,0.25,0.75,\n3,1e-05,1.0,true\n")
    log.close()


def test_csv_cells_are_never_formulas_and_never_nan():
    rows = [{"epoch": 1, "note": "=HYPERLINK(\"x\")", "x": float("nan"), "y": "-a", "z": [1, "b"]}]
    text = logs.csv_text([{**r, "z": json.dumps(r["z"])} for r in rows], ["epoch", "note", "x", "y", "z"])
    assert text == 'epoch,note,x,y,z\n1,"\'=HYPERLINK(""x"")",,\'-a,"[1, ""b""]"\n'


def test_a_log_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "metrics.csv").mkdir()   # a folder where the file goes
    with pytest.raises(CnnDslError, match=r"metrics.csv: cannot write it \("):
        logs.RunLogs(tmp_path, False, 0)


def test_resume_notes_the_lines_it_skips(tmp_path):
    good = {"epoch": 1, "loss": 0.5}
    (tmp_path / "metrics.jsonl").write_text(f"{json.dumps(good)}\nnot json\n{{\"epoch\": 1}}\n")
    notes = []
    logs.RunLogs(tmp_path, False, 1, say=notes.append).close()
    assert notes == [f"{tmp_path / 'metrics.jsonl'}: skipped 2 lines that are not an epoch record"]
    assert (tmp_path / "metrics.csv").read_text() == "epoch,loss\n1,0.5\n"
