"""An analysed network as a picture: Graphviz DOT source, a Mermaid flowchart, or a
file that Graphviz's `dot` program renders (.svg, .png, .pdf).

Torch-free. `picture` turns the analysis into boxes, edges and nested clusters (with
`depth`, the layers nested deeper than `depth` name parts become one box per block, as
`cnndsl analyze --depth` sums them into one row). `to_dot` and `to_mermaid` write that
picture as text; Graphviz does every layout (`rankdir=TB`), nothing here places a node.

Every text in a label (names, what was written, diagnostics, the spec's name) comes
from a spec file, which may be hostile: it is escaped for the format it goes into.
"""
from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field

from ..errors import CnnDslError
from ..graph import inputs, shape_text

TEXT_FORMATS = (".dot", ".gv", ".mmd")
RENDERED_FORMATS = (".svg", ".png", ".pdf")
FORMATS = TEXT_FORMATS + RENDERED_FORMATS

# A layer with a diagnostic is filled red: strong for an error, pale for a warning (a
# window that floors, which the zoo's torchvision nets do on purpose); text stays readable.
FILLS = {"error": "#f08080", "warning": "#fbd0d0"}
MESSAGE_WIDTH = 48          # a diagnostic is wrapped to lines of this many characters
MAX_MESSAGES = 2            # a block with more says how many more
INSTALL_PACKAGE = "pip install 'cnndsl[viz]'"
INSTALL_DOT = ("the Graphviz program `dot` is not installed: apt-get install graphviz "
               "(Debian/Ubuntu) or brew install graphviz (macOS); .dot and .mmd files "
               "need neither")


@dataclass
class Box:
    """One drawn node: a layer, a join, or a collapsed block of layers."""
    id: str
    name: str
    written: str
    shape: tuple | None
    params: int
    macs: int
    join: bool = False
    layers: int = 1                       # how many layers a collapsed block sums
    messages: list[tuple[str, str]] = field(default_factory=list)   # (severity, message)
    output: bool = False                  # holds the network's output: its shape is shown

    @property
    def fill(self) -> str | None:
        severities = {severity for severity, _ in self.messages}
        return FILLS["error"] if "error" in severities else FILLS["warning"] if severities else None


@dataclass
class Cluster:
    """A block drawn as a frame around its boxes and inner blocks."""
    id: str
    name: str
    boxes: list[Box] = field(default_factory=list)
    inner: list["Cluster"] = field(default_factory=list)


@dataclass
class Picture:
    title: str
    top: Cluster                          # the whole network: not framed itself
    boxes: list[Box]
    edges: list[tuple[str, str, str]]     # (from box id, to box id, shape text)


# --- the picture ------------------------------------------------------------------------

def picture(analysis, depth: int | None = None) -> Picture:
    """The boxes, edges and clusters of an analysed graph, in the graph's order."""
    graph = analysis.graph
    unit_of = {name: _unit(name, depth) for name in graph}
    messages = _messages(analysis)
    boxes: dict[str, Box] = {}
    for name in graph:
        _add_to_box(boxes, unit_of[name], name, graph.nodes[name], messages.get(name, ()))
    edges, seen = [], set()
    for name in graph:
        for source in inputs(graph, name):   # port order: a join's branches as written
            pair = (boxes[unit_of[source]].id, boxes[unit_of[name]].id)
            if pair[0] != pair[1] and pair not in seen:
                seen.add(pair)
                edges.append((*pair, shape_text(graph.nodes[source]["shape"])))
    boxes[unit_of[analysis.output]].output = True
    return Picture(analysis.name, _clusters(boxes), list(boxes.values()), edges)


def _unit(name: str, depth: int | None) -> str:
    """The box a layer is drawn in: itself, or its block `depth` name parts deep."""
    parts = name.split(".")
    return name if depth is None or len(parts) <= depth else ".".join(parts[:depth])


def _add_to_box(boxes: dict, unit: str, name: str, node: dict, messages) -> None:
    box = boxes.get(unit)
    if box is None:
        collapsed = unit != name
        boxes[unit] = Box(f"n{len(boxes)}", unit, "" if collapsed else _written(node),
                          node["shape"], node["params"], node["macs"],
                          join=not collapsed and node["kind"].merge, messages=list(messages))
        return
    # A block's output is its last layer's (the graph's order is a topological one).
    box.shape, box.layers = node["shape"], box.layers + 1
    box.params, box.macs = box.params + node["params"], box.macs + node["macs"]
    box.written, box.join = "", False
    box.messages.extend(messages)


def _written(node: dict) -> str:
    from ..analysis.result import _written as written   # what the table's "written" shows

    return written(node)


def _messages(analysis) -> dict[str, list[tuple[str, str]]]:
    """Each diagnostic of the analysis, by the layer it is about.

    A diagnostic knows only its source span, which every copy of a repeated layer
    shares; so the layers written at that span are checked again, one by one, and a
    layer gets the diagnostics that checking it gives."""
    from ..analysis import passes

    severity = {(d.span, d.message): d.severity for d in analysis.diagnostics
                if d.span is not None and d.severity != "note"}
    spans = {span for span, _ in severity}
    found: dict[str, list[tuple[str, str]]] = {}
    graph = analysis.graph
    for name in graph:
        node = graph.nodes[name]
        if node["span"] not in spans:
            continue
        xs = [graph.nodes[p]["shape"] for p in inputs(graph, name)]
        if any(x is None for x in xs):
            continue   # downstream of an error: not checked, as infer_shapes does not
        diagnostics: list = []
        try:
            passes._output_shape(node, xs, False, diagnostics)
        except CnnDslError as e:
            diagnostics.extend(e.diagnostics)
        if diagnostics:
            found[name] = [(severity.get((node["span"], d.message), "error"), d.message)
                           for d in diagnostics]
    return found


def _clusters(boxes: dict[str, Box]) -> Cluster:
    """Blocks that hold drawn boxes, nested as their names are. A box named like a block
    (a join `concat1` and its branches `concat1.b1.…`) is drawn inside that block."""
    names = {".".join(box.name.split(".")[:k]) for box in boxes.values()
             for k in range(1, box.name.count(".") + 1)}
    top = Cluster("top", "")
    clusters = {"": top}

    def cluster(name: str) -> Cluster:
        if name not in clusters:
            parent = cluster(name.rpartition(".")[0])
            clusters[name] = Cluster(f"cluster_{len(clusters) - 1}", name)
            parent.inner.append(clusters[name])
        return clusters[name]

    for box in boxes.values():
        home = box.name if box.name in names else box.name.rpartition(".")[0]
        cluster(home).boxes.append(box)
    return top


def box_lines(box: Box) -> list[tuple[str, str]]:
    """A box's label as (style, text) lines: its name, what was written (or how many
    layers a block sums), params and MACs when non-zero, output shape, diagnostics."""
    lines = [("bold", box.name)]
    written = box.written if box.layers == 1 else f"{box.layers} layers"
    if written:
        lines.append(("plain", written))
    costs = [f"{label} {value:,}" for label, value in (("params", box.params), ("MACs", box.macs))
             if value]
    if costs:
        lines.append(("small", " · ".join(costs)))
    if box.output:
        lines.append(("small", f"output {shape_text(box.shape)}"))
    for _, message in box.messages[:MAX_MESSAGES]:
        lines += [("small", line) for line in textwrap.wrap(message, MESSAGE_WIDTH) or [""]]
    if len(box.messages) > MAX_MESSAGES:
        lines.append(("small", f"… and {len(box.messages) - MAX_MESSAGES} more "
                               "(`cnndsl analyze` lists them)"))
    return lines


# --- DOT --------------------------------------------------------------------------------

def html_text(text: str) -> str:
    """Text for a Graphviz HTML-like label: markup characters as entities, a line break
    as <BR/>, other control characters as U+FFFD (dot rejects them).

    >>> html_text('a<b> & "c"|{d}\\ne')
    'a&lt;b&gt; &amp; &quot;c&quot;|{d}<BR/>e'
    """
    return "<BR/>".join(html.escape(_printable(line), quote=True) for line in text.split("\n"))


def dot_string(text: str) -> str:
    """A DOT double-quoted string; a backslash stays a backslash (no \\N, \\l escapes).

    >>> print(dot_string('say "hi" \\\\ there'))
    "say \\"hi\\" \\\\ there"
    """
    escaped = _printable(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


_DOT_STYLE = {"bold": ("<B>", "</B>"), "plain": ("", ""),
              "small": ('<FONT POINT-SIZE="10">', "</FONT>")}


def _dot_label(box: Box) -> str:
    rows = "".join(f"<TR><TD>{_DOT_STYLE[style][0]}{html_text(text)}{_DOT_STYLE[style][1]}</TD></TR>"
                   for style, text in box_lines(box))
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0">{rows}</TABLE>>'


def to_dot(pic: Picture) -> str:
    """Graphviz source: a box per layer (an oval per join), the output shape on each
    edge, a frame (`subgraph cluster_…`) per block, layers with a diagnostic in red."""
    lines = ["digraph cnndsl {",
             f"  graph [rankdir=TB, label=<{html_text(pic.title)}>, labelloc=t, "
             'fontname="Helvetica", nodesep=0.3, ranksep=0.35];',
             '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", '
             "fontsize=12];",
             '  edge [fontname="Helvetica", fontsize=10];']
    lines += _dot_cluster(pic.top, "  ")
    lines += [f"  {a} -> {b} [label={dot_string(shape)}];" for a, b, shape in pic.edges]
    return "\n".join(lines + ["}"]) + "\n"


def _dot_cluster(cluster: Cluster, indent: str) -> list[str]:
    lines = []
    for box in cluster.boxes:
        attrs = [f"label={_dot_label(box)}"]
        if box.join:
            attrs.append("shape=oval")
        if box.fill:
            attrs.append(f'fillcolor="{box.fill}"')
        lines.append(f"{indent}{box.id} [{', '.join(attrs)}];")
    for inner in cluster.inner:
        lines.append(f"{indent}subgraph {inner.id} {{")
        lines.append(f'{indent}  label=<{html_text(inner.name)}>; style="rounded,dashed"; '
                     'color=gray50; fontsize=11;')
        lines += _dot_cluster(inner, indent + "  ")
        lines.append(f"{indent}}}")
    return lines


# --- Mermaid ----------------------------------------------------------------------------

_MERMAID_CODES = {ch: f"#{ord(ch)};" for ch in '#"<>&|`[]{}()'}


def mermaid_text(text: str) -> str:
    """Text for a quoted Mermaid label: markup characters as Mermaid's entity codes
    (`#34;`), a line break as <br>.

    >>> mermaid_text('a<b> "c"|#\\nd')
    'a#60;b#62; #34;c#34;#124;#35;<br>d'
    """
    return "<br>".join("".join(_MERMAID_CODES.get(ch, ch) for ch in _printable(line))
                       for line in text.split("\n"))


_MERMAID_STYLE = {"bold": ("<b>", "</b>"), "plain": ("", ""), "small": ("<small>", "</small>")}


def to_mermaid(pic: Picture) -> str:
    """A Mermaid flowchart (`flowchart TB`) of the same boxes, edges and blocks."""
    lines = ["flowchart TB"]
    lines += _mermaid_cluster(pic.top, "  ")
    lines += [f'  {a} -->|"{mermaid_text(shape)}"| {b}' for a, b, shape in pic.edges]
    for severity, fill in FILLS.items():
        misfits = [box.id for box in pic.boxes if box.fill == fill]
        if misfits:
            lines.append(f"  classDef {severity} fill:{fill},stroke:#c00")
            lines.append(f"  class {','.join(misfits)} {severity}")
    return "\n".join(lines) + "\n"


def _mermaid_cluster(cluster: Cluster, indent: str) -> list[str]:
    lines = []
    for box in cluster.boxes:
        label = "<br>".join(f"{_MERMAID_STYLE[s][0]}{mermaid_text(t)}{_MERMAID_STYLE[s][1]}"
                            for s, t in box_lines(box))
        open_, close = ("([", "])") if box.join else ("[", "]")
        lines.append(f'{indent}{box.id}{open_}"{label}"{close}')
    for inner in cluster.inner:
        lines.append(f'{indent}subgraph {inner.id}["{mermaid_text(inner.name)}"]')
        lines += _mermaid_cluster(inner, indent + "  ")
        lines.append(f"{indent}end")
    return lines


# --- files ------------------------------------------------------------------------------

def render(dot_source: str, fmt: str) -> bytes:
    """DOT source laid out and rendered by Graphviz's `dot` (fmt: svg, png, pdf)."""
    try:
        import graphviz
    except ImportError:
        raise CnnDslError(f"drawing a .{fmt} file needs the graphviz package: {INSTALL_PACKAGE} "
                          "(.dot and .mmd files need nothing)") from None
    try:
        return graphviz.Source(dot_source, engine="dot").pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise CnnDslError(INSTALL_DOT) from None
    except graphviz.CalledProcessError as e:
        first = (e.stderr or b"").decode(errors="replace").strip().splitlines()[:1]
        raise CnnDslError(f"Graphviz `dot` failed: {first[0] if first else e}") from None


def drawing(analysis, suffix: str, depth: int | None = None) -> bytes:
    """The file's bytes for a suffix of FORMATS."""
    pic = picture(analysis, depth)
    if suffix == ".mmd":
        return to_mermaid(pic).encode()
    dot_source = to_dot(pic)
    if suffix in TEXT_FORMATS:
        return dot_source.encode()
    return render(dot_source, suffix[1:])
