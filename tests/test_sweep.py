"""`cnndsl sweep`: exhaustive and sampled sweeps of a tiny family, resuming after kill -9,
successive halving stopping a poor trial, the outputs (leaderboard, pareto.png, best/),
and the one-line refusals. Tiny data: 200 synthetic 8×8 images, 2 epochs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnndsl.analysis.family import Limits, analyze_family
from cnndsl.cli import main
from cnndsl.cli.common import EXIT_OK, EXIT_USAGE
from cnndsl.lang.spec import load
from helpers import ROOT, run_main

optuna = pytest.importorskip("optuna", reason="cnndsl sweep needs the `sweep` extra (optuna)")
pytest.importorskip("matplotlib", reason="cnndsl sweep needs the `sweep` extra (matplotlib)")

# N = 0 makes c irrelevant, so the 3 · 2 · 2 = 12 members are 10 distinct networks:
# N=0 with the pool or without (2), and N=1,2 × c=4,8 × pool (8).
FAMILY = """\
name: tiny
input: [1, 8, 8]
family:
  N: 0..2
  c: [4, 8]
net: |
  INPUT -> [CONV3-{c} -> RELU]*N -> POOL? -> FC-10
train:
  epochs: 2
  batch_size: 32
  optimizer: {name: adam, lr: 0.01}
"""
DATA = "synthetic:200"
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def family(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(FAMILY)
    return path


def sweep(capsys, family, out, *flags):
    return run_main(capsys, "sweep", family, "--data", DATA, "--out", out, *flags)


def leaderboard(out: Path) -> list[dict]:
    return json.loads((out / "leaderboard.json").read_text())


def study_trials(out: Path):
    [summary] = optuna.get_all_study_summaries(f"sqlite:///{out / 'study.db'}")
    return optuna.load_study(study_name=summary.study_name,
                             storage=f"sqlite:///{out / 'study.db'}").get_trials()


def trained(out: Path) -> list:
    """The trials that trained a member and finished (completed, or stopped early)."""
    return [t for t in study_trials(out) if t.user_attrs.get("kind") == "trained"
            and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def test_exhaustive_trains_each_surviving_member_once(capsys, family, tmp_path):
    out = tmp_path / "sweep"
    # MACs of N=2, c=8 (the docs' counting: CONV k·k·C_in·C_out·H·W, FC in·out), 8×8 kept
    # by the pads: 9·1·8·64 + 9·8·8·64 + (8·8·8 or 8·4·4)·10 = 4,608 + 36,864 + 5,120 or
    # 1,280 = 46,592 or 42,752. --max-macs 40k prunes these two and no other member.
    status, stdout, _ = sweep(capsys, family, out, "--max-macs", "40000", "--trials", "20")
    assert status == EXIT_OK
    assert "2 distinct members" in stdout and "more MACs than --max-macs" in stdout
    assert "exhaustive" in stdout
    expected = analyze_family(load(family), limits=Limits(macs=40_000)).survivors()
    assert len(expected) == 8
    rows = leaderboard(out)
    assert len(rows) == 8
    assert {r["name"] for r in rows} == {f"tiny[N={m.values['N']},c={m.values['c']},pool?="
                                         f"{'yes' if m.values['pool?'] else 'no'}]" for m in expected}
    static = {(m.values["N"], m.values["c"], m.values["pool?"]): (m.params, m.macs) for m in expected}
    for r in rows:
        member = (int(r["N"]), int(r["c"]), r["pool?"] == "yes")
        assert (r["params"], r["macs"]) == static[member]
        assert r["state"] in ("complete", "pruned") and r["val_acc"] is not None
    # each distinct member trained once, and no trial trained a pruned member
    members = [t.user_attrs["member"] for t in trained(out)]
    assert len(members) == len(set(members)) == 8
    assert all(t.user_attrs.get("kind") == "trained" for t in study_trials(out))
    assert (out / "leaderboard.csv").read_text().splitlines()[0].startswith("trial,N,c,pool?,params,macs")
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best_row = json.loads((out / "best" / "member.json").read_text())
    assert best_row == rows[0] and best_row["state"] == "complete"


def test_best_member_evaluates_and_trains(capsys, family, tmp_path):
    out = tmp_path / "sweep"
    assert sweep(capsys, family, out, "--set", "N=1", "--set", "c=4")[0] == EXIT_OK
    best = out / "best"
    row = json.loads((best / "member.json").read_text())
    status, stdout, err = run_main(capsys, "eval", best / "best.pt", "--json")
    assert status == EXIT_OK, err
    assert json.loads(stdout)["images"] == 40   # the 40 test images of synthetic:200
    # the spec: the family with every variable one value, and the sweep's settings
    text = (best / "spec.yaml").read_text()
    assert "data: synthetic:200" in text and f"name: {row['name']}" in text
    status, _, err = run_main(capsys, "train", best / "spec.yaml", "--out", tmp_path / "again")
    assert status == EXIT_OK, err
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["spec"] == row["name"] and again["macs"] == row["macs"]


def test_sampled_trains_only_the_budget(capsys, family, tmp_path):
    out = tmp_path / "sweep"
    status, stdout, _ = sweep(capsys, family, out, "--trials", "3", "--seed", "1")
    assert status == EXIT_OK
    assert "sampled: 3 of them" in stdout
    members = [t.user_attrs["member"] for t in trained(out)]
    assert len(members) == len(set(members)) == 3
    assert len(leaderboard(out)) == 3
    # a rerun of the same command finds the budget spent: nothing more is trained
    assert sweep(capsys, family, out, "--trials", "3", "--seed", "1")[0] == EXIT_OK
    assert len(trained(out)) == 3
    # a larger budget continues the same study
    assert sweep(capsys, family, out, "--trials", "5", "--seed", "1")[0] == EXIT_OK
    members = [t.user_attrs["member"] for t in trained(out)]
    assert len(members) == len(set(members)) == 5


def test_killed_sweep_resumes_without_training_a_member_twice(capsys, family, tmp_path):
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "cnndsl", "sweep", str(family), "--data", DATA,
            "--out", str(out), "--set", "N=1", "--epochs", "3"]
    process = subprocess.Popen(argv, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:   # kill -9 once trial 0 has finished and trial 1 has started
        deadline = time.monotonic() + 120
        while not (out / "trials" / "0001").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the sweep did not reach its second trial"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    first = (out / "trials" / "0000" / "metrics.jsonl").read_text()
    running = [t for t in study_trials(out) if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.number for t in running] == [1]

    status, stdout, _ = sweep(capsys, family, out, "--set", "N=1", "--epochs", "3")
    assert status == EXIT_OK
    assert "trial 1 was left running by a process that ended: marked failed" in stdout
    states = {t.number: t.state for t in study_trials(out)}
    assert states[1] == optuna.trial.TrialState.FAIL
    members = [t.user_attrs["member"] for t in trained(out)]
    assert len(members) == len(set(members)) == 4   # N=1: c=4,8 × pool: each once
    assert trained(out)[0].number == 0              # trial 0 kept, its folder untouched
    assert (out / "trials" / "0000" / "metrics.jsonl").read_text() == first
    killed = [t for t in study_trials(out) if t.number == 1][0].user_attrs["member"]
    assert killed in members                        # the killed trial's member trained again
    assert len(leaderboard(out)) == 4


def test_successive_halving_stops_a_poor_trial(capsys, family, tmp_path):
    """A stand-in for train() reports 0.9 validation accuracy for every member but the
    one with the most MACs, which the exhaustive order (by MACs) trains last: it reports
    0.05, the worst value at the first rung, and successive halving stops it there."""
    from cnndsl.analysis.family import Limits as L
    from cnndsl.training import sweep as sweeping
    from cnndsl.training.settings import make_config

    spec = load(family)
    result = analyze_family(spec, limits=L())
    worst = result.survivors()[-1]
    epochs_run = {}

    def fake_train(member, config, out, on_epoch):
        poor = member.name == sweeping.Sweep.member_spec(job, worst.values).name
        epochs_run[member.name] = 0
        for epoch in range(1, config.epochs + 1):
            epochs_run[member.name] = epoch
            (out / "best.pt").write_bytes(b"weights")
            on_epoch(epoch, {"val_acc": 0.05 if poor else 0.9, "train_acc": 0.5})
        return {"test_acc": 0.9, "seconds": 0.0}

    out = tmp_path / "sweep"
    out.mkdir()
    flags = {"data": DATA, "epochs": 4}
    job = sweeping.Sweep(spec, result, flags, out, trials=20, limits=L(), say=lambda _: None)
    job.run(make_config(spec, flags).seed, fake_train)
    poor_name = job.member_spec(worst.values).name
    assert epochs_run[poor_name] == 1
    assert sum(1 for n, e in epochs_run.items() if e == 4) >= 1
    row = next(r for r in leaderboard(out) if r["name"] == poor_name)
    assert (row["state"], row["epochs"]) == ("pruned", 1)


def test_the_hook_sees_every_epoch_and_may_stop_the_run(tmp_path):
    from cnndsl.training.loop import train
    from cnndsl.training.settings import make_config

    spec = load_member(tmp_path)
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(epoch, metrics):
        seen.append((epoch, metrics["epoch"], metrics["val_acc"] is not None))
        if epoch == 2:
            raise Stop

    config = make_config(spec, {"data": DATA, "epochs": 4})
    with pytest.raises(Stop):
        train(spec, config, tmp_path / "run", on_epoch=on_epoch)
    assert seen == [(1, 1, True), (2, 2, True)]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and (tmp_path / "run" / "last.pt").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


def load_member(tmp_path):
    path = tmp_path / "member.yaml"
    path.write_text(FAMILY)
    from cnndsl.lang.family import parse_set
    return load(path).with_values([parse_set("N=1"), parse_set("c=4"), parse_set("pool?=yes")])


def test_missing_optuna_is_one_line(capsys, family, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)   # `import optuna` raises ImportError
    status, _, err = sweep(capsys, family, tmp_path / "sweep")
    assert status == EXIT_USAGE
    assert err == "error: cnndsl sweep needs Optuna: pip install 'cnndsl[sweep]'\n"
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("flags, words", [
    (("--set", "N=1", "--set", "c=4", "--set", "pool?=no"), "is a single network, not a family: "
                                                           "train it with `cnndsl train"),
    (("--max-macs", "10"), "every member of tiny is pruned statically, nothing to train: "
                           "10 more MACs than --max-macs"),
    (("--storage", "nosuchdb://x/y"), "--storage nosuchdb://x/y: cannot open it"),
])
def test_refusals_are_one_line(capsys, family, tmp_path, flags, words):
    status, _, err = sweep(capsys, family, tmp_path / "sweep", *flags)
    assert status != EXIT_OK
    assert words in err and err.count("\n") == 1, err


def test_trials_below_one_is_a_usage_error(capsys, family, tmp_path):
    with pytest.raises(SystemExit) as exit:
        main(["sweep", str(family), "--data", DATA, "--trials", "0"])
    assert exit.value.code == EXIT_USAGE
    assert "--trials: expected a positive whole number, got '0'" in capsys.readouterr().err
