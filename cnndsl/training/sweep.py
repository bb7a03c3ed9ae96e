"""`cnndsl sweep`: train the members of a family and find the best one, with Optuna.

The candidates are the members that the static analysis (analysis.family) keeps: every
distinct network that survives it, never a pruned one and never one network twice.

* Exhaustive: with no more candidates than `--trials`, each is enqueued and trained once.
* Sampled: otherwise TPE (seeded) suggests the family's variables. A suggestion that is
  pruned statically is told to Optuna as pruned, without training; one that is a network
  already trained (or training) is told as that trial's result (or as pruned), without
  training. After `MAX_SKIPS` such suggestions in a row, an untrained candidate is
  enqueued, so the sweep always moves on and ends.
* Budget: successive halving (ASHA) over epochs: each trial reports its validation
  accuracy after every epoch, through `train(on_epoch=...)`, and stops when the pruner
  says so.

The study lives in `DIR/study.db` (SQLite) or in `--storage URL`, named after the family
and a digest of what defines it (spec text, variables, limits, training settings), so
the same command joins the same study: rerun after a kill, or on several machines. A
trial that a killed process left running is marked failed and its member trained again;
a finished trial's member is never trained again. `--trials` counts the members trained
in the whole study, not in one process.

Trial k trains into `DIR/trials/kkkk/`. After each trial the sweep rewrites, atomically:
`leaderboard.csv`/`.json`, `pareto.png`, and `best/` (`spec.yaml`, `best.pt`).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import socket
import time
import warnings
from pathlib import Path

import yaml

from ..errors import CnnDslError
from ..lang import family
from . import checkpoint, rundir

MISSING = "cnndsl sweep needs Optuna: pip install 'cnndsl[sweep]'"
MAX_SKIPS = 20          # suggestions in a row that train nothing before one is enqueued
HEARTBEAT_SECONDS = 60  # a trial silent for GRACE_SECONDS (another machine died) fails
GRACE_SECONDS = 300
HARDWARE = ("device", "workers", "bf16", "channels_last", "compile", "tensorboard")   # not in the digest


def require_optuna():
    """optuna, or the one-line message that says how to install it (matplotlib too)."""
    try:
        import matplotlib   # noqa: F401  (pareto.png)
        import optuna
    except ImportError:
        raise CnnDslError(MISSING) from None
    return optuna


@dataclasses.dataclass
class Sweep:
    spec: object                 # the family, with --set applied
    analysis: object             # analysis.family.FamilyAnalysis
    flags: dict                  # Config field → value given on the command line (None: not)
    out: Path
    trials: int                  # members to train in the whole study
    limits: object               # analysis.family.Limits: part of the study's identity
    storage: str | None = None
    say: object = print

    def __post_init__(self):
        self.variables = self.analysis.variables
        self.names = list(self.variables)
        # every member's values (duplicates too) → the distinct member it is
        self.lookup = {}
        for m in self.analysis.members:
            for values in [m.values, *m.duplicates]:
                self.lookup[self.key(values)] = m
        self.candidates = self.analysis.survivors()
        self.exhaustive = len(self.candidates) <= self.trials
        self.budget = len(self.candidates) if self.exhaustive else self.trials
        self.trained = {}   # trial number → the member it trained (see rows())

    def key(self, values: dict) -> str:
        return json.dumps([values[n] for n in self.names])

    def member_spec(self, values: dict):
        """The member as an ordinary spec: every variable given its one value."""
        return self.spec.with_values([(n, family.Variable(n, (v,))) for n, v in values.items()])

    # --- the study ------------------------------------------------------------------

    def study_name(self) -> str:
        """The family's name and a digest of everything that defines the sweep, so that
        the same command (on any machine) joins the same study."""
        defining = {"text": self.spec.text, "variables": family.describe(self.variables),
                    "limits": dataclasses.asdict(self.limits),
                    "flags": {k: v for k, v in sorted(self.flags.items())
                              if v is not None and k not in HARDWARE}}
        digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode())
        return f"{rundir.default_name(self.spec.name)}-{digest.hexdigest()[:12]}"

    def open_study(self, seed: int):
        optuna = require_optuna()
        # Optuna logs a failed trial with its traceback; the CLI prints the error in one line.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        url = self.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        try:
            with warnings.catch_warnings():   # the heartbeat is "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                                     grace_period=GRACE_SECONDS)
        except Exception as e:   # SQLAlchemy raises many kinds: a bad URL, no driver, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CnnDslError(f"--storage {url}: cannot open it as an Optuna storage ({first}); "
                              f"give a database URL such as sqlite:///sweep.db") from None
        return optuna.create_study(
            study_name=self.study_name(), storage=storage, direction="maximize",
            load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.SuccessiveHalvingPruner())

    # --- the loop -------------------------------------------------------------------

    def run(self, seed: int, train) -> None:
        """Train members until the budget is spent or every candidate has been trained."""
        study = self.open_study(seed)
        self.fail_abandoned(study)
        rng = random.Random(seed)
        skips = 0
        while True:
            trials = study.get_trials(deepcopy=False)
            claimed = self.claimed(trials)
            trained = sum(1 for t in claimed.values() if t.user_attrs.get("kind") == "trained")
            todo = [m for m in self.candidates if self.key(m.values) not in claimed]
            if trained >= self.budget or not todo:
                break
            if self.exhaustive:   # the cheapest untrained candidate (failed ones too)
                self.enqueue(study, todo[0].values)
            else:
                self.requeue_failed(study, trials, claimed)
                if skips >= MAX_SKIPS:
                    self.enqueue(study, rng.choice(todo).values)
            study.optimize(lambda trial: self.objective(trial, study, train), n_trials=1)
            last = study.get_trials(deepcopy=False)[-1]
            skips = 0 if last.user_attrs.get("kind") == "trained" else skips + 1
            self.write_outputs(study)
        self.write_outputs(study)

    def claimed(self, trials) -> dict:
        """Member key → the trial that trained it, or trains it now (finished first)."""
        import optuna

        found = {}
        live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                optuna.trial.TrialState.RUNNING)
        for t in trials:
            if t.state in live and t.user_attrs.get("kind") == "trained":
                found.setdefault(t.user_attrs["member"], t)
        return found

    def fail_abandoned(self, study) -> None:
        """Mark failed the trials that a killed process left running. The default storage
        sits in DIR, which this process has locked: every running trial there is
        abandoned. A shared storage's are abandoned when they ran on this machine in a
        process that is gone (other machines': Optuna's heartbeat)."""
        import optuna

        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            mine = t.user_attrs.get("host") == host and not _alive(t.user_attrs.get("pid"))
            if self.storage is None or mine:
                study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
                self.say(f"trial {t.number} was left running by a process that ended: "
                         f"marked failed; its member trains again")

    def requeue_failed(self, study, trials, claimed) -> None:
        """A failed trial's member (killed, interrupted) is trained again, first."""
        import optuna

        for t in trials:
            member = t.user_attrs.get("member")
            if t.state == optuna.trial.TrialState.FAIL and member and member not in claimed:
                self.enqueue(study, self.lookup[member].values)

    def enqueue(self, study, values: dict) -> None:
        """Queue `values` next, unless a trial waits with them already."""
        import optuna

        waiting = {self.key(t.params) for t in study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
            if len(t.params) == len(self.names)}
        if self.key(values) not in waiting:
            study.enqueue_trial(values)

    # --- one trial ------------------------------------------------------------------

    def objective(self, trial, study, train) -> float:
        import optuna

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        values = {n: trial.suggest_categorical(n, list(v.values)) for n, v in self.variables.items()}
        member = self.lookup[self.key(values)]
        if member.pruned:
            from ..analysis.family import PRUNED

            trial.set_user_attr("kind", "pruned statically")
            trial.set_user_attr("reason", PRUNED[member.pruned])
            raise optuna.TrialPruned()
        key = self.key(member.values)
        earlier = self.claimed(study.get_trials(deepcopy=False)).get(key)
        if earlier is not None:
            trial.set_user_attr("kind", "duplicate")
            trial.set_user_attr("duplicate_of", earlier.number)
            if earlier.state == optuna.trial.TrialState.COMPLETE:
                return earlier.value   # what TPE should learn of this network
            raise optuna.TrialPruned()
        trial.set_user_attr("member", key)
        trial.set_user_attr("kind", "trained")
        return self.train_member(trial, member, train)

    def train_member(self, trial, member, train) -> float:
        import optuna

        from .loop import Diverged
        from .settings import make_config

        spec = self.member_spec(member.values)
        config = make_config(spec, self.flags)
        out = self.out / "trials" / f"{trial.number:04d}"
        out.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("dir", str(out.relative_to(self.out)))
        self.say(f"trial {trial.number}: {spec.name} ({member.params:,} params, "
                 f"{member.macs:,} MACs)")
        best = {"val_acc": None}

        def on_epoch(epoch: int, metrics: dict) -> None:
            acc = metrics["val_acc"] if metrics["val_acc"] is not None else metrics["train_acc"]
            best["val_acc"] = acc if best["val_acc"] is None else max(best["val_acc"], acc)
            trial.set_user_attr("epochs", epoch)
            trial.set_user_attr("val_acc", best["val_acc"])
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            trial.report(acc, epoch)
            if trial.should_prune():
                self.say(f"trial {trial.number}: pruned by successive halving after "
                         f"epoch {epoch} (validation accuracy {acc:.4f})")
                raise optuna.TrialPruned()

        started = time.perf_counter()
        try:
            summary = train(spec, config, out, on_epoch=on_epoch)
        except Diverged as e:
            trial.set_user_attr("diverged", str(e))
            self.say(f"trial {trial.number}: {e}")
            raise optuna.TrialPruned() from None
        trial.set_user_attr("test_acc", summary["test_acc"])
        # the trial's whole time: data, model, epochs and the test, not the epochs alone
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        self.say(f"trial {trial.number}: validation accuracy {best['val_acc']:.4f}, "
                 f"test accuracy {summary['test_acc']:.4f}")
        return best["val_acc"]

    # --- outputs --------------------------------------------------------------------

    def rows(self, study) -> list[dict]:
        """One row per trained trial that finished (completed or stopped early)."""
        import optuna

        rows = []
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get("kind") != "trained" or t.state not in (
                    optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                continue
            member = self.lookup[t.user_attrs["member"]]
            self.trained[t.number] = member
            a = t.user_attrs
            state = ("complete" if t.state == optuna.trial.TrialState.COMPLETE else
                     "diverged" if "diverged" in a else "pruned")
            rows.append({"trial": t.number, **{n: family.value_text(member.values[n]) for n in self.names},
                         "params": member.params, "macs": member.macs,
                         "val_acc": a.get("val_acc"), "test_acc": a.get("test_acc"),
                         "seconds": a.get("seconds"), "state": state, "epochs": a.get("epochs"),
                         "dir": a.get("dir"), "name": self.member_spec(member.values).name})
        rows.sort(key=lambda r: (r["state"] != "complete", -(r["val_acc"] or 0), r["macs"]))
        return rows

    def write_outputs(self, study) -> None:
        rows = self.rows(study)
        _write_bytes(self.out / "leaderboard.json", rundir.dumps(rows, indent=1).encode() + b"\n")
        _write_bytes(self.out / "leaderboard.csv", _csv(rows, self.names))
        _write_bytes(self.out / "pareto.png", pareto_png(rows, self.spec.name))
        best = next((r for r in rows if r["state"] == "complete"), None)
        if best is not None:
            self.write_best(best)

    def write_best(self, row: dict) -> None:
        folder = self.out / "best"
        folder.mkdir(exist_ok=True)
        member = self.trained[row["trial"]]
        spec = self.member_spec(member.values)
        name, text = best_spec_text(self.spec, spec, member.values, self.flags)
        _write_bytes(folder / name, text.encode())
        with open(self.out / row["dir"] / "best.pt", "rb") as source:
            checkpoint.atomic_write(folder / "best.pt", lambda f: shutil.copyfileobj(source, f))
        _write_bytes(folder / "member.json", rundir.dumps(row, indent=1).encode() + b"\n")


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # it exists, owned by someone else
        return True
    return True


def _write_bytes(path: Path, data: bytes) -> None:
    checkpoint.atomic_write(path, lambda f: f.write(data))


def _csv(rows: list[dict], names: list[str]) -> bytes:
    columns = ["trial", *names, "params", "macs", "val_acc", "test_acc", "seconds", "state",
               "epochs", "dir", "name"]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def pareto_front(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The (MACs, accuracy) points no other beats: none with MACs ≤ and accuracy ≥, one of
    them strictly. By MACs, each point more accurate than every cheaper one.

    >>> pareto_front([(10, 0.5), (20, 0.4), (30, 0.9), (5, 0.5), (30, 0.95)])
    [(5, 0.5), (30, 0.95)]
    """
    front, best = [], None
    for macs, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if best is None or acc > best:
            front.append((macs, acc))
            best = acc
    return front


def pareto_png(rows: list[dict], title: str) -> bytes:
    """Test accuracy against MACs (log scale), the Pareto front marked: PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(max(r["macs"], 1), r["test_acc"]) for r in rows if r["test_acc"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    try:
        if points:
            ax.scatter(*zip(*points), s=18, color="tab:blue", alpha=0.6, label="trained members")
            front = pareto_front(points)
            ax.plot(*zip(*front), "o-", color="tab:red", label="Pareto front")
            ax.set_xscale("log")
            ax.legend(loc="lower right")
        ax.set_xlabel("MACs per image")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{title}: {len(points)} members trained to the end")
        ax.grid(True, which="both", alpha=0.3)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def best_spec_text(family_spec, member_spec, values: dict, flags: dict) -> tuple[str, str]:
    """(file name, text) of the best member as a runnable spec.

    A YAML family: its spec with `family:` giving every variable its one value, the
    member's name, and `train:` with the settings the sweep trained it with (`cnndsl
    train DIR/best/spec.yaml` repeats the trial). A DSL text: `spec.cnn`, as written,
    with the `--set` flags that pick the member in a comment at its top."""
    from .settings import SPEC_KEYS, make_config

    if Path(family_spec.path or "").suffix not in (".yaml", ".yml"):
        flags_text = family.pick_flags({n: family.Variable(n, (v,)) for n, v in values.items()})
        return "spec.cnn", (f"# {member_spec.name}: train it with\n"
                            f"#   cnndsl train spec.cnn {flags_text}\n{family_spec.text}")
    document = yaml.safe_load(family_spec.text)
    document["name"] = member_spec.name
    document["family"] = dict(values)
    config = dataclasses.asdict(make_config(member_spec, flags))
    train: dict = {}
    for dotted, field in SPEC_KEYS.items():
        value = config[field]
        if value is None or value == {}:
            continue
        head, _, sub = dotted.partition(".")
        if sub:
            train.setdefault(head, {})[sub] = value
        else:
            train[head] = value
    document["train"] = train
    return "spec.yaml", yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)


class _BlockDumper(yaml.SafeDumper):
    """Writes text of several lines (the net) as a `|` block, as people write it."""


def _text(dumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _text)
