"""`cnndsl train` and its run folder: where files go, one run per folder, a bad --out refused
before any work, divergence on the last step, strict JSON, empty splits, torchrun's
variables, resuming with another optimiser, a damaged metrics.jsonl, best.pt vs last.pt.
Tiny runs throughout (8×8 synthetic images, one or two epochs)."""
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnndsl.cli import main
from cnndsl.training import checkpoint, loop, rundir
from cnndsl.training.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
NET = "INPUT(1, 8, 8) -> CONV3-4 -> RELU -> FC-10"
FAST = ("--data", "synthetic:64", "--epochs", "1", "--batch-size", "16")


def train(capsys, *argv):
    status = main(["train", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (they are not JSON)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def check_json_files(folder: Path) -> None:
    for path in folder.glob("*.json"):
        strict_json(path.read_text())
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            strict_json(line)


def yaml_spec(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: {json.dumps(name)}\ninput: [1, 8, 8]\nnet: CONV3-4 -> RELU -> FC-10\n")
    return path


# --- 1. the spec's name does not choose where files go ----------------------------------


NAMES = ["/tmp/x", "../../x", "a/../../b", "..", ".", "", "   ", "/", "~root/x", "-rf",
         "a\\..\\..\\b", "x" * 10_000, "ok-name_1.2"]


@pytest.mark.parametrize("name", NAMES, ids=lambda n: repr(n[:20]))
def test_default_folder_is_always_one_child_of_runs(name):
    out = rundir.default_out(name)
    assert out.parent == Path("runs") and not out.is_absolute()
    assert out.name not in ("", ".", "..") and not out.name.startswith((".", "-"))
    assert len(out.name) <= rundir.NAME_LIMIT and "/" not in out.name and "\\" not in out.name
    assert set(out.name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert (os.path.normpath(out).split(os.sep)[0]) == "runs"
    if name == "ok-name_1.2":
        assert out.name == name                # a sensible name is kept as it is


def test_a_spec_named_like_a_path_writes_under_runs(tmp_path, capsys, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    target = tmp_path / "abs_target"
    for name in (str(target), "../../x", "a/../../b"):
        status, _, err = train(capsys, yaml_spec(tmp_path, name), *FAST)
        assert status == 0, err
    assert not target.exists() and not (tmp_path / "x").exists() and not (tmp_path / "b").exists()
    made = sorted(p.name for p in (work / "runs").iterdir())
    assert len(made) == 3 and all((work / "runs" / m / "summary.json").is_file() for m in made)
    assert sorted(p.name for p in work.iterdir()) == ["runs"]


# --- 2. one run per folder ---------------------------------------------------------------


def hold_lock(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_is_free(folder: Path) -> bool:
    fd = os.open(folder / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    fd = hold_lock(out)
    try:
        for extra in ((), ("--overwrite",)):
            status, stdout, err = train(capsys, NET, *FAST, "--out", out, *extra)
            assert status == 2 and one_line_error(err)
            assert f"{out} is in use by another run (pid {os.getpid()})" in err
            assert "epoch" not in stdout and not (out / "last.pt").exists()
    finally:
        os.close(fd)
    # Released: the folder can be used, and after the run it is free again for --resume.
    assert train(capsys, NET, *FAST, "--out", out)[0] == 0
    assert lock_is_free(out)
    status, _, err = train(capsys, NET, *FAST, "--out", out, "--resume", "--epochs", 2)
    assert status == 0, err
    assert checkpoint.load(out / "last.pt")["epoch"] == 2 and lock_is_free(out)


def test_the_lock_is_released_after_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    status, _, err = train(capsys, NET, "--data", "imagenet", "--out", out)   # fails inside the run
    assert status == 2 and "unknown data source" in err and lock_is_free(out)
    status, _, err = train(capsys, NET, *FAST, "--lr", 1e30, "--out", out)     # diverges
    assert status == 1 and lock_is_free(out)


def test_a_running_process_keeps_its_folder_even_in_its_first_epoch(tmp_path, capsys):
    """The old check looked for last.pt only, so a second run got in during epoch 1."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnndsl", "train", NET, "--data", "synthetic:4000",
                             "--epochs", "50", "--batch-size", "2", "--out", str(out)],
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (out / ".lock").exists() and (out / ".lock").read_text().strip() == str(proc.pid):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        status, _, err = train(capsys, NET, *FAST, "--out", out, "--overwrite")
        assert status == 2 and f"is in use by another run (pid {proc.pid})" in err
    finally:
        proc.kill()   # kill -9: the operating system drops the lock with the process
        proc.wait()
    assert train(capsys, NET, *FAST, "--out", out, "--overwrite")[0] == 0


# --- 3. a bad --out is refused before any work -------------------------------------------


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if a run gets as far as loading data."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before --out was checked")
    monkeypatch.setattr(loop, "load_data", refuse)


@pytest.mark.parametrize("kind", ["file", "under-file", "dev-null", "proc"])
def test_a_bad_out_is_refused_at_once(tmp_path, capsys, no_data, kind):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = {"file": a_file, "under-file": a_file / "sub", "dev-null": Path("/dev/null"),
           "proc": Path("/proc/cnndsl-no-such/run")}[kind]
    status, stdout, err = train(capsys, NET, *FAST, "--out", out)
    assert status == 2 and one_line_error(err) and f"--out {out}" in err and not stdout
    assert a_file.read_text() == "not a folder"


def test_a_read_only_out_is_refused_at_once(tmp_path, capsys, no_data):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            reason = "running as root: a read-only folder is writable anyway (the /proc case covers it)"
            print(f"SKIPPED read-only --out check: {reason}")
            pytest.skip(reason)
        status, _, err = train(capsys, NET, *FAST, "--out", ro / "run")
        assert status == 2 and one_line_error(err) and "cannot" in err
    finally:
        ro.chmod(0o755)


# --- 4. divergence on the last step; strict JSON ------------------------------------------


@pytest.mark.parametrize("split", ["val", "no-val"])
def test_divergence_in_the_last_step_is_caught(tmp_path, capsys, split):
    # One step (batch = the whole training set): the training loss it reports was computed
    # before the update, so only the validation (or a check) loss shows the damage.
    out = tmp_path / "run"
    extra = ("--val-fraction", 0) if split == "no-val" else ()
    status, _, err = train(capsys, NET, "--data", "synthetic:64", "--epochs", 1, "--batch-size", 64,
                           "--lr", 1e30, "--out", out, *extra)
    assert status == 1 and one_line_error(err)
    assert "training diverged:" in err and "became nan after epoch 1" in err
    assert "no checkpoint was written" in err
    assert not (out / "last.pt").exists() and not (out / "summary.json").exists()
    assert not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text() == ""


def test_json_has_null_never_nan(tmp_path):
    assert rundir.dumps({"a": float("nan"), "b": [1.5, float("inf"), -float("inf")], "c": None}) \
        == '{"a": null, "b": [1.5, null, null], "c": null}'
    assert strict_json(rundir.dumps({"x": float("nan")}, indent=2)) == {"x": None}


def test_an_old_nan_in_metrics_becomes_null_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, NET, *FAST, "--out", out)[0] == 0
    path = out / "metrics.jsonl"
    path.write_text(path.read_text().replace('"val_loss": ', '"val_loss": NaN, "x": '))
    assert train(capsys, NET, *FAST, "--out", out, "--resume", "--epochs", 2)[0] == 0
    rows = [strict_json(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["val_loss"] is None
    check_json_files(out)


# --- 5. empty splits ---------------------------------------------------------------------


def test_an_empty_test_split_ends_normally(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, err = train(capsys, NET, "--data", "synthetic:4", "--epochs", 1, "--out", out)
    assert status == 0 and "Traceback" not in err, err
    assert "the test split is empty" in stdout
    summary = strict_json((out / "summary.json").read_text())
    assert summary["test_acc"] is None and summary["test_loss"] is None and summary["test_images"] == 0
    assert summary.get("test_top5") is None
    check_json_files(out)


def test_an_empty_validation_split_works(tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, err = train(capsys, NET, *FAST, "--val-fraction", 0, "--out", out)
    assert status == 0, err
    row = strict_json((out / "metrics.jsonl").read_text())
    assert row["val_loss"] is None and row["val_acc"] is None and "no val split" in stdout
    assert strict_json((out / "summary.json").read_text())["best_val_acc"] is None


def test_a_folder_of_one_image(tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    pil.new("L", (8, 8), 128).save(tmp_path / "data" / "cat" / "one.png")
    out = tmp_path / "run"
    status, stdout, err = train(capsys, "INPUT(1, 8, 8) -> CONV3-4 -> RELU -> FC-2",
                                "--data", f"folder:{tmp_path / 'data'}", "--epochs", 1, "--out", out)
    assert status == 0 and "Traceback" not in err, err
    assert "the test split is empty" in stdout
    summary = strict_json((out / "summary.json").read_text())
    assert summary["test_acc"] is None and summary["train_images"] == 1 and summary["val_images"] == 0


# --- 6. torchrun's variables -------------------------------------------------------------


@pytest.mark.parametrize("var, value", [("WORLD_SIZE", "abc"), ("RANK", "x1"), ("LOCAL_RANK", "1.5"),
                                        ("WORLD_SIZE", "0"), ("RANK", "-1")])
def test_a_bad_torchrun_variable_is_one_line(tmp_path, capsys, monkeypatch, no_data, var, value):
    monkeypatch.setenv(var, value)
    status, _, err = train(capsys, NET, *FAST, "--out", tmp_path / "run")
    assert status == 2 and one_line_error(err) and var in err and repr(value) in err


def test_a_rank_beyond_the_world_is_one_line(tmp_path, capsys, monkeypatch, no_data):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    status, _, err = train(capsys, NET, *FAST, "--out", tmp_path / "run")
    assert status == 2 and one_line_error(err) and "RANK=2" in err


# --- 7. resuming with another optimiser ---------------------------------------------------


def test_resume_with_another_optimizer_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, NET, *FAST, "--optimizer", "sgd", "--out", out)[0] == 0
    before = (out / "last.pt").read_bytes()
    status, _, err = train(capsys, NET, *FAST, "--out", out, "--resume", "--epochs", 2,
                           "--optimizer", "adam")
    assert status == 2 and one_line_error(err)
    assert "trained with --optimizer sgd" in err and "--overwrite" in err
    assert (out / "last.pt").read_bytes() == before
    # The same optimiser named again is fine.
    assert train(capsys, NET, *FAST, "--out", out, "--resume", "--epochs", 2, "--optimizer", "sgd")[0] == 0


def test_the_loop_itself_refuses_a_foreign_optimizer_state(tmp_path, capsys):
    from cnndsl.errors import CnnDslError
    from cnndsl.lang.spec import parse
    from cnndsl.training.settings import make_config

    out = tmp_path / "run"
    assert train(capsys, NET, *FAST, "--optimizer", "sgd", "--out", out)[0] == 0
    state = checkpoint.load(out / "last.pt")
    config = make_config(parse(NET), {"optimizer": "adam", "epochs": 2}, base=state["config"])
    with pytest.raises(CnnDslError, match="trained with --optimizer sgd"):
        loop.train(parse(NET), config, out, resume=state)


# --- 8. a damaged metrics.jsonl ------------------------------------------------------------


def test_garbage_in_metrics_is_dropped_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(capsys, NET, *FAST, "--out", out)[0] == 0
    path = out / "metrics.jsonl"
    good = path.read_bytes()
    junk = [b'{"epoch": "x"}', b"\xff\xfe\x00\x01garbage", b"[1, 2, 3]", b'{"epoch": true}',
            b'{"epoch": 1.0}', b'{"no": "epoch"}', b"[" * 200_000, b"a" * (3 * 2 ** 20),
            good.strip(), b'{"epoch": 7}', b"null", b'{"epoch": 0}']
    path.write_bytes(b"\n".join(junk) + b"\n" + good + b'{"epoch": 2, "torn')
    status, _, err = train(capsys, NET, *FAST, "--out", out, "--resume", "--epochs", 2)
    assert status == 0 and "Traceback" not in err, err
    rows = [strict_json(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert path.read_bytes().startswith(good)   # the good record of epoch 1, byte for byte


def test_metrics_are_read_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "METRICS_LIMIT", 64 * 1024)
    monkeypatch.setattr(loop, "LINE_LIMIT", 4 * 1024)
    path = tmp_path / "metrics.jsonl"
    rec = lambda e: json.dumps({"epoch": e, "train_loss": 1.0}) + "\n"
    path.write_text(rec(1) + ("z" * 100 + "\n") * 2000 + rec(2) + rec(3))   # epoch 2 is past 64 KiB
    notes = []
    loop.truncate_metrics(path, 3, Runtime(torch.device("cpu")), say=notes.append)
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1]
    assert len(notes) == 1 and "read only its first" in notes[0]
    # Needed records come first: once the checkpoint's epoch is read, the rest is not.
    path.write_text(rec(1) + "y" * (10 * 1024 * 1024) + "\n")
    loop.truncate_metrics(path, 1, Runtime(torch.device("cpu")), say=notes.append)
    assert path.read_text() == rec(1) and len(notes) == 1


# --- 9. best.pt and last.pt stay consistent when killed between them ----------------------


class Killed(BaseException):
    """Stands in for kill -9 between two file writes."""


def test_best_is_written_before_last_and_never_behind_it(tmp_path, capsys, monkeypatch):
    real_save = checkpoint.save
    order = []

    def recording(path, state):
        order.append((Path(path).name, state["epoch"]))
        real_save(path, state)
    monkeypatch.setattr(checkpoint, "save", recording)
    args = (NET, "--data", "synthetic:128", "--epochs", 2, "--val-fraction", 0, "--optimizer", "adam",
            "--lr", 3e-3, "--batch-size", 16)
    assert train(capsys, *args, "--out", tmp_path / "whole")[0] == 0
    assert order == [("best.pt", 1), ("last.pt", 1), ("best.pt", 2), ("last.pt", 2)], order

    # Killed right after each write in turn: last.pt never names a best newer than best.pt.
    for k in range(1, len(order)):
        out, count = tmp_path / f"killed{k}", [0]

        def dying(path, state):
            real_save(path, state)
            count[0] += 1
            if count[0] == k:
                raise Killed
        monkeypatch.setattr(checkpoint, "save", dying)
        with pytest.raises(Killed):
            main(["train", *map(str, args), "--out", str(out)])
        capsys.readouterr()
        best, last = checkpoint.load(out / "best.pt"), (out / "last.pt")
        if last.exists():
            last = checkpoint.load(last)
            assert last["best"]["epoch"] <= best["epoch"] and last["epoch"] <= best["epoch"]
        monkeypatch.setattr(checkpoint, "save", real_save)
        assert lock_is_free(out)
        if (out / "last.pt").exists():
            assert train(capsys, *args, "--out", out, "--resume")[0] == 0
            assert checkpoint.load(out / "best.pt")["epoch"] == 2


def test_overwrite_removes_the_old_runs_checkpoints_once_the_new_one_starts(tmp_path, capsys):
    # A run that diverges in its first epoch after --overwrite must not leave the old
    # last.pt beside the new (empty) metrics: the folder would describe two runs at once.
    from cnndsl.cli import main

    net, out = "INPUT(1, 8, 8) -> CONV3-4 -> RELU -> FC-10", tmp_path / "run"
    common = ["--data", "synthetic:64", "--epochs", "1", "--out", str(out)]
    assert main(["train", net, *common]) == 0
    assert (out / "last.pt").exists() and (out / "summary.json").exists()
    status = main(["train", net, *common, "--overwrite", "--lr", "1e30"])
    capsys.readouterr()
    assert status == 1   # diverged
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    assert not (out / "summary.json").exists()
    assert (out / "metrics.jsonl").read_text() == ""
