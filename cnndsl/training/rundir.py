"""The run folder (`--out DIR`): its default name, its lock, and a check that it can be written.

* The default folder is `runs/<name>`, where the name comes from the spec (a YAML
  spec's `name:`). It is cleaned so it is always one plain child of `./runs`: a spec
  cannot choose where files go (`name: /etc` or `name: ../../x` stays under runs/).
* One run at a time per folder: the run holds an exclusive `flock` on `DIR/.lock`
  for its whole life (the operating system drops it when the process ends, also on
  kill -9); a second run into the same folder is refused at once.
* The folder is created and a probe file written and removed in it before any work,
  so a bad `--out` (a file, a path under a file, /dev/null, a read-only place) is a
  one-line error and not a failure after an epoch of training.
* JSON written by a run holds `null` where a number is NaN or infinite, never the
  non-standard literals `NaN` / `Infinity`.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from pathlib import Path

from ..errors import CnnDslError

RUNS = Path("runs")
NAME_LIMIT = 100
LOCK_NAME = ".lock"
# The run's logs: one JSON record per epoch, the same as CSV, and TensorBoard's events.
METRICS_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
EVENTS_GLOB = "events.out.tfevents.*"   # the files a TensorBoard writer creates


def default_name(name) -> str:
    """A spec's name made safe as one folder name: [A-Za-z0-9._-] only, no leading dot or
    dash (so never `.`, `..`, hidden, or flag-like), at most NAME_LIMIT characters; "run"
    when nothing is left."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name or ""))
    text = text.lstrip("._-")[:NAME_LIMIT].rstrip("_")
    return text or "run"


def default_out(name) -> Path:
    """`runs/<name>` for a spec named `name`: always a direct child of ./runs."""
    return RUNS / default_name(name)


@contextlib.contextmanager
def claim(out: Path, lock: bool = True):
    """Create `out`, check it can be written, and (with `lock`) hold its lock until the
    block ends; every failure is a one-line CnnDslError. Only the process that writes the
    files (rank 0 under torchrun) claims the folder."""
    if not lock:
        yield out
        return
    _make(out)
    fd = _lock(out)
    try:
        _probe(out)
        yield out
    finally:
        os.close(fd)   # closing the only descriptor releases the flock


def _make(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CnnDslError(f"--out {out}: exists and is not a folder; give a folder for the run's files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnDslError(f"--out {out}: cannot create the folder ({_reason(e)})") from None


def _lock(out: Path) -> int:
    import fcntl

    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CnnDslError(f"--out {out}: cannot write in the folder ({_reason(e)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise CnnDslError(f"{out} is in use by another run (pid {holder}); wait for it to end, "
                          f"or give another --out") from None
    except OSError:   # a file system without flock (some network mounts): go on unlocked
        pass
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        os.close(fd)
        raise CnnDslError(f"--out {out}: cannot write in the folder ({_reason(e)})") from None
    return fd


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _probe(out: Path) -> None:
    """Write, fsync and remove a file in `out`, as the checkpoints will be written."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=out)
        try:
            os.write(fd, b"cnndsl\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise CnnDslError(f"--out {out}: cannot write in the folder ({_reason(e)})") from None


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


# --- JSON ------------------------------------------------------------------------------


def finite(value):
    """`value` with every NaN or infinite float (also inside lists and dicts) made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON: non-finite numbers become null (never `NaN`, which JSON does not have)."""
    import json

    return json.dumps(finite(value), allow_nan=False, **kwargs)


OUTPUTS = ("last.pt", "best.pt", "summary.json")   # besides the logs, rewritten from metrics.jsonl


def remove_outputs(out: Path) -> None:
    """Remove a previous run's checkpoints, summary and TensorBoard events (only those:
    nothing else in DIR, nor in DIR/tensorboard)."""
    for path in [out / name for name in OUTPUTS] + tensorboard_events(out):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def tensorboard_events(out: Path) -> list[Path]:
    """The TensorBoard event files in the run folder `out`."""
    found = (out / TENSORBOARD_DIR).glob(EVENTS_GLOB)
    return sorted(p for p in found if p.is_file() or p.is_symlink())   # never a folder
