"""`cnndsl report`: one self-contained HTML file about an analysed network (and, for a
training run, its curves and summary).

Torch-free. The page needs no network: its CSS and script are inline (the page skeleton,
style and script are `report_template.html`), the diagram is Graphviz's SVG inlined, the
charts are SVG drawn here. Its Content-Security-Policy allows nothing but that one style
block and that one script (by their sha256), so the page cannot load anything.

Everything from a spec or a run folder is hostile: every text is `html.escape`d where it
goes into the page, the table rows are rendered here (the script only reorders and hides
them, it never builds markup), and Graphviz's SVG is re-serialised keeping only the
elements and attributes a drawing needs.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import html
import itertools
import math
import re
import string
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources

from ..errors import CnnDslError, clip

# --- the page --------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What a training run's folder says, already read and checked (cli.report reads it)."""
    folder: str
    metrics: list[dict]                     # one record per epoch, in epoch order
    summary: dict | None                    # summary.json; None before the run ends
    settings: dict                          # the checkpoint's training settings
    checkpoint: dict                        # epoch, best, elapsed of the checkpoint read
    notes: list[str] = field(default_factory=list)   # what was skipped, and why


def report_html(analysis, depth: int | None = None,
                run: RunRecord | None = None) -> tuple[str, list[str]]:
    """The page, and notes for the terminal (a diagram that could not be drawn)."""
    from .draw import _messages

    notes: list[str] = []
    diagram, note = diagram_svg(analysis, depth)
    if note:
        notes.append(note)
    rows = analysis.layers()
    sections = [
        ("summary", "Summary", _summary(analysis)),
        ("diagram", "Diagram", _diagram_section(diagram, note)),
        ("charts", "Charts", _charts(analysis, rows)),
        ("layers", f"Layers ({len(rows):,})", _layer_table(rows, _messages(analysis), depth)),
        ("diagnostics", f"Diagnostics ({_severities(analysis.diagnostics)})", _diagnostics(analysis)),
    ]
    if run is not None:
        sections.insert(1, ("run", "Training run", _run_section(run)))
    return _page(analysis, sections), notes


def _template() -> str:
    return resources.files(__package__).joinpath("report_template.html").read_text(encoding="utf-8")


def _page(analysis, sections: list[tuple[str, str, str]]) -> str:
    template = _template()
    # The CSP names the template's one style block and one script by their hashes: an
    # injected <script> or <style> would not run, and no fetch, image or font can load.
    csp = "; ".join(["default-src 'none'", f"style-src {_inline_hash(template, 'style')}",
                     f"script-src {_inline_hash(template, 'script')}", "base-uri 'none'",
                     "form-action 'none'"])
    title = f"cnndsl report: {analysis.name}"
    nav = " ".join(f'<a href="#{anchor}">{_text(heading)}</a>' for anchor, heading, _ in sections)
    body = [f"<h1>{_text(title)}</h1>", f"<nav>{nav}</nav>"]
    body += [f'<section id="{anchor}"><h2>{_text(heading)}</h2>\n{content}\n</section>'
             for anchor, heading, content in sections]
    return string.Template(template).substitute(csp=csp, title=_text(title), body="\n".join(body))


def _inline_hash(template: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", template, re.S)
    digest = hashlib.sha256(match.group(1).encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def _text(text: str) -> str:
    """Hostile text as HTML text or an attribute value."""
    return html.escape(text, quote=True)


def _kv_table(rows) -> str:
    """(label, value, remark) rows as a table; all text escaped."""
    lines = "".join(f"<tr><td>{_text(label)}</td><td class=\"num\">{_text(value)}</td>"
                    f"<td class=\"dim\">{_text(remark)}</td></tr>" for label, value, remark in rows)
    return f'<table class="kv">{lines}</table>'


# --- summary: totals, conventions, the spec ---------------------------------------------

MAX_SPEC_SHOWN = 256 * 1024     # characters of the spec's text put in the page

CONVENTIONS = (
    "How cnndsl counts. Parameters as PyTorch counts them, biases included (a CONV or FC "
    "straight before BN has none); BN's running statistics are buffers, counted apart. A MAC "
    "is one multiply-add, counted for CONV (H_out·W_out·K·F_h·F_w·C_in/groups) and FC (in·out) "
    "only, as torchvision's GFLOPS. FLOPs are 2 per MAC, plus per output element: 1 for a "
    "bias; 1 for RELU, TANH, SIGMOID, ELU, GELU and SCALE; 2 for RELU6, LRELU, SILU/SWISH and "
    "BN; 3 for SOFTMAX; 4 for HSIGMOID; 5 for HSWISH; 7 for LN; size + 4 for LRN; F_h·F_w − 1 "
    "for max pooling, F_h·F_w for average pooling, H·W per channel for GAP; n − 1 for an ADD or "
    "MUL of n branches; none for CONCAT, DROPOUT, DROPPATH, FLATTEN, ID, SPLIT and SHUFFLE. "
    "Activations are the elements of every layer's output (the input included; FLATTEN, ID and "
    "SPLIT are views and count none), 4 bytes each in fp32, 2 in bf16. The training-memory "
    "estimate is weights + gradients + optimiser state (one copy of the weights for SGD, two "
    "for Adam and AdamW) + the batch's fp32 activations, which backward keeps. RF is the "
    "receptive field in input pixels (the larger of height and width). Training FLOPs add the "
    "backward pass: 2 per MAC for a CONV's or FC's weight gradient and 2 per MAC for its input "
    "gradient (none for the first such layer after INPUT, whose input needs none), and every "
    "other layer's forward FLOPs again.")


def _summary(analysis) -> str:
    from ..analysis.report import totals_rows

    status = ("no errors" if analysis.ok else f"{len(analysis.errors)} error(s): the layers after "
              "an error have no shape (?) and count nothing")
    source = analysis.graph.nodes["input"]["span"].source
    parts = [f'<p class="meta">{_text(analysis.name)}: {_text(status)}</p>',
             _kv_table(totals_rows(analysis)),
             f"<p>{_text(CONVENTIONS)}</p>",
             _spec_text(source)]
    return "\n".join(parts)


def _spec_text(source) -> str:
    text = source.text
    cut = len(text) > MAX_SPEC_SHOWN
    shown = text[:MAX_SPEC_SHOWN] + ("\n… (cut: the spec is longer)" if cut else "")
    return (f"<details><summary>the spec, {_text(source.display_name)}</summary>"
            f"<pre>{_text(shown)}</pre></details>")


# --- the diagram ------------------------------------------------------------------------


def diagram_svg(analysis, depth: int | None) -> tuple[str | None, str | None]:
    """(inline SVG markup, None), or (None, why there is no diagram: Graphviz missing)."""
    from .draw import picture, render, to_dot

    try:
        svg = render(to_dot(picture(analysis, depth)), "svg")
        return clean_svg(svg.decode("utf-8", "replace")), None
    except CnnDslError as e:
        return None, f"the report has no diagram: {e.message}"


def _diagram_section(svg: str | None, note: str | None) -> str:
    if svg is None:
        return f'<p class="note">{_text(note)}</p>'
    return ('<p class="tools"><button id="fit-diagram" type="button">fit to width</button></p>'
            f'<div class="diagram" id="diagram-box">{svg}</div>')


# What a Graphviz drawing is made of; anything else (script, foreignObject, a, image, any
# on*/href/style attribute) is dropped. Values are plain numbers, colours and words; a
# value with anything else (url(...), javascript:) is dropped too.
SVG_ELEMENTS = {"svg", "g", "path", "polygon", "polyline", "ellipse", "circle", "rect", "line", "text"}
SVG_ATTRIBUTES = {"width", "height", "viewBox", "transform", "fill", "stroke", "stroke-width",
                  "stroke-dasharray", "stroke-opacity", "fill-opacity", "d", "points", "cx", "cy",
                  "rx", "ry", "r", "x", "y", "x1", "y1", "x2", "y2", "text-anchor", "font-size",
                  "font-weight", "font-style"}
_PLAIN_VALUE = re.compile(r"[#\w\s.,%+-]*")
_TRANSFORM = re.compile(r"(?:\s*(?:scale|rotate|translate)\([-\d.\s,]*\))*\s*")
_DECIMALS = re.compile(r"(?<=\d)\.\d+")


def clean_svg(svg: str) -> str:
    """Graphviz's SVG as markup safe to put in a page: the XML prolog, DOCTYPE, comments
    and titles gone, only the elements and attributes of SVG_ELEMENTS / SVG_ATTRIBUTES
    kept, every text and value escaped again. Smaller too: coordinates cut to whole
    points, a text attribute that every text has set once on the <svg> for the texts
    that share its commonest value, groups without attributes unwrapped.

    >>> clean_svg('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="8pt">'
    ...           '<g onclick="x()"><title>n1</title><text x="1.25" font-size="12">a&lt;b</text>'
    ...           '<script>alert(1)</script></g></svg>')
    '<svg width="8pt" font-size="12"><text x="1">a&lt;b</text></svg>'
    """
    start = svg.find("<svg")
    body = svg[start:] if start >= 0 else ""
    if "<!" in body.replace("<!--", ""):   # a DOCTYPE or entity inside the drawing: refused
        raise CnnDslError("Graphviz's SVG holds a declaration; it is not inlined")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise CnnDslError(f"Graphviz's SVG could not be read: {e}") from None
    if _tag(root) != "svg":
        raise CnnDslError("Graphviz's output is not an SVG drawing")
    kept = {element: _svg_attributes(element) for element in root.iter()}
    shared = _shared_text_attributes([a for e, a in kept.items() if _tag(e) == "text"])
    for element, attributes in kept.items():
        if _tag(element) == "text":
            kept[element] = {n: v for n, v in attributes.items() if shared.get(n) != v}
    kept[root] = {**kept[root], **shared}
    return _svg_element(root, kept)


def _tag(element) -> str:
    return element.tag.rpartition("}")[2]   # without its namespace


def _svg_attributes(element) -> dict[str, str]:
    """The attributes kept: known names with plain values, numbers cut to whole points
    (Graphviz writes two decimals; all its x are positive and its y negative, so every
    point moves the same way, by less than one point)."""
    kept = {}
    for name, value in element.attrib.items():
        pattern = _TRANSFORM if name == "transform" else _PLAIN_VALUE
        if name in SVG_ATTRIBUTES and pattern.fullmatch(value):
            kept[name] = _DECIMALS.sub("", value)
    return kept


def _shared_text_attributes(texts: list[dict]) -> dict[str, str]:
    """Of the inherited text attributes that every text has, the commonest value of each."""
    shared = {}
    for name in ("font-size", "text-anchor", "font-weight"):
        values = collections.Counter(text.get(name) for text in texts)
        if texts and None not in values:
            shared[name] = values.most_common(1)[0][0]
    return shared


def _svg_element(element, kept: dict) -> str:
    tag = _tag(element)
    if tag not in SVG_ELEMENTS:
        return ""
    inner = _text(element.text or "") if tag == "text" else ""
    inner += "".join(_svg_element(child, kept) + (_text(child.tail or "") if tag == "text" else "")
                     for child in element)
    if tag == "g" and not kept[element]:
        return inner
    attributes = "".join(f' {name}="{_text(value)}"' for name, value in kept[element].items())
    return f"<{tag}{attributes}>{inner}</{tag}>"


# --- charts -----------------------------------------------------------------------------

WIDTH, HEIGHT = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 30, 50
MAX_BARS = 48            # a chart of more stages shows the largest, in the network's order
MAX_POINTS = 1000        # a line of more points is thinned to the largest value per bucket
MAX_MARKERS = 200        # points of a line get a marker (with its value as a tooltip) up to this
MARK_GAP = 14            # pixels between the labels of vertical marks
MAX_STAGE_MARKS = 12     # the receptive-field chart marks where each stage starts, up to this many


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 × 10^k) up to at least `top`.

    >>> nice_ticks(1000), nice_ticks(0.83), nice_ticks(0)
    ([0, 200, 400, 600, 800, 1000], [0, 0.2, 0.4, 0.6, 0.8, 1], [0, 1])
    """
    if not top > 0:
        return [0, 1]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    return [_tidy(i * step) for i in range(math.ceil(top / step - 1e-9) + 1)]


def _tidy(value: float):
    value = round(float(value), 10)
    return int(value) if value.is_integer() else value


def short(value: float) -> str:
    """A number for an axis or a tooltip, in three digits.

    >>> short(0), short(0.25), short(1250), short(23_500_000), short(1.5e9)
    ('0', '0.25', '1.25k', '23.5M', '1.5G')
    """
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}"
    return f"{value:.3g}"


@dataclass
class Series:
    label: str
    points: list[tuple[float, float | None]]     # (x, y); a None y breaks the line


def line_chart(title: str, x_label: str, y_label: str, series: list[Series],
               guides: list[tuple[float, str]] = (), marks: list[tuple[float, str]] = ()) -> str:
    """Lines on 0-based y axes, as inline SVG; `guides` are dashed horizontal lines at a y,
    `marks` faint vertical lines at an x, each with its label."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if y is not None] + [y for y, _ in guides]
    if not xs:
        return ""
    x_low, x_high = min(xs), max(max(xs), min(xs) + 1)
    y_ticks = nice_ticks(max(ys, default=0))
    x_ticks = [t for t in nice_ticks(x_high) if t >= x_low and float(t).is_integer()]
    frame = _Frame(x_low, x_high, y_ticks[-1])
    parts = _axes(title, x_label, y_label, frame, y_ticks,
                  [(frame.x(t), short(t)) for t in x_ticks])
    labelled = -math.inf
    for x, label in marks:
        parts.append(f'<line class="stage" x1="{frame.x(x):.1f}" x2="{frame.x(x):.1f}" '
                     f'y1="{TOP}" y2="{HEIGHT - BOTTOM}"><title>{_text(label)}</title></line>')
        if frame.x(x) - labelled >= MARK_GAP:   # a label too close to the last is left out
            labelled = frame.x(x)
            parts.append(_rotated(frame.x(x) + 3, TOP + 4, label, "start", 90))
    for y, label in guides:
        parts.append(f'<line class="guide" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{frame.y(y):.1f}" '
                     f'y2="{frame.y(y):.1f}"></line><text x="{WIDTH - RIGHT - 4}" '
                     f'y="{frame.y(y) - 4:.1f}" text-anchor="end">{_text(label)}</text>')
    for i, s in enumerate(series):
        parts += _line(s, i, frame)
    if len(series) > 1:   # the legend, in the top right corner
        left = WIDTH - RIGHT - 90
        parts += [f'<line class="s{i}" x1="{left}" x2="{left + 20}" y1="{TOP + 10 + 16 * i}" '
                  f'y2="{TOP + 10 + 16 * i}"></line><text x="{left + 24}" y="{TOP + 14 + 16 * i}">'
                  f"{_text(s.label)}</text>" for i, s in enumerate(series)]
    return _svg(title, parts)


def _line(s: Series, index: int, frame) -> list[str]:
    points = _thin(s.points)
    parts = []
    for segment in _segments(points):
        coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in segment)
        parts.append(f'<polyline class="s{index}" points="{coords}"></polyline>')
    if len(points) <= MAX_MARKERS:
        parts += [f'<circle class="p{index}" r="2.5" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}">'
                  f"<title>{_text(s.label)} at {short(x)}: {_text(short(y))}</title></circle>"
                  for x, y in points if y is not None]
    return parts


def _segments(points):
    """Runs of points between the gaps (a None y)."""
    run = []
    for x, y in points:
        if y is None:
            if run:
                yield run
            run = []
        else:
            run.append((x, y))
    if run:
        yield run


def _thin(points: list) -> list:
    """At most MAX_POINTS points: each bucket of neighbours as its largest value."""
    if len(points) <= MAX_POINTS:
        return points
    size = math.ceil(len(points) / MAX_POINTS)
    buckets = (points[i:i + size] for i in range(0, len(points), size))
    return [max(b, key=lambda p: -math.inf if p[1] is None else p[1]) for b in buckets]


def bar_chart(title: str, y_label: str, bars: list[tuple[str, float]], unit: str) -> str:
    """Bars in the given order, as inline SVG; each bar's value is its tooltip. Of more
    than MAX_BARS bars, the largest are drawn, in order, and the title says so."""
    if len(bars) > MAX_BARS:
        keep = set(sorted(range(len(bars)), key=lambda i: -bars[i][1])[:MAX_BARS])
        title += f" (the {MAX_BARS} largest of {len(bars)})"
        bars = [bar for i, bar in enumerate(bars) if i in keep]
    y_ticks = nice_ticks(max((v for _, v in bars), default=0))
    frame = _Frame(0, max(len(bars), 1), y_ticks[-1])
    slot = (WIDTH - LEFT - RIGHT) / max(len(bars), 1)
    parts = _axes(title, "", y_label, frame, y_ticks, [])
    for i, (label, value) in enumerate(bars):
        x, y = LEFT + i * slot + slot * 0.15, frame.y(value)
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" '
                     f'height="{HEIGHT - BOTTOM - y:.1f}"><title>{_text(label)}: {value:,} {unit}'
                     "</title></rect>")
        parts.append(_rotated(x + slot * 0.35 + 4, HEIGHT - BOTTOM + 6, clip(label, 14), "end", -40))
    return _svg(title, parts)


@dataclass
class _Frame:
    """Data coordinates → SVG coordinates of the plot area."""
    x_low: float
    x_high: float
    y_high: float

    def x(self, value: float) -> float:
        return LEFT + (value - self.x_low) / (self.x_high - self.x_low) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return HEIGHT - BOTTOM - value / (self.y_high or 1) * (HEIGHT - TOP - BOTTOM)


def _axes(title: str, x_label: str, y_label: str, frame: _Frame, y_ticks, x_ticks) -> list[str]:
    bottom = HEIGHT - BOTTOM
    parts = [f'<text class="title" x="{WIDTH / 2:.0f}" y="18" text-anchor="middle">{_text(title)}</text>']
    for t in y_ticks:
        y = frame.y(t)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}">'
                     f'</line><text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{short(t)}</text>')
    for x, label in x_ticks:
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_text(label)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}"></line>'
                 f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{bottom}" y2="{bottom}"></line>')
    if x_label:
        parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 8}" '
                     f'text-anchor="middle">{_text(x_label)}</text>')
    parts.append(_rotated(16, (TOP + bottom) / 2, y_label, "middle", -90))
    return parts


def _rotated(x: float, y: float, text: str, anchor: str, angle: int) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" '
            f'transform="rotate({angle} {x:.1f} {y:.1f})">{_text(text)}</text>')


def _svg(title: str, parts: list[str]) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_text(title)}">'
            + "".join(parts) + "</svg>")


def stages(rows: list[dict]) -> list[tuple[str, int, int, int]]:
    """(stage, first layer's index, params, MACs) per stage: the layers whose names share
    their first part (`layer2` of `layer2.bottle3.conv2`), in order; the input is none.

    >>> rows = [dict(name=n, params=1, macs=2) for n in ("input", "conv1", "b.x", "b.y")]
    >>> stages(rows)
    [('conv1', 1, 1, 2), ('b', 2, 2, 4)]
    """
    found: dict[str, list] = {}
    for index, row in enumerate(rows[1:], start=1):
        entry = found.setdefault(row["name"].split(".")[0], [index, 0, 0])
        entry[1] += row["params"]
        entry[2] += row["macs"]
    return [(name, *entry) for name, entry in found.items()]


def _charts(analysis, rows: list[dict]) -> str:
    per_stage = stages(rows)
    side = max(analysis.input_shape[1:])
    marks = [(index, name) for name, index, _, _ in per_stage] if len(per_stage) <= MAX_STAGE_MARKS else []
    rf = line_chart("Receptive field per layer", "layer (in the network's order)", "pixels",
                    [Series("receptive field", [(i, row["rf"]) for i, row in enumerate(rows)])],
                    guides=[(side, f"input {side}")], marks=marks)
    params = bar_chart("Params per stage", "params", [(n, p) for n, _, p, _ in per_stage if p], "params")
    macs = bar_chart("MACs per stage", "MACs", [(n, m) for n, _, _, m in per_stage if m], "MACs")
    return f'<div class="charts">{rf}{params}{macs}</div>'


# --- the layer table ---------------------------------------------------------------------


# The table's columns, as `cnndsl analyze --columns` declares them (analysis.columns).
SHOWN = ("layer", "written", "output", "params", "macs", "flops", "training_flops",
         "activations", "rf", "inputs")
SUMMED = ("params", "macs", "flops", "training_flops", "activations")   # a block's row sums them


def _report_columns() -> tuple:
    """(header, how the script sorts it, the cell's text of a row of Analysis.layers())."""
    from ..analysis.columns import COLUMNS as DECLARED, cells

    def kind(column) -> str:
        return "shape" if column.name == "output" else "num" if column.justify == "right" else "text"

    return tuple((c.header, kind(c), lambda row, c=c: cells((c,), row, {})[0])
                 for c in map(DECLARED.get, SHOWN))


COLUMNS = _report_columns()


def _layer_table(rows: list[dict], messages: dict, depth: int | None) -> str:
    head = "".join(f'<th data-type="{kind}" title="sort">{_text(header)}</th>'
                   for header, kind, _ in COLUMNS)
    tools = ('<p class="tools"><button id="expand-all" type="button">expand all</button>'
             '<button id="collapse-all" type="button">collapse all</button>'
             '<button id="tree-order" type="button" disabled>network order</button>'
             '<span id="sort-state"></span></p>')
    note = ("<p>One row per layer, in the network's order; a block's row (▾) sums the layers "
            "under it and folds them. Click a column's header to sort every layer by it.</p>")
    body = "\n".join(_table_rows(rows, messages, depth))
    return (f'{note}{tools}<table id="layer-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table>")


def _table_rows(rows: list[dict], messages: dict, depth: int | None):
    """Each layer's row, each block's row just before its first layer; with `depth`, the
    blocks `depth` or more name parts deep start folded."""
    blocks = _blocks(rows)
    for row in rows:
        parts = row["name"].split(".")
        for k in range(1, len(parts)):
            name = ".".join(parts[:k])
            block = blocks.pop(name, None)
            if block is not None:
                yield _block_row(block, folded=depth is not None and k >= depth)
        yield _layer_row(row, messages.get(row["name"], ()))


def _blocks(rows: list[dict]) -> dict[str, dict]:
    """Every name prefix of a layer, as a row of its descendants: counts summed, the
    largest receptive field, the last one's output."""
    blocks: dict[str, dict] = {}
    for row in rows:
        parts = row["name"].split(".")
        for k in range(1, len(parts)):
            name = ".".join(parts[:k])
            block = blocks.setdefault(name, dict(name=name, count=0, inputs=[], rf=None,
                                                 **dict.fromkeys(SUMMED, 0)))
            block.update({key: block[key] + row[key] for key in SUMMED})
            block.update(count=block["count"] + 1, output=row["output"],
                         rf=max(block["rf"] or 0, row["rf"] or 0) or None)
    for block in blocks.values():
        block["layer"] = f"{block['count']:,} layer{'s' * (block['count'] != 1)}"
    return blocks


def _block_row(block: dict, folded: bool) -> str:
    cells = [_cell(kind, cell(block)) for _, kind, cell in COLUMNS]
    cells[0] = (f'<td><button class="toggle" type="button" aria-expanded="true">▾</button>'
                f"{_text(block['name'])}</td>")
    return (f'<tr class="block{" closed" * folded}" data-block="{_text(block["name"])}">'
            + "".join(cells) + "</tr>")


def _layer_row(row: dict, messages) -> str:
    cells = "".join(_cell(kind, cell(row)) for _, kind, cell in COLUMNS)
    if not messages:
        return f'<tr class="layer">{cells}</tr>'
    severity = "error" if any(s == "error" for s, _ in messages) else "warning"
    title = clip("; ".join(message for _, message in messages), 600)
    return f'<tr class="layer {severity}" title="{_text(title)}">{cells}</tr>'


def _cell(kind: str, text: str) -> str:
    return f'<td class="n">{_text(text)}</td>' if kind == "num" else f"<td>{_text(text)}</td>"


# --- diagnostics -------------------------------------------------------------------------


def _severities(diagnostics) -> str:
    """'1 error, 2 warnings', or 'none'."""
    counts = collections.Counter(d.severity for d in diagnostics)
    return ", ".join(f"{n} {severity}{'s' * (n != 1)}" for severity, n in counts.items()) or "none"


def _diagnostics(analysis) -> str:
    """Each diagnostic as the terminal shows it: file:line:col, the line, a caret."""
    if not analysis.diagnostics:
        return "<p>none: every layer fits its input.</p>"
    return "\n".join(f'<pre class="{_text(d.severity)}">{_text(d.format())}</pre>'
                     for d in analysis.diagnostics)


# --- a training run ----------------------------------------------------------------------


def _run_section(run: RunRecord) -> str:
    from ..training.settings import SETTINGS

    parts = [f'<p class="meta">run folder: {_text(run.folder)}</p>']
    parts += [f'<p class="note">{_text(note)}</p>' for note in run.notes]
    if run.summary is None:
        parts.append('<p class="note">no summary.json: the run has not finished (or was '
                     f"stopped); {len(run.metrics)} epoch(s) in metrics.jsonl</p>")
    else:
        parts.append(_kv_table((key, value_text(value), "") for key, value in run.summary.items()))
    parts.append(_curves(run.metrics))
    settings = [(s.name, value_text(run.settings[s.name]), "") for s in SETTINGS if s.name in run.settings]
    checkpoint = [(key, value_text(value), "checkpoint") for key, value in run.checkpoint.items()]
    parts.append(f"<details open><summary>settings</summary>{_kv_table(settings + checkpoint)}</details>")
    return "\n".join(parts)


def _curves(metrics: list[dict]) -> str:
    if not metrics:
        return '<p class="note">no epoch in metrics.jsonl: no training curves</p>'

    def series(split: str, key: str) -> Series:
        return Series(split, [(m["epoch"], m.get(f"{split}_{key}")) for m in metrics])

    loss = line_chart("Loss per epoch", "epoch", "loss", [series("train", "loss"), series("val", "loss")])
    accuracy = line_chart("Accuracy per epoch", "epoch", "accuracy",
                          [series("train", "acc"), series("val", "acc")])
    return f'<div class="charts">{loss}{accuracy}</div>'


MAX_ITEMS_SHOWN = 20     # entries of a dict or list value shown in a settings cell


def value_text(value) -> str:
    """A value read from a run's files, as short text; never str() of an unknown object.

    >>> value_text(0.756396), value_text(61706), value_text(None), value_text({"hflip": True})
    ('0.756396', '61,706', 'none', 'hflip: true')
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) < 10 ** 30 else "(a number of more than 30 digits)"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return clip(value, 200)
    if isinstance(value, dict):
        items = list(itertools.islice(value.items(), MAX_ITEMS_SHOWN))
        return clip(", ".join(f"{value_text(k)}: {_scalar_text(v)}" for k, v in items), 200)
    if isinstance(value, (list, tuple)):
        return clip(", ".join(_scalar_text(v) for v in itertools.islice(value, MAX_ITEMS_SHOWN)), 200)
    return f"({type(value).__name__})"


def _scalar_text(value) -> str:
    """A nested value: a plain one as text, anything deeper by its type (no recursion:
    a hostile list may hold itself)."""
    return value_text(value) if value is None or isinstance(value, (bool, int, float, str)) \
        else f"({type(value).__name__})"
