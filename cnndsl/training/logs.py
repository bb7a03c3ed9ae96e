"""A run's logs beside metrics.jsonl: metrics.csv always, TensorBoard's event files with
`--tensorboard`. Both are derived from the epoch records of metrics.jsonl, the one
source of truth: the CSV's columns are a record's keys (flattened, see curves.flatten),
TensorBoard's tags are named from them (`tag`).

Nothing written is lost when a run is interrupted: each epoch's row and scalars are
appended and flushed right after its metrics.jsonl line. A resumed run continues the
same logs without repeating an epoch: metrics.csv is rewritten from metrics.jsonl (cut
back to the checkpoint's epoch) before the first new epoch; TensorBoard's writer is
opened with `purge_step` at the first new epoch, so TensorBoard hides whatever an
interrupted epoch had logged after the checkpoint (its events of that step and later,
in the older event files). A run that had no TensorBoard events yet (the flag given
only on resuming) gets the epochs so far replayed from metrics.jsonl.

Only the process that writes the run's files (rank 0 under torchrun) opens these.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

from ..errors import CnnDslError
from . import checkpoint, curves, rundir

INSTALL_TENSORBOARD = "pip install 'cnndsl[tensorboard]'"
SPLITS = ("train", "val")   # key prefixes that name a split: train_loss → loss/train
FORMULA_START = tuple("=+-@\t\r")   # text a spreadsheet would run as a formula


def require(tensorboard: bool) -> None:
    """Before any work: the one-line message when TensorBoard is asked for and missing."""
    if tensorboard:
        _summary_writer()


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:   # torch says "TensorBoard logging requires TensorBoard ..."
        raise CnnDslError(f"--tensorboard needs the tensorboard package: {INSTALL_TENSORBOARD}") from None
    return SummaryWriter


class RunLogs:
    """The logs of one run: `write` each epoch's record after its metrics.jsonl line."""

    def __init__(self, out: Path, tensorboard: bool, done: int, say=None):
        """Open the logs of the run in `out` that has completed `done` epochs (metrics.jsonl
        already cut back to them); `say` prints a note for the run's log."""
        history = _history(out)
        for note in history.notes(out / rundir.METRICS_NAME) if say else ():
            say(note)
        with _writing(out / rundir.CSV_NAME):
            self.writers = [CsvLog(out / rundir.CSV_NAME, out, history.records)]
        if tensorboard:
            with _writing(out / rundir.TENSORBOARD_DIR):
                self.writers.append(TensorBoardLog(out, done, history.records))

    def write(self, record: dict) -> None:
        flat = curves.flatten(record)
        for writer in self.writers:
            with _writing(writer.path):
                writer.write(flat)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def _history(out: Path) -> curves.Curves:
    """The epoch records so far: none when the run has not written metrics.jsonl yet."""
    if not (out / rundir.METRICS_NAME).exists():
        return curves.Curves([], 0, False)
    return curves.read_curves(out)


@contextlib.contextmanager
def _writing(path: Path):
    """A log that cannot be written (a full disk, a folder where the file goes) is one line."""
    try:
        yield
    except OSError as e:
        raise CnnDslError(f"{path}: cannot write it ({e.strerror or type(e).__name__})") from None


# --- metrics.csv --------------------------------------------------------------------------


class CsvLog:
    """metrics.csv: one row per epoch, its columns the latest record's keys."""

    def __init__(self, path: Path, out: Path, records: list[dict]):
        self.path, self.out = path, out
        self.columns = self._rewrite(records)

    def write(self, record: dict) -> None:
        """Append the epoch's row; when its keys are not the header's (the first epoch, or a
        record with other keys), rewrite the file from metrics.jsonl instead."""
        if list(record) != self.columns or not self.path.is_file():
            self.columns = self._rewrite(curves.read_curves(self.out).records)
            return
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(csv_text([record], self.columns, header=False))
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self, records: list[dict]) -> list[str]:
        """Write the whole file atomically from `records`; returns its columns."""
        columns = list(records[-1]) if records else []
        text = csv_text(records, columns, header=bool(columns))
        checkpoint.atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))
        return columns

    def close(self) -> None:
        pass   # nothing held open: every row is appended and flushed as it is written


def csv_text(records: list[dict], columns: list[str], header: bool = True) -> str:
    """CSV of flattened records: a number as metrics.jsonl writes it, empty for null (and for
    a key the record lacks); text that a spreadsheet would run as a formula gets a leading '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow([_cell(c) for c in columns])
    for record in records:
        writer.writerow([_cell(record.get(c)) for c in columns])
    return buffer.getvalue()


def _cell(value) -> str:
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_START) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if curves.number(value) is None:   # null, NaN, infinite
        return ""
    return json.dumps(value)   # the number's text in metrics.jsonl: repr, exact


# --- TensorBoard ---------------------------------------------------------------------------


def tag(key: str) -> str:
    """A record's key as a TensorBoard tag: a split's metric grouped by the metric, so one
    section holds its train and val curves (train_loss → loss/train); others as they are.

    >>> tag("train_loss"), tag("val_acc"), tag("lr"), tag("images_per_s")
    ('loss/train', 'acc/val', 'lr', 'images_per_s')
    """
    split, _, metric = key.partition("_")
    return f"{metric}/{split}" if split in SPLITS and metric else key


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers by tag (not its epoch: that is the step); null, text, NaN are left out."""
    values = {tag(k): curves.number(v) for k, v in record.items() if k != "epoch"}
    return {t: v for t, v in values.items() if v is not None}


class TensorBoardLog:
    """Event files in DIR/tensorboard: each record's numbers as scalars at step = epoch."""

    def __init__(self, out: Path, done: int, records: list[dict]):
        self.path = out / rundir.TENSORBOARD_DIR
        replay = not rundir.tensorboard_events(out)   # TensorBoard was off until now
        # purge_step: TensorBoard hides the events of step done + 1 and later that older
        # files hold, which an interrupted epoch may have written after the checkpoint.
        self.writer = _summary_writer()(log_dir=str(self.path), purge_step=done + 1)
        if replay:
            for record in records:
                self._add(record)
        self.writer.flush()

    def _add(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=record["epoch"])

    def write(self, record: dict) -> None:
        self._add(record)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
