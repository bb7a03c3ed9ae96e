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

import collections
import contextlib
import hashlib
import io
import itertools
import os
import pickle
import signal
import tempfile
import threading
import zipfile
from pathlib import Path

from ..errors import CnnDslError
from . import limits

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
    record = {"text": spec.text, "digest": spec.digest, "name": spec.name,
              "suffix": suffix, "path": spec.path or "<inline>"}
    if spec.is_family:   # one member of a family (`--set`): the values that pick it
        from ..lang import family
        record["values"] = family.single_member(spec.program, spec.declared)
    return record


# --- reading ---------------------------------------------------------------------------
#
# Every checkpoint is hostile: it may be a zip bomb, hold any plain data in any field
# (the sha256 covers only the spec text), or hold a list aliased into itself so that
# str() of it would never end. So the zip's sizes are checked before torch.load, every
# field's type and size is checked after it, and a message names a value's type, never
# its str() (text echoed from the file is cut to `limits.MAX_TEXT` characters).

MAX_ENTRIES = 1_000_000      # tensors in a model, names in class_names, ...
MAX_KEYS = 64                # keys of one optimiser state or parameter group
MAX_SPEC_TEXT = 4 * 2 ** 20  # characters of the stored spec
MAX_NAME = 4096              # characters of any other text
MAX_INT = 2 ** 63


def _read(path: Path, what: str):
    """`torch.load` with `weights_only=True`; any failure is a one-line error."""
    import torch

    with _open_regular(path) as f:
        _check_zip(path, f)
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds here (zip, unpickling, EOF, ...)
            raise CnnDslError(f"{path}: not {what}: {_first_line(e)}") from None


def _open_regular(path: Path):
    """The file, opened, if it is a regular one (a FIFO would block torch.load forever)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CnnDslError(f"no such checkpoint: {path}") from None
    except OSError as e:
        raise CnnDslError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    if not stat.S_ISREG(mode):
        raise CnnDslError(f"no such checkpoint: {path} (it is not a regular file)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise CnnDslError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):   # swapped since the stat
        os.close(fd)
        raise CnnDslError(f"no such checkpoint: {path} (it is not a regular file)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _check_zip(path: Path, f) -> None:
    """Refuse a zip (torch's format) that would inflate beyond `limits.checkpoint_budget()`,
    or whose large members are compressed more than `limits.ZIP_MAX_RATIO`:1 (torch.save
    stores its members uncompressed). Sizes are those the central directory declares,
    which is what torch's reader allocates. Not a zip: left to torch.load to judge."""
    try:
        with zipfile.ZipFile(f) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError):
        return
    finally:
        f.seek(0)
    size = os.fstat(f.fileno()).st_size
    total = sum(m.file_size for m in members)
    budget = limits.checkpoint_budget()
    if total > budget:
        raise CnnDslError(f"{path}: refused: its members would inflate to "
                          f"{limits.human_bytes(total)} ({total:,} bytes), more than the "
                          f"{limits.human_bytes(budget)} a checkpoint may hold "
                          "(set CNNDSL_MAX_CHECKPOINT_BYTES to allow more)")
    for m in members:
        if m.file_size >= limits.ZIP_RATIO_FROM and m.file_size > limits.ZIP_MAX_RATIO * max(m.compress_size, 1):
            raise CnnDslError(f"{path}: refused: member '{limits.clip(m.filename)}' would inflate "
                              f"{m.compress_size:,} bytes to {m.file_size:,} (more than "
                              f"{limits.ZIP_MAX_RATIO}:1: a zip bomb?)")
    if sum(m.compress_size for m in members) > size:
        raise CnnDslError(f"{path}: not a readable cnndsl checkpoint: its zip directory declares "
                          f"more data than the file's {size:,} bytes")


def load(path: str | Path) -> dict:
    """A checkpoint written by `cnndsl train`, checked; anything else is a one-line error."""
    path = Path(path)
    state = _read(path, "a readable cnndsl checkpoint (damaged, or not written by `cnndsl train`)")
    _check(path, state)
    return state


def _check(path: Path, state) -> None:
    if not isinstance(state, dict) or not _is_ours(state):
        found = ", ".join(_key_text(k) for k in itertools.islice(state, 5)) \
            if isinstance(state, dict) else type(state).__name__
        raise CnnDslError(f"{path}: not a cnndsl checkpoint (it holds {found or 'nothing'})")
    version = state.get("version")
    if type(version) is not int or version != VERSION:
        shown = version if type(version) is int and abs(version) < MAX_INT else \
            f"of type {type(version).__name__}"
        raise CnnDslError(f"{path}: checkpoint version {shown}; "
                          f"this cnndsl reads version {VERSION}")
    missing = [k for k in KEYS if k not in state]
    spec = state.get("spec")
    if not isinstance(spec, dict) or any(k not in spec for k in SPEC_KEYS):
        missing.append("spec." + next((k for k in SPEC_KEYS if not isinstance(spec, dict)
                                       or k not in spec), "text"))
    if missing:
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: no {', '.join(missing)}")
    try:
        _check_fields(state)
    except _Damaged as e:
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: {e}") from None
    if hashlib.sha256(spec["text"].encode("utf-8", "surrogatepass")).hexdigest() != spec["digest"]:
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: the spec text does not match its sha256")


def _is_ours(state: dict) -> bool:
    fmt = state.get("format")
    return isinstance(fmt, str) and fmt == FORMAT


def _key_text(key) -> str:
    return limits.clip(key, 40) if isinstance(key, str) else type(key).__name__


# --- the fields, one by one ------------------------------------------------------------


class _Damaged(Exception):
    """One field of a checkpoint is wrong; the message names it and its type."""


def _type(value) -> str:
    return type(value).__name__


def _expect(value, kinds, field: str, expected: str):
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        raise _Damaged(f"{field} is {_type(value)}, expected {expected}")
    return value


def _tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _int(value, field: str, low: int = 0, high: int = MAX_INT) -> int:
    _expect(value, int, field, "int")
    if not low <= value <= high:
        raise _Damaged(f"{field} is an int out of range {low}..{high}")
    return value


def _number(value, field: str) -> float:
    _expect(value, (int, float), field, "a number")
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise _Damaged(f"{field} is an int out of range")
    return value


def _text(value, field: str, most: int = MAX_NAME) -> str:
    _expect(value, str, field, "str")
    if len(value) > most:
        raise _Damaged(f"{field} is a str of {len(value):,} characters, expected at most {most:,}")
    return value


def _sized(value, kinds, field: str, expected: str, most: int = MAX_ENTRIES):
    _expect(value, kinds, field, expected)
    if len(value) > most:
        raise _Damaged(f"{field} is a {_type(value)} of {len(value):,} entries, expected at most {most:,}")
    return value


def _plain(value, field: str):
    """None, a bool, a bounded number or a short str: what a setting may be."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return _number(value, field)
    if isinstance(value, str):
        return _text(value, field)
    raise _Damaged(f"{field} is {_type(value)}, expected a plain value (None, bool, number or str)")


def _tensor(value, field: str, dtypes=None):
    import torch

    _expect(value, torch.Tensor, field, "Tensor")
    if value.layout != torch.strided or value.is_quantized or value.dtype.is_complex:
        raise _Damaged(f"{field} is a {value.layout} {value.dtype} tensor, expected a dense real one")
    if dtypes is not None and value.dtype not in dtypes:
        raise _Damaged(f"{field} is a {value.dtype} tensor, expected {' or '.join(map(str, dtypes))}")
    nbytes = value.numel() * value.element_size()
    if nbytes > limits.checkpoint_budget():
        raise _Damaged(f"{field} is a tensor of {nbytes:,} bytes, beyond the checkpoint budget")
    return value


def _key(key, field: str, kind=str) -> str:
    if not isinstance(key, kind) or isinstance(key, bool):
        raise _Damaged(f"{field} has a key of type {_type(key)}, expected {kind.__name__}")
    return f"{field}.{limits.clip(key, 40)}" if kind is str else f"{field}[{key}]"


def _check_fields(state: dict) -> None:
    import torch

    spec = state["spec"]
    _text(spec["text"], "spec.text", MAX_SPEC_TEXT)
    for k in ("digest", "name", "suffix", "path"):
        _text(spec[k], f"spec.{k}")
    values = _sized(spec.get("values", {}), dict, "spec.values", "dict", MAX_KEYS)
    for k, v in values.items():
        where = _key(k, "spec.values")
        if type(v) not in (int, bool):
            raise _Damaged(f"{where} is {_type(v)}, expected int or bool")
        if type(v) is int:
            _int(v, where, -MAX_INT, MAX_INT)

    shape = _sized(state["input_shape"], (list, tuple), "input_shape", "list", 3)
    if len(shape) != 3:
        raise _Damaged(f"input_shape has {len(shape)} entries, expected 3 (C, H, W)")
    for i, v in enumerate(shape):
        _int(v, f"input_shape[{i}]", 1, limits.IDX_MAX_DIM)

    names = _sized(state["class_names"], (list, tuple), "class_names", "list")
    if not names:
        raise _Damaged("class_names is an empty list, expected at least one name")
    for i, v in enumerate(names):
        _text(v, f"class_names[{i}]")

    _check_config(state["config"])

    norm = _sized(state["normalize"], dict, "normalize", "dict", MAX_KEYS)
    for k in ("mean", "std"):
        if k not in norm:
            raise _Damaged(f"normalize has no {k}")
        t = _tensor(norm[k], f"normalize.{k}")
        if not t.is_floating_point() or t.numel() != shape[0]:
            raise _Damaged(f"normalize.{k} is a {t.dtype} tensor of {t.numel():,} values, "
                           f"expected {shape[0]} floats (one per input channel)")
        if not bool(torch.isfinite(t).all()) or (k == "std" and not bool((t > 0).all())):
            raise _Damaged(f"normalize.{k} holds {'non-positive or ' if k == 'std' else ''}"
                           "non-finite values")

    model = _sized(state["model"], dict, "model", "dict")
    for k, v in model.items():
        _tensor(v, _key(k, "model"))

    _check_optimizer(state["optimizer"])

    sched = _sized(state["scheduler"], dict, "scheduler", "dict", MAX_KEYS)
    for k, v in sched.items():
        _plain(v, _key(k, "scheduler"))

    _int(state["epoch"], "epoch", 0, 10 ** 9)

    best = state["best"]
    if best is not None:
        _sized(best, dict, "best", "dict or None", MAX_KEYS)
        for k, v in best.items():
            _plain(v, _key(k, "best"))
        for k in ("value", "loss"):
            if k in best:
                _number(best[k], f"best.{k}")
        if "epoch" in best:
            _int(best["epoch"], "best.epoch", 0, 10 ** 9)

    elapsed = _sized(state["elapsed"], dict, "elapsed", "dict", MAX_KEYS)
    for k, v in elapsed.items():
        _number(v, _key(k, "elapsed"))

    rng = _sized(state["rng"], dict, "rng", "dict", MAX_KEYS)
    for k in ("torch", "order"):
        if k in rng:
            t = _tensor(rng[k], f"rng.{k}", (torch.uint8,))
            if t.dim() != 1:
                raise _Damaged(f"rng.{k} is a {t.dim()}-dimensional tensor, expected 1")
    cuda = _sized(rng.get("cuda", []), (list, tuple), "rng.cuda", "list", 1024)
    for i, t in enumerate(cuda):
        _tensor(t, f"rng.cuda[{i}]", (torch.uint8,))


def _check_config(config) -> None:
    """The run's settings: known keys with plain values, each valid as a setting."""
    import dataclasses

    from . import settings

    _sized(config, dict, "config", "dict", MAX_KEYS)
    known = {f.name: f.default for f in dataclasses.fields(settings.Config)}
    for key, value in config.items():
        field = _key(key, "config")
        if key not in known:
            raise _Damaged(f"{field} is not a setting this cnndsl knows")
        if key == "augment":
            aug = _sized(value, dict, field, "dict", MAX_KEYS)
            for k, v in aug.items():
                _plain(v, _key(k, field))
        else:
            _plain(value, field)
        if value is None and known[key] is None:
            continue
        setting = settings.BY_NAME.get(key)   # the setting's own check
        if setting is None:
            continue
        try:
            settings.check_value(setting, value, None)
        except CnnDslError as e:
            raise _Damaged(f"{field} is {_type(value)} and not a valid setting "
                           f"({limits.clip(e.message)})") from None


def _check_optimizer(opt) -> None:
    _sized(opt, dict, "optimizer", "dict", MAX_KEYS)
    for k in ("state", "param_groups"):
        if k not in opt:
            raise _Damaged(f"optimizer has no {k}")
    states = _sized(opt["state"], dict, "optimizer.state", "dict")
    for index, per in states.items():
        field = _key(index, "optimizer.state", int)
        _sized(per, dict, field, "dict", MAX_KEYS)
        for k, v in per.items():
            name = _key(k, field)
            if not _is_tensor(v):
                _number(v, name)
            else:
                _tensor(v, name)
    groups = _sized(opt["param_groups"], (list, tuple), "optimizer.param_groups", "list")
    for i, group in enumerate(groups):
        field = f"optimizer.param_groups[{i}]"
        _sized(group, dict, field, "dict", MAX_KEYS)
        for k, v in group.items():
            name = _key(k, field)
            if k == "params":
                _sized(v, (list, tuple), name, "list")
                for j, p in enumerate(v):
                    _int(p, f"{name}[{j}]", 0, MAX_ENTRIES)
            elif isinstance(v, (list, tuple)):   # betas
                _sized(v, (list, tuple), name, "list", 16)
                for j, x in enumerate(v):
                    _number(x, f"{name}[{j}]")
            elif _is_tensor(v):                  # lr as a tensor (capturable optimisers)
                _tensor(v, name)
            elif k in _GROUP_NUMBERS:
                _number(v, name)
            else:
                _plain(v, name)


_GROUP_NUMBERS = ("lr", "initial_lr", "momentum", "dampening", "weight_decay", "eps")


def _is_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


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
    for k in ("text", "name", "path", "suffix"):
        if not isinstance(record.get(k), str):   # never str() what a file holds
            raise CnnDslError(f"{where}: damaged cnndsl checkpoint: spec.{k} is "
                              f"{_type(record.get(k))}, expected str")
    text, name = record["text"], record["name"]
    shown = f"{limits.clip(record['path'])} (in {where})"
    if record["suffix"] in (".yaml", ".yml"):
        spec = specs._load_yaml(text, shown, default_name=name)
    else:
        spec = specs.parse(text, name=name)
    values = record.get("values") or {}
    if values:   # a family's member: the values it was trained with
        from ..lang import family
        spec = spec.with_values([(k, family.Variable(k, (v,))) for k, v in values.items()])
    return spec


def state_dict_of(state: dict) -> dict:
    """Model weights from one of our checkpoints, or from a bare state_dict file: the
    tensors under text names (anything else in the file is ignored, never looked into)."""
    weights = state.get("model") if _is_ours(state) else state
    if not isinstance(weights, dict):
        return {}
    out = {}
    for k, v in weights.items():
        if isinstance(k, str) and len(k) <= MAX_NAME and _is_tensor(v):
            try:
                out[k] = _tensor(v, "weight")
            except _Damaged:
                continue
    return out


def load_weights_file(path: str | Path) -> dict:
    """For --init-from: our checkpoint, or any `torch.save`d state_dict of tensors."""
    return read_weights(path)[0]


def read_weights(path: str | Path) -> tuple[dict, bool]:
    """The tensors of our checkpoint or of any `torch.save`d state_dict (torchvision's
    pretrained files are), and whether the file is one of our checkpoints."""
    path = Path(path)
    state = _read(path, "a readable checkpoint")
    ours = isinstance(state, dict) and _is_ours(state)
    if ours:
        _check(path, state)
    weights = state_dict_of(state) if isinstance(state, dict) else {}
    if not weights:
        found = f"a {_type(state)}" if not isinstance(state, dict) else \
            f"a dict without tensors under text names ({len(state):,} entries)"
        raise CnnDslError(f"{path}: holds no weights (neither a cnndsl checkpoint nor a "
                          f"state_dict: it holds {found})")
    return weights, ours


# --- a checkpoint read without torch (cnndsl report) -----------------------------------

MAX_PICKLE = 64 * 2 ** 20    # bytes of a checkpoint's data.pkl (the structure, not the tensors)


def read_plain(path: Path) -> dict:
    """The dict a checkpoint holds, its tensors left out (placeholders), read without torch
    by an unpickler that builds only plain data; its spec checked as `load` checks it."""
    with _open_regular(path) as f:
        _check_zip(path, f)
        state = _unpickle(path, _data_pkl(path, f))
    _check_state(path, state)
    return state


def _data_pkl(path: Path, f) -> bytes:
    """torch.save's zip holds the object's structure in `<folder>/data.pkl`; the tensors'
    bytes are other members, which this never reads."""
    try:
        with zipfile.ZipFile(f) as z:
            members = [m for m in z.infolist() if m.filename.endswith("/data.pkl")
                       and m.filename.count("/") == 1]
            if len(members) != 1:
                raise CnnDslError(f"{path}: not a cnndsl checkpoint (no data.pkl in its zip)")
            if members[0].file_size > MAX_PICKLE:
                raise CnnDslError(f"{path}: refused: its data.pkl is {members[0].file_size:,} bytes, "
                                  f"more than {MAX_PICKLE:,}")
            with z.open(members[0]) as member:
                return member.read(MAX_PICKLE + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise CnnDslError(f"{path}: not a readable cnndsl checkpoint: {limits.clip(str(e))}") from None


class _Tensor:
    """What a tensor (or its storage) of the checkpoint becomes: nothing is read of it."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, numbers and text, and `_Tensor`s for torch's tensors;
    any other class or function named in the pickle is refused, never looked up (the
    restriction the Python docs give for unpickling untrusted data)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module == "torch" and name.endswith("Storage")) or (
                module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter")):
            return _Tensor
        raise pickle.UnpicklingError(f"it names {limits.clip(module, 60)}.{limits.clip(name, 60)}, which is "
                                     "not plain data")

    def persistent_load(self, pid):
        return _Tensor()


def _unpickle(path: Path, data: bytes):
    if len(data) > MAX_PICKLE:
        raise CnnDslError(f"{path}: refused: its data.pkl is larger than {MAX_PICKLE:,} bytes")
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError, UnicodeError, OverflowError) as e:
        raise CnnDslError(f"{path}: not a readable cnndsl checkpoint: {limits.clip(str(e), 160)}") from None


def _check_state(path: Path, state) -> None:
    """The checks of `checkpoint.load` that concern the spec: ours, this version, the
    spec's fields text, the text matching its sha256."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CnnDslError(f"{path}: not a cnndsl checkpoint")
    if type(state.get("version")) is not int or state["version"] != VERSION:
        raise CnnDslError(f"{path}: not a checkpoint version {VERSION} "
                          "(the version this cnndsl reads)")
    spec = state.get("spec")
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) for k in SPEC_KEYS):
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: its spec record is incomplete")
    if len(spec["text"]) > MAX_SPEC_TEXT:
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: its spec text is too long")
    if hashlib.sha256(spec["text"].encode("utf-8", "surrogatepass")).hexdigest() != spec["digest"]:
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: the spec text does not match its sha256")
    values = spec.get("values", {})
    if not isinstance(values, dict) or len(values) > MAX_KEYS or not all(
            isinstance(k, str) and type(v) in (int, bool) and abs(v) <= MAX_INT
            for k, v in values.items()):
        raise CnnDslError(f"{path}: damaged cnndsl checkpoint: spec.values is not names and whole numbers")
