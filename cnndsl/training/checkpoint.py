"""Checkpoints: written so that nothing is ever half-written, read so that nothing runs.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
`torch.load(..., weights_only=True)` can read it: a pickle from elsewhere cannot
execute code while being read, it is refused. It carries everything to rebuild the
network (the spec's own text and format) and to resume a run bit for bit (model,
optimiser, schedule position, epoch, best metric, RNG states).

Files are written atomically: to a temporary file in the same folder, flushed and
fsync'ed, then `os.replace`d over the old one, so a crash (or kill -9) at any moment
leaves either the old checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
import threading
from pathlib import Path

from ..errors import CnnDslError

FORMAT = "cnndsl-checkpoint"
VERSION = 1
KEYS = ("format", "version", "spec", "input_shape", "class_names", "config", "normalize",
        "model", "optimizer", "scheduler", "epoch", "best", "elapsed", "rng")
SPEC_KEYS = ("text", "digest", "name", "suffix", "path")


# --- writing ---------------------------------------------------------------------------

def atomic_write(path: str | Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then move it into place.

    The temporary file lives in the same folder so `os.replace` is a rename on one
    file system (atomic on POSIX); the folder is fsync'ed so the rename itself
    survives a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsync'ed
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(path: str | Path, state: dict) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(state, f))


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C back while files are written; it takes effect right after.

    Atomic writes already keep every file whole; this also keeps a checkpoint and
    its metrics line together, so the run stops at a clean epoch boundary.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def spec_record(spec) -> dict:
    """What a checkpoint keeps of its spec: the text exactly as written, and its format."""
    suffix = Path(spec.path).suffix if spec.path else ""
    return {"text": spec.text, "digest": spec.digest, "name": spec.name,
            "suffix": suffix, "path": spec.path or "<inline>"}


# --- reading ---------------------------------------------------------------------------

def _read(path: Path, what: str):
    """`torch.load` with `weights_only=True`; any failure is a one-line error."""
    import torch

    if not path.is_file():
        raise CnnDslError(f"no such checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds here (zip, unpickling, EOF, ...)
        raise CnnDslError(f"{path}: not {what}: {_first_line(e)}") from None


def load(path: str | Path) -> dict:
    """A checkpoint written by `cnndsl train`, checked; anything else is a one-line error."""
    path = Path(path)
    state = _read(path, "a readable cnndsl checkpoint (damaged, or not written by `cnndsl train`)")
    _check(path, state)
    return state


def _check(path: Path, state) -> None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = ", ".join(map(str, list(state)[:5])) if isinstance(state, dict) else type(state).__name__
        raise CnnDslError(f"{path}: not a cnndsl checkpoint (it holds {found or 'nothing'})")
    if state.get("version") != VERSION:
        raise CnnDslError(f"{path}: checkpoint version {state.get('version')!r}; "
                          f"this cnndsl reads version {VERSION}")
    missing = [k for k in KEYS if k not in state]
    spec = state.get("spec")
    if not isinstance(spec, dict) or any(k not in spec for k in SPEC_KEYS):
        missing.append("spec." + next((k for k in SPEC_KEYS if not isinstance(spec, dict)
                                       or k not in spec), "text"))
    if missing:
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: no {', '.join(missing)}")
    if hashlib.sha256(str(spec["text"]).encode()).hexdigest() != spec["digest"]:
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: the spec text does not match its sha256")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def spec_of(state: dict, where: str | Path = "checkpoint"):
    """The `Spec` a checkpoint was trained from, parsed from its stored text.

    YAML specs are parsed as YAML (their `net:`, blocks, `input:`, `train:`);
    `.cnn` files and inline text as DSL.
    """
    from ..lang import spec as specs

    record = state["spec"]
    text, name = str(record["text"]), str(record["name"])
    shown = f"{record['path']} (in {where})"
    if record["suffix"] in (".yaml", ".yml"):
        return specs._load_yaml(text, shown, default_name=name)
    spec = specs.parse(text, name=name)
    return spec


def state_dict_of(state: dict) -> dict:
    """Model weights from one of our checkpoints, or from a bare state_dict file."""
    weights = state.get("model") if state.get("format") == FORMAT else state
    return {k: v for k, v in weights.items() if hasattr(v, "shape")}


def load_weights_file(path: str | Path) -> dict:
    """For --init-from: our checkpoint, or any `torch.save`d state_dict of tensors."""
    path = Path(path)
    state = _read(path, "a readable checkpoint")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        _check(path, state)
    if not isinstance(state, dict) or not state_dict_of(state):
        raise CnnDslError(f"{path}: holds no weights (neither a cnndsl checkpoint nor a state_dict)")
    return state_dict_of(state)
