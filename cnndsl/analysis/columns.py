"""The columns of `cnndsl analyze`'s layer table, declared once for every output format.

A `Column` says its `--columns` word, its header, how to read its value from a row of
`Analysis.layers()` (or a block's row, summed by `--depth`), how people read that value
(the table, Markdown and HTML), its alignment and what it means (`--columns`' help and
docs/analyze.md). CSV writes the value itself: whole numbers without separators.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import did_you_mean
from ..graph import shape_text


def _count(value: int) -> str:
    return f"{value:,}"


def _percent(value: float) -> str:
    return f"{value:.2f}"


def _pair(value) -> str | None:
    """A kernel or stride: `3×3`, `1×7`; None for a layer without a window."""
    return "×".join(map(str, value)) if value else None


def _stride(value) -> str | None:
    """A stride as the DSL writes it, `/2`: one number when both axes agree."""
    if not value:
        return None
    return str(value[0]) if value[0] == value[1] else _pair(value)


def _share(row: dict, sums: dict) -> float:
    return 100 * row["params"] / sums["params"] if sums["params"] else 0.0


@dataclass(frozen=True)
class Column:
    name: str                                  # the word of --columns
    header: str
    get: Callable[[dict, dict], Any]           # (row, sums of all rows) -> int, float, str or None
    text: Callable[[Any], str] = str           # the value (not None) as people read it
    justify: str = "right"
    description: str = ""
    details: bool = False                      # reads a row's details (Analysis.layers)


COLUMNS: dict[str, Column] = {c.name: c for c in [
    Column("layer", "layer", lambda r, s: r["name"], justify="left",
           description="the layer's name (a block's, with --depth)"),
    Column("written", "written", lambda r, s: r["layer"], justify="left",
           description="the layer as written: CONV3-64/2 (… for a block summed by --depth)"),
    Column("kind", "kind", lambda r, s: r["kind"], justify="left",
           description="the kind of layer: CONV, BN, ADD, …"),
    Column("input", "input", lambda r, s: ", ".join(map(shape_text, r["input_shapes"])) or None,
           description="the input shape (a join's, one per branch)", details=True),
    Column("output", "output", lambda r, s: shape_text(r["output"]), description="the output shape"),
    Column("kernel", "kernel", lambda r, s: _pair(r["kernel"]),
           description="the window of a CONV or pool, height×width", details=True),
    Column("stride", "stride", lambda r, s: _stride(r["stride"]),
           description="the stride of a CONV or pool", details=True),
    Column("params", "params", lambda r, s: r["params"], _count,
           description="trainable parameters (BN's running statistics are buffers, not counted)"),
    Column("params%", "params %", _share, _percent, description="the share of all the parameters"),
    Column("trainable", "trainable", lambda r, s: "yes" if r["params"] else None, justify="left",
           description="yes when the layer has trainable parameters (all are; `train: freeze` "
                       "fixes some only when training)"),
    Column("macs", "MACs", lambda r, s: r["macs"], _count,
           description="multiply-accumulates of a CONV or FC"),
    Column("flops", "FLOPs", lambda r, s: r["flops"], _count,
           description="FLOPs of the inference forward pass"),
    Column("training_flops", "training FLOPs", lambda r, s: r["training_flops"], _count,
           description="FLOPs of a training step's forward and backward pass"),
    Column("activations", "activations", lambda r, s: r["activations"], _count,
           description="elements of the output (none for a view: FLATTEN, ID, SPLIT)"),
    Column("rf", "RF", lambda r, s: r["rf"], lambda v: str(v) if v else "",
           description="receptive field in input pixels (the larger of height and width)"),
    Column("jump", "jump", lambda r, s: r["jump"],
           description="input pixels between adjacent outputs (the larger of height and width)"),
    Column("inputs", "connected to", lambda r, s: ", ".join(r["inputs"]) or None, justify="left",
           description="the layers it reads, in branch order"),
]}

# Today's table: what `cnndsl analyze` printed before --columns existed.
DEFAULT = ("layer", "written", "output", "params", "macs", "rf")


def parse_columns(text: str) -> tuple[Column, ...]:
    """`--columns layer,kind,macs` (any case, `-` for `_`), or `all`; ValueError names the
    valid words.

    >>> [c.header for c in parse_columns("layer, MACs,training-flops")]
    ['layer', 'MACs', 'training FLOPs']
    >>> parse_columns("parms")
    Traceback (most recent call last):
    ...
    ValueError: unknown column 'parms' — did you mean 'params'? Columns: layer, written, kind, input, output, kernel, stride, params, params%, trainable, macs, flops, training_flops, activations, rf, jump, inputs, or all
    """
    words = [w.strip().lower().replace("-", "_") for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return tuple(COLUMNS.values())
    if not words:
        raise ValueError(f"no column given. {_valid()}")
    for word in words:
        if word not in COLUMNS:
            raise ValueError(f"unknown column {word!r}{did_you_mean(word, COLUMNS) or '.'} "
                             f"{_valid()}")
    return tuple(COLUMNS[w] for w in dict.fromkeys(words))   # each once, in the order given


def _valid() -> str:
    return f"Columns: {', '.join(COLUMNS)}, or all"


def column_help() -> str:
    """--columns' help: every column with its meaning (`%` doubled: argparse formats help)."""
    listed = "; ".join(f"{c.name}: {c.description}" for c in COLUMNS.values())
    return (f"the layer table's columns, comma-separated, or all (default: {','.join(DEFAULT)}): "
            f"{listed}").replace("%", "%%")


def cells(columns, row: dict, sums: dict) -> list[str]:
    """A row's cells as people read them; a missing value (None) is an empty cell."""
    return [c.text(v) if (v := c.get(row, sums)) is not None else "" for c in columns]


def values(columns, row: dict, sums: dict) -> list:
    """A row's values as a program reads them (CSV)."""
    return [c.get(row, sums) for c in columns]
