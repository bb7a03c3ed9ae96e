"""`cnndsl report SPEC|RUN -o report.html`: one self-contained HTML page of a network's
analysis (backends.html_report) — totals, diagram, charts, the layer table, diagnostics —
and, for a training run's folder, its curves, summary and settings.

Torch-free, also for a run folder: the spec a run trained is read from its checkpoint's
zip without torch (`checkpoint.read_plain`), by an unpickler that builds only dicts, lists, numbers
and text and refuses every other object. Every file of a run folder is hostile and read
bounded; a damaged metrics line is skipped with a note.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import CnnDslError
from .analyze import _input_shape, _positive, add_member_flags
from .common import EXIT_OK, EXIT_SPEC_ERROR, print_diagnostics, check_out
from .draw import _one_line

SUFFIXES = (".html", ".htm")


def add_parser(commands):
    p = commands.add_parser("report", help="one self-contained HTML page: totals, diagram, charts, "
                                           "the layer table, diagnostics; a run's curves")
    p.add_argument("spec", metavar="SPEC|RUN",
                   help="a .yaml/.yml/.cnn file, a zoo name (vgg16), inline DSL text, or the "
                        "folder of a `cnndsl train` run")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="the .html file to write")
    p.add_argument("--depth", type=_positive, metavar="N",
                   help="fold the blocks N or more name parts deep, and draw them as one box each")
    p.add_argument("--input", type=_input_shape, metavar="C,H,W", help="override the spec's input")
    p.add_argument("--batch", type=_positive,
                   help="batch size for the memory figures (default 1; a run's: its own)")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "none"],
                   help="optimiser state in the training-memory estimate (default: the spec's, "
                        "or sgd; a run's: its own)")
    add_member_flags(p)
    return p


def run(args) -> int:
    from ..backends.html_report import report_html
    from ..training.checkpoint import atomic_write   # torch-free: os and tempfile only

    out = Path(args.out)
    check_out(out, args.overwrite, SUFFIXES, "report.html")
    if Path(args.spec).is_dir():
        analysis, record = _run_analysis(args)
    else:
        analysis, record = _spec_analysis(args), None
    page, notes = report_html(analysis, args.depth, record)
    check_out(out, args.overwrite, SUFFIXES, "report.html")   # again: laying out a large net takes a while
    content = page.encode("utf-8")
    atomic_write(out, lambda f: f.write(content))
    print(f"wrote {out}: {_one_line(analysis.name)}, {len(analysis.graph) - 1} layers, "
          f"{len(content) / 1024:,.0f} KiB")
    for note in notes + (record.notes if record else []):
        print(note)
    print_diagnostics(analysis.diagnostics)
    return EXIT_OK if analysis.ok else EXIT_SPEC_ERROR


def _spec_analysis(args):
    from ..lang.spec import resolve
    from ..training.settings import check_spec

    spec = resolve(args.spec, max_layers=args.max_layers)
    check_spec(spec)   # a misspelt `train:` key is an error here too, as in `analyze`
    spec = spec.with_values(args.set)
    return spec.analyze(strict=args.strict, input=args.input, batch=args.batch or 1,
                        optimizer=args.optimizer, max_layers=args.max_layers)


def _run_analysis(args):
    """The network a run trained, at the input, batch and optimiser it trained with."""
    from ..backends.html_report import RunRecord
    from ..training.checkpoint import spec_of

    folder = Path(args.spec)
    for flag, value in (("--input", args.input), ("--set", args.set)):
        if value:
            raise CnnDslError(f"{flag}: a run folder's network is the one it trained, as it "
                              "trained it; give the spec instead to change it")
    state, where = read_checkpoint(folder)
    settings = state["config"] if isinstance(state.get("config"), dict) else {}
    spec = spec_of(state, where)
    analysis = spec.analyze(strict=args.strict or settings.get("strict") is True,
                            input=_trained_input(state, where), batch=args.batch or _batch(settings),
                            optimizer=args.optimizer or _optimizer(settings),
                            max_layers=args.max_layers)
    metrics, notes = read_metrics(folder)
    summary, note = read_summary(folder / "summary.json")
    checkpoint = {key: state.get(key) for key in ("epoch", "best", "elapsed", "input_shape")}
    return analysis, RunRecord(str(folder), metrics, summary, settings, checkpoint,
                               notes + ([note] if note else []))


def _trained_input(state: dict, where: str) -> tuple[int, int, int]:
    from ..training.limits import IDX_MAX_DIM   # the bound checkpoint.load puts on it

    shape = state.get("input_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(type(v) is int and 1 <= v <= IDX_MAX_DIM for v in shape)):
        raise CnnDslError(f"{where}: damaged cnndsl checkpoint: input_shape is not three whole numbers")
    return tuple(shape)


def _batch(settings: dict) -> int:
    from ..training.settings import BY_NAME

    value, most = settings.get("batch_size"), dict(BY_NAME["batch_size"].bounds)["≤"]
    return value if type(value) is int and 1 <= value <= most else 1


def _optimizer(settings: dict) -> str:
    from ..analysis.result import OPTIMIZER_STATES

    value = settings.get("optimizer")
    return value if isinstance(value, str) and value in OPTIMIZER_STATES else "sgd"


# --- a run's checkpoint, without torch ---------------------------------------------------


def read_checkpoint(folder: Path) -> tuple[dict, str]:
    """The dict a run's last.pt (else best.pt) holds, tensors left out, its spec checked
    as `checkpoint.load` checks it; and the file's name for messages."""
    from ..training import checkpoint

    path = next((folder / name for name in ("last.pt", "best.pt") if (folder / name).exists()), None)
    if path is None:
        raise CnnDslError(f"{folder}: no last.pt or best.pt: not the folder of a `cnndsl train` "
                          "run (or it stopped before its first epoch ended)")
    return checkpoint.read_plain(path), str(path)


# --- metrics.jsonl and summary.json ------------------------------------------------------

MAX_SUMMARY = 1 * 2 ** 20
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")   # what the curves draw


def read_metrics(folder: Path) -> tuple[list[dict], list[str]]:
    """The run's epoch records, read as `cnndsl plot` reads them (training.curves), each
    with its epoch and the METRICS that are finite numbers; and notes on what was
    skipped, or why there are none."""
    from ..training.curves import number, read_curves
    from ..training.rundir import METRICS_NAME

    try:
        curves = read_curves(folder)
    except CnnDslError as e:
        return [], [e.message]
    records = [{"epoch": r["epoch"], **{k: r[k] for k in METRICS if number(r.get(k)) is not None}}
               for r in curves.records]
    return records, curves.notes(folder / METRICS_NAME)


def _finite(value) -> bool:
    """A number a chart can draw: a finite float, or a whole number of at most 15 digits."""
    if type(value) is int:
        return abs(value) < 10 ** 15
    return type(value) is float and math.isfinite(value)


def read_summary(path: Path) -> tuple[dict | None, str | None]:
    """summary.json's plain entries (numbers, text, true/false, null), or None and why."""
    text, notes = _read_bounded(path, MAX_SUMMARY)
    if text is None:
        return None, (notes[0] if notes else None)
    try:
        summary = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError):
        return None, f"{path}: not JSON; the run's summary is not shown"
    if not isinstance(summary, dict):
        return None, f"{path}: not a JSON object; the run's summary is not shown"
    return {k: v for k, v in summary.items()
            if v is None or type(v) in (bool, str) or _finite(v)}, None


def _read_bounded(path: Path, limit: int) -> tuple[bytes | None, list[str]]:
    """At most `limit` bytes of a regular file (cut after its last whole line), with a note
    when more was left; None when there is no file (with a note unless it is absent)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        return None, []
    except OSError as e:
        return None, [f"{path}: cannot read it ({e.strerror or type(e).__name__})"]
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # a FIFO would block, a device never end
            return None, [f"{path}: not a regular file; not read"]
        try:
            data = f.read(limit + 1)
        except OSError as e:
            return None, [f"{path}: cannot read it ({e.strerror or type(e).__name__})"]
    if len(data) <= limit:
        return data, []
    return data[:data.rfind(b"\n", 0, limit) + 1], [f"{path}: read only its first {limit:,} bytes"]
