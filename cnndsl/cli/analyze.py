"""`cnndsl analyze`: shapes, fit, params, MACs, memory and receptive field of a spec."""
from __future__ import annotations

import argparse
import contextlib
import gc
import json

from ..errors import clip, too_many_digits
from ..lang.expand import DEFAULT_MAX_LAYERS
from .common import EXIT_OK, EXIT_SPEC_ERROR, print_diagnostics


def _whole(text: str) -> int:
    """int(text), refusing a number too long for the analysis (see errors.too_many_digits)."""
    problem = too_many_digits(sum(ch.isdigit() for ch in text))
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return int(text)


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(_whole(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three positive whole numbers), "
                                         f"got {clip(repr(text))}")
    return shape


def _positive(text: str) -> int:
    try:
        value = _whole(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {clip(repr(text))}")
    return value


def add_parser(commands):
    p = commands.add_parser("analyze", help="shapes, fit, params, MACs, memory, receptive field")
    p.add_argument("spec", help="a .yaml/.yml/.cnn file, a zoo name (vgg16), or inline DSL text")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--strict", action="store_true", help="a layer that does not fit is an error")
    p.add_argument("--input", type=_input_shape, metavar="C,H,W", help="override the spec's input")
    p.add_argument("--batch", type=_positive, default=1, help="batch size for the memory figures")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "none"],
                   help="optimiser state in the training-memory estimate (default: the spec's, or sgd)")
    p.add_argument("--depth", type=_positive, metavar="N",
                   help="sum layers nested deeper than N name parts into their block's row")
    p.add_argument("--max-layers", type=_positive, default=DEFAULT_MAX_LAYERS,
                   help=f"refuse networks that expand to more layers (default {DEFAULT_MAX_LAYERS:,})")
    return p


def run(args) -> int:
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
    from ..lang.spec import resolve

    from ..training.settings import check_spec

    spec = resolve(args.spec, max_layers=args.max_layers)  # a too long chain: refused unparsed
    check_spec(spec)   # a misspelt `train:` key is an error here too, not only in `train`
    analysis = spec.analyze(strict=args.strict, input=args.input, batch=args.batch,
                            optimizer=args.optimizer, max_layers=args.max_layers)
    if args.json:
        print(json.dumps(analysis.to_dict()))
    else:
        if analysis.ok:
            from ..analysis.report import print_report  # rich: only when a table is printed
            print_report(analysis, depth=args.depth)
        print_diagnostics(analysis.diagnostics)
    return EXIT_OK if analysis.ok else EXIT_SPEC_ERROR
