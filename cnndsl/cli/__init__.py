"""The `cnndsl` command: one module per subcommand, each with `add_parser` and `run`.

A new subcommand is a module here with those two functions, listed in `COMMANDS`.
Nothing here prints a traceback for bad input: every `CnnDslError` becomes its
diagnostic (see `common` for the exit statuses). Modules that need torch import it
inside `run`, so `cnndsl analyze` starts without it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import CnnDslError
from . import analyze
from . import completion
from . import draw
from . import eval
from . import export
from . import features
from . import plot
from . import report
from . import sweep
from . import train
from . import zoo
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_SPEC_ERROR, EXIT_USAGE, print_diagnostics

COMMANDS = (analyze, zoo, train, sweep, eval, features, draw, report, export, plot, completion)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnndsl", description="Analyse, compile and train CNNs written in the layer-pattern "
                                   "notation: INPUT -> [(CONV3-64 -> RELU)*2 -> POOL]*5 -> FC-4096")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CnnDslError as e:
        if getattr(args, "json", False):
            print(json.dumps({"name": None, "input": None, "output": None, "totals": None,
                              "layers": [], "diagnostics": [d.to_dict() for d in e.diagnostics]}))
        else:
            print_diagnostics(e.diagnostics)
        # An error that points into a spec is the spec's; one that points nowhere
        # (a missing file, an impossible flag) is the command line's.
        return EXIT_SPEC_ERROR if e.span is not None else EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader stopped early (`cnndsl analyze resnet152 | head`): not worth a traceback.
        # stdout goes to /dev/null so that Python's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
