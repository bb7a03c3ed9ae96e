"""A run folder's epoch records read back (metrics.jsonl), torch-free: for `cnndsl plot`,
the metrics.csv and TensorBoard logs rebuilt on resume, and anything else that reports
on a run.

A run folder may come from anyone, so metrics.jsonl is read as hostile: a regular file
only (a FIFO would block, /dev/zero never ends), at most READ_LIMIT bytes and LINE_LIMIT
per line, never whole; a line that is not an epoch record (torn by kill -9, binary, not
JSON, nested too deep, an epoch out of order, too many keys) is skipped and counted.

>>> flatten({"epoch": 3, "val": {"loss": 0.5, "acc": None}, "top": [1, 2]})
{'epoch': 3, 'val.loss': 0.5, 'val.acc': None, 'top': '[1, 2]'}
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import NamedTuple

from ..errors import CnnDslError
from .rundir import METRICS_NAME

READ_LIMIT = 64 * 2 ** 20   # read at most this much of a metrics.jsonl
LINE_LIMIT = 2 ** 20        # a longer line is no epoch record
MAX_KEYS = 100              # an epoch record has a dozen keys; one with more is not one
MAX_KEY_LENGTH = 200
MAX_DEPTH = 8               # nested records: a key path at most this deep


class Curves(NamedTuple):
    """What a run's metrics.jsonl holds: its epoch records, in epoch order, each flattened
    (nested keys joined with "."); how many lines were skipped; whether the file was
    longer than READ_LIMIT (the records after it are not read)."""
    records: list[dict]
    skipped: int
    cut: bool

    def notes(self, path) -> list[str]:
        """What a reader should be told about the file, one line each."""
        lines = []
        if self.skipped:
            lines.append(f"{path}: skipped {self.skipped:,} line{'s' * (self.skipped > 1)} that "
                         f"{'are' if self.skipped > 1 else 'is'} not an epoch record")
        if self.cut:
            n = len(self.records)
            lines.append(f"{path}: read only its first {READ_LIMIT / 2 ** 20:g} MiB "
                         f"({n:,} epoch record{'s' * (n != 1)})")
        return lines


def read_curves(run_dir) -> Curves:
    """The epoch records of the run in `run_dir` (its metrics.jsonl); a one-line
    CnnDslError when `run_dir` is not a run folder or the file cannot be read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        problem = "is not a folder" if run_dir.exists() else "does not exist"
        raise CnnDslError(f"{run_dir} {problem}; give a run folder (the --out of cnndsl train)")
    path = run_dir / METRICS_NAME
    try:
        with _open_regular(path) as f:
            return _read(f)
    except FileNotFoundError:
        raise CnnDslError(f"{run_dir} is not a run folder: it has no {METRICS_NAME}") from None
    except OSError as e:
        raise CnnDslError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None


def _open_regular(path: Path):
    """`path` opened for reading if it is a regular file: a FIFO would block a reader, a
    device (/dev/zero) never ends. Checked on the open file, so it cannot be swapped."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO: opened without waiting
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CnnDslError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _read(f) -> Curves:
    records, skipped, budget, last = [], 0, READ_LIMIT, 0
    while budget > 0:
        line = f.readline(min(LINE_LIMIT + 1, budget))
        if not line:
            return Curves(records, skipped, False)
        budget -= len(line)
        if len(line) > LINE_LIMIT and not line.endswith(b"\n"):   # overlong: read past it
            budget -= skip_line(f, budget)
            skipped += 1
            continue
        record = epoch_record(line, last)
        if record is None:
            skipped += line.strip() != b""   # a blank line is nothing, not a bad record
            continue
        records.append(record)
        last = record["epoch"]
    return Curves(records, skipped, bool(f.read(1)))


def skip_line(f, budget: int) -> int:
    """Read past the rest of an overlong line in pieces, at most about `budget` bytes."""
    read = 0
    while read <= budget:
        piece = f.readline(LINE_LIMIT)
        read += len(piece)
        if not piece or piece.endswith(b"\n"):
            break
    return read


def parsed_record(line: bytes) -> dict | None:
    """The line as a JSON object with a whole-number `epoch` (not true/false), or None."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):   # torn, binary, not JSON, nested too deep
        return None
    if not isinstance(record, dict) or type(record.get("epoch")) is not int:
        return None
    return record


def epoch_record(line: bytes, after: int = 0) -> dict | None:
    """The line's record, flattened, if it is one of an epoch after `after`; else None.

    An epoch record is a JSON object whose `epoch` is a whole number (not true/false)
    greater than `after`, with at most MAX_KEYS keys of at most MAX_KEY_LENGTH
    characters once flattened."""
    record = parsed_record(line)
    if record is None or record["epoch"] <= after:
        return None
    try:
        return flatten(record)
    except (ValueError, RecursionError):   # too many keys, too long, too deep
        return None


def flatten(record: dict) -> dict:
    """Nested mappings become dotted keys; a list becomes its JSON text; other values stay.
    ValueError past MAX_KEYS, MAX_KEY_LENGTH or MAX_DEPTH."""
    flat: dict = {}
    _flatten_into(flat, "", record, 1)
    return flat


def _flatten_into(flat: dict, prefix: str, mapping: dict, depth: int) -> None:
    if depth > MAX_DEPTH:   # the recursion is as deep as MAX_DEPTH, whatever JSON allows
        raise ValueError("nested too deep")
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten_into(flat, name + ".", value, depth + 1)
            continue
        if len(flat) >= MAX_KEYS or len(name) > MAX_KEY_LENGTH:
            raise ValueError("too many keys, or a key too long")
        flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else value


def number(value) -> float | None:
    """`value` as a finite float, or None when it is not a number (None, text, true/false,
    NaN, infinite, an integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of `key` over `records`: the epochs where it is a finite number."""
    points = [(r["epoch"], number(r.get(key))) for r in records]
    kept = [(e, v) for e, v in points if v is not None]
    return [e for e, _ in kept], [v for _, v in kept]
