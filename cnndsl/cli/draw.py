"""`cnndsl draw`: a picture of a network, as the lecture notes draw one: a box per layer,
the output shape on each edge, branches and joins, blocks framed (backends.draw)."""
from __future__ import annotations

from pathlib import Path

from ..errors import clip
from .analyze import _input_shape, _positive, add_member_flags
from .common import EXIT_OK, EXIT_SPEC_ERROR, print_diagnostics, check_out


def add_parser(commands):
    from ..backends.draw import FORMATS

    p = commands.add_parser("draw", help="a picture of the network: .dot, .mmd (Mermaid), "
                                         ".svg, .png, .pdf")
    p.add_argument("spec", help="a .yaml/.yml/.cnn file, a zoo name (vgg16), or inline DSL text")
    p.add_argument("-o", "--out", required=True, metavar="FILE",
                   help=f"the file to write; its suffix picks the format ({', '.join(FORMATS)}); "
                        ".svg, .png and .pdf need Graphviz (pip install 'cnndsl[viz]' and its "
                        "`dot` program)")
    p.add_argument("--depth", type=_positive, metavar="N",
                   help="one box per block for layers nested deeper than N name parts")
    p.add_argument("--input", type=_input_shape, metavar="C,H,W", help="override the spec's input")
    add_member_flags(p)
    return p


def run(args) -> int:
    from ..backends.draw import drawing
    from ..lang.spec import resolve
    from ..training.checkpoint import atomic_write   # torch-free: os and tempfile only

    out = Path(args.out)
    _check_out(out, args.overwrite)
    spec = resolve(args.spec, max_layers=args.max_layers).with_values(args.set)
    analysis = spec.analyze(strict=args.strict, input=args.input, max_layers=args.max_layers)
    content = drawing(analysis, out.suffix.lower(), args.depth)
    _check_out(out, args.overwrite)   # again: rendering a large net takes a while
    atomic_write(out, lambda f: f.write(content))
    print(f"wrote {out}: {_one_line(analysis.name)}, {len(analysis.graph) - 1} layers")
    # A network that does not fit is drawn all the same, its misfits in red.
    print_diagnostics(analysis.diagnostics)
    return EXIT_OK if analysis.ok else EXIT_SPEC_ERROR


def _one_line(text: str) -> str:
    """A spec's name for the terminal: control characters (a newline) written as escapes,
    cut to a sensible length; the name comes from a file anyone may have written."""
    return clip("".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                        for c in text))


def _check_out(out: Path, overwrite: bool) -> None:
    from ..backends.draw import FORMATS

    check_out(out, overwrite, FORMATS, "net.svg")
