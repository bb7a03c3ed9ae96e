"""`cnndsl plot`: the loss and accuracy curves of one or more runs, overlaid, as .png, .svg
or .pdf (matplotlib; torch-free: the curves come from each run's metrics.jsonl)."""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path

from ..errors import CnnDslError
from .common import EXIT_OK, check_out
from .draw import _one_line

FORMATS = (".png", ".svg", ".pdf")
INSTALL = "pip install 'cnndsl[plot]'"
DEFAULT_SIZE = (1200, 500)     # pixels at DPI: two panels side by side
SIZE_BOUNDS = (200, 8000)      # a side in pixels: a readable plot, never a memory bomb
DPI = 100
# The two panels: (title, the metric of train_… and val_…).
PANELS = (("loss", "loss"), ("accuracy", "acc"))
STYLES = (("train", "--"), ("val", "-"))   # train dashed, validation solid


def add_parser(commands):
    p = commands.add_parser("plot", help="loss and accuracy per epoch of runs, overlaid: .png, .svg, .pdf",
                            description="Plot the loss and accuracy per epoch of each RUN (a folder "
                                        "written by cnndsl train), overlaid: train dashed, "
                                        "validation solid, one colour per run. Needs matplotlib: "
                                        f"{INSTALL}.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run folder (the --out of cnndsl train)")
    p.add_argument("-o", "--out", required=True, metavar="FILE",
                   help=f"the file to write; its suffix picks the format ({', '.join(FORMATS)})")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="the legend's name of a run, once per RUN in order (default: the folder's name)")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="WxH",
                   help=f"the picture's size in pixels (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}; "
                        f"for .svg and .pdf at {DPI} per inch)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    return p


def run(args) -> int:
    from ..training.checkpoint import atomic_write   # torch-free: os and tempfile only

    out = Path(args.out)
    check_out(out, args.overwrite, FORMATS, "curves.png")
    labels = run_labels(args.runs, args.label)
    plt = require_matplotlib()
    runs = read_runs(args.runs, labels)
    content = figure(plt, runs, out.suffix.lower(), args.size)
    check_out(out, args.overwrite, FORMATS, "curves.png")   # again: another process may have written it meanwhile
    atomic_write(out, lambda f: f.write(content))
    epochs = max(len(c["epochs"]) for _, c in runs)
    print(f"wrote {out}: {len(runs)} run{'s' * (len(runs) > 1)}, up to {epochs} epochs")
    return EXIT_OK


def read_runs(folders: list[str], labels: list[str]) -> list[tuple[str, dict]]:
    """(label, curves) of each run; a run without any epoch record is an error, lines
    skipped in the others are noted on stderr."""
    from ..training.curves import read_curves
    from ..training.rundir import METRICS_NAME

    runs = []
    for folder, label in zip(folders, labels):
        read, path = read_curves(folder), Path(folder) / METRICS_NAME
        if not read.records:   # the error counts the skipped lines: no note before it
            raise CnnDslError(f"{path} holds no epoch record yet: nothing to plot{_skipped(read.skipped)}")
        for note in read.notes(path):
            print(f"note: {note}", file=sys.stderr)
        runs.append((label, run_curves(read.records)))
    return runs


def _skipped(count: int) -> str:
    return f" ({count:,} line{'s' * (count > 1)} skipped: not epoch records)" if count else ""


def _size(text: str) -> tuple[int, int]:
    """`1200x500` → (1200, 500); argparse says what is wrong with another text."""
    import argparse

    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*", text)
    low, high = SIZE_BOUNDS
    if not match:
        raise argparse.ArgumentTypeError(f"give the size as WIDTHxHEIGHT in pixels, e.g. 1200x500, not {text!r}")
    size = int(match[1]), int(match[2])
    if not all(low <= side <= high for side in size):
        raise argparse.ArgumentTypeError(f"each side must be {low} to {high} pixels, not {text}")
    return size


def run_labels(folders: list[str], labels: list[str] | None) -> list[str]:
    """--label in order, else each folder's name (its path as given where two names agree)."""
    if labels is not None:
        if len(labels) != len(folders):
            raise CnnDslError(f"give one --label per RUN, in order: {len(folders)} RUN"
                              f"{'s' * (len(folders) > 1)}, {len(labels)} --label")
        return list(labels)
    names = [Path(f).resolve().name or f for f in folders]
    return [f if names.count(n) > 1 else n for f, n in zip(folders, names)]


def run_curves(records: list[dict]) -> dict:
    """The series a plot draws from a run's records: epochs, and (epochs, values) per key."""
    from ..training.curves import series

    keys = [f"{split}_{metric}" for _, metric in PANELS for split, _ in STYLES]
    return {"epochs": [r["epoch"] for r in records], **{k: series(records, k) for k in keys}}


def require_matplotlib():
    """matplotlib's pyplot on the Agg backend (no display), or the one-line install message."""
    try:
        import matplotlib
    except ImportError:
        raise CnnDslError(f"cnndsl plot needs matplotlib: {INSTALL}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(plt, runs: list[tuple[str, dict]], suffix: str, size: tuple[int, int]) -> bytes:
    """The two panels (loss, accuracy) of every run, as the bytes of a `suffix` file."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI,
                             layout="constrained")
    try:
        colours = run_colours(plt, len(runs))
        for ax, (title, metric) in zip(axes, PANELS):
            for (_, data), colour in zip(runs, colours):
                for split, style in STYLES:
                    epochs, values = data[f"{split}_{metric}"]
                    ax.plot(epochs, values, style, color=colour, linewidth=1.5,
                            marker="o" if len(epochs) <= 20 else None, markersize=3)
            _decorate(ax, title)
        _legend(fig, plt, [label for label, _ in runs], colours)
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix.lstrip("."), dpi=DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def run_colours(plt, n: int) -> list:
    """One colour per run: tab10's for up to ten, else evenly spaced along a colour map."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _decorate(ax, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _legend(fig, plt, labels: list[str], colours: list) -> None:
    """Runs by colour, then the two line styles; labels are shown as written (no mathtext)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linewidth=2) for c in colours]
    handles += [Line2D([], [], color="0.3", linestyle=style) for _, style in STYLES]
    names = [_one_line(label).replace("$", r"\$") for label in labels] + ["train", "validation"]
    fig.legend(handles, names, loc="outside right upper", fontsize="small")
