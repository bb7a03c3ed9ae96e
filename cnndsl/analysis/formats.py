"""`cnndsl analyze --format csv|md|html`: the tables of the report as text documents.

Each writer takes grids: anything with a `title`, `columns` (header, justify) and `rows`
of text cells, as `report.LayerTable` has (the layer table, the totals, a family's
members). CSV is the exception: it writes values, not text, so programs read whole
numbers. Everything that comes from a spec (names, what was written) is escaped.
"""
from __future__ import annotations

import csv
import html
import io
import re
from typing import Iterable, Protocol


class Grid(Protocol):
    title: str
    columns: list[tuple[str, str]]   # (header, "left" | "right")
    rows: list[tuple[str, ...]]


def csv_text(header: list[str], rows: Iterable[list]) -> str:
    """RFC 4180: a header line, then one line per row, CRLF line ends, quoted where needed.

    >>> csv_text(["layer", "inputs"], [["add1", "a, b"], ["fc1", None]])
    'layer,inputs\\r\\nadd1,"a, b"\\r\\nfc1,\\r\\n'
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([_csv_value(v) for v in row] for row in rows)
    return out.getvalue()


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# Markdown's own punctuation: a `|` would end a cell, `*` or `_` start emphasis, `<` HTML.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def markdown_text(text: str) -> str:
    """A cell's text for a GitHub-flavoured Markdown table, read as written.

    >>> markdown_text("a|b *c* <d>")
    'a\\\\|b \\\\*c\\\\* \\\\<d\\\\>'
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))


def markdown(grids: list[Grid], notes: Iterable[str] = ()) -> str:
    """Each grid as a heading and a GitHub-flavoured table; then the notes, a list."""
    parts = []
    for grid in grids:
        parts.append(f"### {markdown_text(grid.title)}\n")
        parts.append(_markdown_row([header for header, _ in grid.columns]))
        parts.append(_markdown_row(["---:" if justify == "right" else ":---"
                                    for _, justify in grid.columns], escape=False))
        parts.extend(_markdown_row(row) for row in grid.rows)
        parts.append("")
    parts.extend(f"- {markdown_text(note)}" for note in notes)
    return "\n".join(parts).rstrip("\n") + "\n"


def _markdown_row(cells, escape: bool = True) -> str:
    return "| " + " | ".join(markdown_text(c) if escape else c for c in cells) + " |"


_STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 0 0 2rem; }
caption { text-align: left; font-weight: bold; padding-bottom: .4rem; }
th, td { padding: .15rem .7rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { text-align: left; background: #f4f4f4; }
.right { text-align: right; font-variant-numeric: tabular-nums; }"""


def html_document(title: str, grids: list[Grid], notes: Iterable[str] = ()) -> str:
    """One standalone page: the grids as tables, then the notes. No script, no link out."""
    body = [f"<h1>{_h(title)}</h1>"] + [_html_table(grid) for grid in grids]
    notes = list(notes)
    if notes:
        body.append("<ul>\n" + "\n".join(f"<li>{_h(n)}</li>" for n in notes) + "\n</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_h(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n<footer>written by cnndsl analyze</footer>\n</body>\n</html>\n")


def _html_table(grid: Grid) -> str:
    align = [' class="right"' if justify == "right" else "" for _, justify in grid.columns]
    head = "".join(f"<th{a}>{_h(header)}</th>" for (header, _), a in zip(grid.columns, align))
    rows = "\n".join("<tr>" + "".join(f"<td{a}>{_h(cell)}</td>" for cell, a in zip(row, align))
                     + "</tr>" for row in grid.rows)
    return (f"<table>\n<caption>{_h(grid.title)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{rows}\n</tbody>\n</table>")


def _h(text: str) -> str:
    return html.escape(text, quote=True)
