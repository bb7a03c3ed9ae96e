"""The analysis as people read it: a rich table of layers with totals beneath."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..graph import shape_text
from .result import Analysis


def human(n: float, unit: str = "") -> str:
    """1,234,567 → '1.23 M'.

    >>> human(138357544), human(15470264320), human(512)
    ('138.36 M', '15.47 G', '512')
    """
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".strip()


def human_bytes(n: int) -> str:
    for factor, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.2f} {prefix}"
    return f"{n} B"


def collapse(rows: list[dict], depth: int | None) -> list[dict]:
    """Rows of layers nested deeper than `depth` name parts summed into their block's row,
    as torchinfo's `depth` does: at depth 1, `layer2.bottle3.conv2` counts in `layer2`.

    >>> rows = [dict(name=n, layer=n, output=[1], params=1, macs=2, rf=3) for n in ("a", "b.c", "b.d")]
    >>> [(r["name"], r["params"]) for r in collapse(rows, 1)]
    [('a', 1), ('b', 2)]
    """
    if depth is None:
        return rows
    merged: dict[str, dict] = {}
    for row in rows:
        parts = row["name"].split(".")
        key = ".".join(parts[:depth])
        if key not in merged:
            merged[key] = dict(row, name=key, layer=row["layer"] if len(parts) <= depth else "…")
            continue
        group = merged[key]
        group.update(output=row["output"], params=group["params"] + row["params"],
                     macs=group["macs"] + row["macs"], rf=max(group["rf"] or 0, row["rf"] or 0))
    return list(merged.values())


class LayerTable:
    """Columns of plain text, laid out in one pass, as a rich renderable.

    rich's `Table` measures, wraps and pads every cell: seconds for the 10,000 rows of
    a deep net. These cells never wrap, so each row is one line of text. When the rows
    are wider than the console, rich's `Table` lays them out instead, shrinking columns.
    """

    def __init__(self, title: str):
        self.title, self.columns, self.rows = title, [], []

    def add_column(self, header: str, justify: str = "left", **_) -> None:
        self.columns.append((header, justify))

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def __rich_console__(self, console, options):
        from rich.segment import Segment
        from rich.style import Style

        headers = [header for header, _ in self.columns]
        widths = [max(map(len, column)) for column in zip(headers, *self.rows)]
        if sum(widths) + 2 * (len(widths) - 1) > options.max_width:
            yield self._rich_table()
            return

        def line(cells):
            return "  ".join(cell.ljust(w) if justify == "left" else cell.rjust(w)
                             for cell, w, (_, justify) in zip(cells, widths, self.columns)).rstrip()
        yield Segment(self.title + "\n", Style(italic=True))
        yield Segment(line(headers) + "\n", Style(bold=True))
        for row in self.rows:  # a segment a line: rich splits segments at line breaks
            yield Segment(line(row) + "\n")

    def _rich_table(self) -> Table:
        table = Table(title=self.title, title_justify="left", box=None, pad_edge=False,
                      header_style="bold")
        for header, justify in self.columns:
            table.add_column(header, justify=justify, no_wrap=True)
        for row in self.rows:
            table.add_row(*row)
        return table


def layer_table(analysis: Analysis, depth: int | None = None) -> LayerTable:
    table = LayerTable(f"{analysis.name}")
    for column, justify in (("layer", "left"), ("written", "left"), ("output", "right"),
                            ("params", "right"), ("MACs", "right"), ("RF", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for row in collapse(analysis.layers(), depth):
        table.add_row(row["name"], row["layer"], shape_text(row["output"]),
                      f"{row['params']:,}", f"{row['macs']:,}",
                      f"{row['rf']}" if row["rf"] else "")
    return table


def totals_table(analysis: Analysis) -> Table:
    t = analysis.totals()
    memory, train = t["memory"], t["memory"]["training_estimate"]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    rows = [
        ("input → output", f"{shape_text(analysis.input_shape)} → {shape_text(analysis.output_shape)}", ""),
        ("layers", f"{t['layers']:,}", ""),
        ("params (trainable)", f"{t['params']:,}", human(t["params"])),
        ("buffers", f"{t['buffers']:,}", "BN running statistics"),
        ("params without sharing", f"{t['unshared_params']:,}", human(t["unshared_params"])),
        ("MACs", f"{t['macs']:,}", human(t["macs"])),
        ("FLOPs", f"{t['flops']:,}", human(t["flops"])),
        ("activations / image", f"{t['activation_elements']:,}",
         f"{human_bytes(memory['activations_per_image_fp32'])} fp32, "
         f"{human_bytes(memory['activations_per_image_bf16'])} bf16"),
        (f"activations / batch of {memory['batch']}", human_bytes(memory["activations_batch_fp32"]),
         f"fp32; {human_bytes(memory['activations_batch_bf16'])} bf16"),
        ("training memory (est.)", human_bytes(train["total"]),
         f"weights {human_bytes(train['weights'])} + gradients + {train['optimizer']} state "
         f"{human_bytes(train['optimizer_state'])} + activations {human_bytes(train['activations'])}"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def print_report(analysis: Analysis, console: Console | None = None, depth: int | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 200  # a file or a pipe gets whole lines, not wrapped ones
    console.print(layer_table(analysis, depth), crop=False)  # its lines fit: no cropping pass
    console.print()
    console.print(totals_table(analysis))
