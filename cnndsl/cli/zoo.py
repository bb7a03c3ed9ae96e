"""`cnndsl zoo`: the bundled specs with their input, parameters and MACs."""
from __future__ import annotations

import json

from .common import EXIT_OK


def add_parser(commands):
    p = commands.add_parser("zoo", help="list the bundled specs with their params and MACs")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    return p


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..analysis.report import human
    from ..graph import shape_text
    from ..resources import zoo_specs
    from ..lang.spec import load

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "input", "params", "MACs", "description"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left",
                         no_wrap=True, overflow="ellipsis", max_width=70)
    for name, path in zoo_specs().items():
        spec = load(path)
        totals = spec.analyze().totals()
        shape = shape_text(spec.graph().nodes["input"]["opts"].values())
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
