"""The analysis as people read it: a rich table of layers with totals beneath."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..graph import shape_text
from .columns import COLUMNS, DEFAULT, Column, cells, values
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


DEFAULT_COLUMNS = tuple(COLUMNS[name] for name in DEFAULT)

# Figures of a block's row under --depth: the sums of its layers'.
SUMMED = ("params", "buffers", "macs", "flops", "training_flops", "activations", "unshared_params")


def collapse(rows: list[dict], depth: int | None) -> list[dict]:
    """Rows of layers nested deeper than `depth` name parts summed into their block's row,
    as torchinfo's `depth` does: at depth 1, `layer2.bottle3.conv2` counts in `layer2`.
    A block's row has its first layer's inputs, its last layer's output and jump, the
    largest receptive field, and no kind, kernel or stride of its own.

    >>> rows = [dict(name=n, layer=n, kind="CONV", inputs=[i], output=[1], rf=3, jump=1,
    ...              kernel=[1, 1], stride=[1, 1], **dict.fromkeys(SUMMED, 1))
    ...         for n, i in (("a", "input"), ("b.c", "a"), ("b.d", "b.c"))]
    >>> [(r["name"], r["params"], r["kind"], r["inputs"]) for r in collapse(rows, 1)]
    [('a', 1, 'CONV', ['input']), ('b', 2, '…', ['a'])]
    """
    if depth is None:
        return rows
    merged: dict[str, dict] = {}
    for row in rows:
        parts = row["name"].split(".")
        key = ".".join(parts[:depth])
        group = merged.get(key)
        if group is None:
            group = merged[key] = dict(row, name=key, inputs=[_block(n, depth) for n in row["inputs"]])
            if len(parts) > depth:
                group.update(layer="…", kind="…", kernel=None, stride=None)
            continue
        group.update({k: group[k] + row[k] for k in SUMMED}, output=row["output"],
                     jump=row["jump"], rf=max(group["rf"] or 0, row["rf"] or 0))
    return list(merged.values())


def _block(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


class LayerTable:
    """Columns of plain text, laid out in one pass, as a rich renderable.

    rich's `Table` measures, wraps and pads every cell: seconds for the 10,000 rows of
    a deep net. These cells never wrap, so each row is one line of text. When the rows
    are wider than the console, rich's `Table` lays them out instead, shrinking columns.
    """

    def __init__(self, title: str):
        self.title, self.columns, self.rows = title, [], []
        self._widths = None

    def add_column(self, header: str, justify: str = "left", **_) -> None:
        self.columns.append((header, justify))
        self._widths = None

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)
        self._widths = None

    def widths(self) -> list[int]:
        if self._widths is None:   # measured once: a pass over every cell
            headers = [header for header, _ in self.columns]
            self._widths = [max(map(len, column)) for column in zip(headers, *self.rows)]
        return self._widths

    @property
    def line_width(self) -> int:
        return sum(self.widths()) + 2 * (len(self.columns) - 1)

    def __rich_console__(self, console, options):
        from rich.segment import Segment
        from rich.style import Style

        headers = [header for header, _ in self.columns]
        widths = self.widths()
        if self.line_width > options.max_width:
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


def layer_table(analysis: Analysis, depth: int | None = None,
                columns: tuple[Column, ...] | None = None) -> LayerTable:
    """The layer table, one row per layer (per block with `depth`), in `columns`."""
    columns = columns or DEFAULT_COLUMNS
    table = LayerTable(f"{analysis.name}")
    for column in columns:
        table.add_column(column.header, justify=column.justify, no_wrap=True)
    layers = layer_rows(analysis, columns, depth)
    sums = ColumnSums(layers)
    for row in layers:
        table.add_row(*cells(columns, row, sums))
    return table


def layer_rows(analysis: Analysis, columns: tuple[Column, ...], depth: int | None) -> list[dict]:
    """The rows `columns` read: one per layer, or per block with `depth`."""
    return collapse(analysis.layers(details=any(c.details for c in columns)), depth)


def whole_lines(console: Console, table: LayerTable) -> None:
    """A file or a pipe gets whole lines, however wide (`--columns all`), not wrapped or
    cropped ones; a terminal, the table laid out to its width."""
    if not console.is_terminal:
        console.width = max(200, table.line_width)


class ColumnSums(dict):
    """The rows' figures summed, a figure when a column first reads it (params % reads
    `params`): from the rows, not another pass over the graph, and only if asked."""

    def __init__(self, rows: list[dict]):
        super().__init__()
        self.rows = rows

    def __missing__(self, key: str) -> int:
        self[key] = total = sum(row[key] for row in self.rows)
        return total


def totals_rows(analysis: Analysis) -> list[tuple[str, str, str]]:
    """The totals beneath the table, (what, figure, note): the one list the table, Markdown
    and HTML outputs print."""
    t = analysis.totals()
    memory, train = t["memory"], t["memory"]["training_estimate"]
    return [
        ("input → output", f"{shape_text(analysis.input_shape)} → {shape_text(analysis.output_shape)}", ""),
        ("layers", f"{t['layers']:,}", ""),
        ("params (trainable)", f"{t['params']:,}", human(t["params"])),
        ("buffers", f"{t['buffers']:,}", "BN running statistics"),
        ("params without sharing", f"{t['unshared_params']:,}", human(t["unshared_params"])),
        ("MACs", f"{t['macs']:,}", human(t["macs"])),
        ("FLOPs", f"{t['flops']:,}", human(t["flops"])),
        ("training FLOPs", f"{t['training_flops']:,}",
         f"{human(t['training_flops'])}, forward + backward, per image"),
        ("activations / image", f"{t['activation_elements']:,}",
         f"{human_bytes(memory['activations_per_image_fp32'])} fp32, "
         f"{human_bytes(memory['activations_per_image_bf16'])} bf16"),
        (f"activations / batch of {memory['batch']}", human_bytes(memory["activations_batch_fp32"]),
         f"fp32; {human_bytes(memory['activations_batch_bf16'])} bf16"),
        ("training memory (est.)", human_bytes(train["total"]),
         f"weights {human_bytes(train['weights'])} + gradients + {train['optimizer']} state "
         f"{human_bytes(train['optimizer_state'])} + activations {human_bytes(train['activations'])}"),
    ]


def totals_table(analysis: Analysis) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for row in totals_rows(analysis):
        table.add_row(*row)
    return table


def print_report(analysis: Analysis, console: Console | None = None, depth: int | None = None,
                 columns: tuple[Column, ...] | None = None) -> None:
    console = console or Console()
    table = layer_table(analysis, depth, columns)
    whole_lines(console, table)
    console.print(table, crop=False)  # its lines fit: no cropping pass
    console.print()
    console.print(totals_table(analysis))


# --- --format csv | md | html -------------------------------------------------------------

def document(analysis: Analysis, fmt: str, depth: int | None = None,
             columns: tuple[Column, ...] | None = None) -> str:
    """The report as one CSV, Markdown or HTML document: the layer table in `columns`
    (CSV: its values, one line per layer and no totals), the totals, the warnings."""
    from . import formats

    columns = columns or DEFAULT_COLUMNS
    if fmt == "csv":
        layers = layer_rows(analysis, columns, depth)
        sums = ColumnSums(layers)
        return formats.csv_text([c.name for c in columns], (values(columns, row, sums) for row in layers))
    grids = [layer_table(analysis, depth, columns), totals_grid(analysis)]
    notes = [_diagnostic_line(d) for d in analysis.diagnostics]
    if fmt == "md":
        return formats.markdown(grids, notes)
    return formats.html_document(f"{analysis.name}: cnndsl analyze", grids, notes)


def totals_grid(analysis: Analysis) -> LayerTable:
    grid = LayerTable("totals")
    for header, justify in (("total", "left"), ("figure", "right"), ("", "left")):
        grid.add_column(header, justify)
    for row in totals_rows(analysis):
        grid.add_row(*row)
    return grid


def _diagnostic_line(d) -> str:
    where = f"{d.span.source.display_name}:{d.span.line}:{d.span.col}: " if d.span else ""
    return f"{where}{d.severity}: {d.message}"


def family_document(result, fmt: str) -> str:
    """A family as CSV (one line per distinct member: the survivors by MACs, then the
    pruned, as --json), Markdown or HTML (the table of survivors, then the summary)."""
    from . import formats
    from .family import family_table, summary_lines

    if fmt == "csv":
        members = result.survivors() + [m for m in result.members if m.pruned]
        flat = [_flat(m.to_dict()) for m in members]
        header = list(dict.fromkeys(key for row in flat for key in row))
        return formats.csv_text(header, ([row.get(key) for key in header] for row in flat))
    grids = [family_table(result)] if result.survivors() else []
    notes = summary_lines(result)
    if fmt == "md":
        return formats.markdown(grids, notes)
    return formats.html_document(f"{result.name}: cnndsl analyze", grids, notes)


def _flat(member: dict) -> dict:
    """A member's --json line as CSV cells: its variables first, each a column; a shape
    or receptive field as `h×w`; the members merged into it counted."""
    flat = dict(member.pop("vars"))
    for key, value in member.items():
        if isinstance(value, list):
            value = len(value) if key == "duplicates" else "×".join(map(str, value))
        flat[key if key not in flat else f"member.{key}"] = value   # a variable named `macs`
    return flat
