"""The `cnndsl` command: analyze, zoo, train, eval, features.

Exit status: 0 when all went well, 1 when the spec (or data) has errors, 2 for
usage errors (a wrong flag, a missing file). Nothing here prints a traceback for
bad input: every `CnnDslError` becomes its diagnostic.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys

from .errors import CnnDslError
from .expand import DEFAULT_MAX_LAYERS

EXIT_OK, EXIT_SPEC_ERROR, EXIT_USAGE = 0, 1, 2


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive whole numbers), got {text!r}")
    return shape


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnndsl", description="Analyse, compile and train CNNs written in the layer-pattern "
                                   "notation: INPUT -> [(CONV3-64 -> RELU)*2 -> POOL]*5 -> FC-4096")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser("analyze", help="shapes, fit, params, MACs, memory, receptive field")
    analyze.add_argument("spec", help="a .yaml/.yml/.cnn file, a zoo name (vgg16), or inline DSL text")
    analyze.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    analyze.add_argument("--strict", action="store_true", help="a layer that does not fit is an error")
    analyze.add_argument("--input", type=_input_shape, metavar="C,H,W", help="override the spec's input")
    analyze.add_argument("--batch", type=_positive, default=1, help="batch size for the memory figures")
    analyze.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "none"],
                         help="optimiser state in the training-memory estimate (default: the spec's, or sgd)")
    analyze.add_argument("--depth", type=_positive, metavar="N",
                         help="sum layers nested deeper than N name parts into their block's row")
    analyze.add_argument("--max-layers", type=_positive, default=DEFAULT_MAX_LAYERS,
                         help=f"refuse networks that expand to more layers (default {DEFAULT_MAX_LAYERS:,})")
    analyze.set_defaults(run=run_analyze)

    zoo = commands.add_parser("zoo", help="list the bundled specs with their params and MACs")
    zoo.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    zoo.set_defaults(run=run_zoo)

    from .train_cli import add_commands  # train, eval, features (torch is imported only when run)
    add_commands(commands)
    return parser


def run_analyze(args) -> int:
    with _few_collections():
        return _analyze(args)


@contextlib.contextmanager
def _few_collections():
    """The analysis allocates many small objects and frees few: the cycle collector,
    run every 700 allocations, rescanning what was imported and the growing graph, costs
    a third of a 10,000-layer analysis. Collect rarely (as mypy does), then as before."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(200_000, 30, 30)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _analyze(args) -> int:
    from .spec import resolve

    spec = resolve(args.spec)
    analysis = spec.analyze(strict=args.strict, input=args.input, batch=args.batch,
                            optimizer=args.optimizer, max_layers=args.max_layers)
    if args.json:
        print(json.dumps(analysis.to_dict()))
    else:
        if analysis.ok:
            from .report import print_report  # rich: only when a table is printed
            print_report(analysis, depth=args.depth)
        _print_diagnostics(analysis.diagnostics)
    return EXIT_OK if analysis.ok else EXIT_SPEC_ERROR


def run_zoo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .report import human
    from .resources import zoo_specs
    from .spec import load

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "input", "params", "MACs", "description"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left",
                         no_wrap=True, overflow="ellipsis", max_width=70)
    for name, path in zoo_specs().items():
        spec = load(path)
        totals = spec.analyze().totals()
        shape = "×".join(map(str, spec.graph().nodes["input"]["opts"].values()))
        if args.json:
            print(json.dumps({"name": name, "input": shape, "params": totals["params"],
                              "macs": totals["macs"], "description": spec.description}))
        else:
            table.add_row(name, shape, f"{totals['params']:,}", human(totals["macs"]),
                          " ".join(spec.description.split()))
    if not args.json:
        console = Console()
        if not console.is_terminal:
            console.width = 160  # a pipe gets whole lines
        console.print(table)
    return EXIT_OK


def _print_diagnostics(diagnostics) -> None:
    for diagnostic in diagnostics:
        print(diagnostic.format(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CnnDslError as e:
        if getattr(args, "json", False):
            print(json.dumps({"name": None, "input": None, "output": None, "totals": None,
                              "layers": [], "diagnostics": [d.to_dict() for d in e.diagnostics]}))
        else:
            _print_diagnostics(e.diagnostics)
        # An error that points into a spec is the spec's; one that points nowhere
        # (a missing file, an impossible flag) is the command line's.
        return EXIT_SPEC_ERROR if e.span is not None else EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
