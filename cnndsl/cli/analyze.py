"""`cnndsl analyze`: shapes, fit, params, MACs, FLOPs, memory and receptive field of a
spec, as a table, JSON, CSV, Markdown or HTML (analysis.report, analysis.formats); for a
family of networks (lang.family), one row per member (analysis.family); with --verify,
the FLOPs checked against torch's FlopCounterMode (analysis.verify, which imports torch)."""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
from pathlib import Path

from ..analysis.columns import column_help, parse_columns
from ..errors import CnnDslError, clip, too_many_digits
from ..lang.expand import DEFAULT_MAX_LAYERS
from ..lang.family import DEFAULT_MAX_MEMBERS, parse_set
from .common import EXIT_ERROR, EXIT_OK, EXIT_SPEC_ERROR, print_diagnostics, check_out

FORMATS = ("table", "json", "csv", "md", "html")
# -o FILE without --format: its suffix says which.
SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".md": "md", ".markdown": "md",
            ".html": "html", ".htm": "html", ".txt": "table"}


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


def _count(text: str) -> int:
    """A count with an optional SI suffix: 5000000, 5M, 2.5G, 500k."""
    return _amount(text, {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12})


def _bytes(text: str) -> int:
    """Bytes with an optional unit: 2GiB, 512MB, 1.5G (G: GiB), 1000000."""
    binary = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30,
              "gib": 2**30, "t": 2**40, "tib": 2**40}
    return _amount(text, {**binary, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12})


def _amount(text: str, units: dict) -> int:
    match = re.fullmatch(r"\s*(\d{1,30}(?:\.\d{0,12})?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if unit not in units:
        raise argparse.ArgumentTypeError(
            f"expected a number with an optional unit ({', '.join(u for u in units if u)}), "
            f"got {clip(repr(text))}")
    whole, _, fraction = match.group(1).partition(".")
    scale = units[unit]
    # Exact for whole numbers and for fractions of a unit: no float rounding.
    return int(whole) * scale + int(fraction or 0) * scale // 10 ** len(fraction)


def set_flag(text: str):
    """`--set NAME=VALUES`, parsed (lang.family.parse_set): a malformed one is a usage error."""
    try:
        return parse_set(text)
    except CnnDslError as e:   # argparse names the flag itself: "argument --set: ..."
        raise argparse.ArgumentTypeError(e.message.removeprefix(f"--set {clip(text)}: ")) from None


def add_family_flags(p) -> None:
    p.add_argument("--set", type=set_flag, action="append", default=[], metavar="NAME=VALUES",
                   help="give a family's variable its values, replacing or adding to the spec's "
                        "`family:`: N=2, N=0..3 (both ends included), c=16,32, pool?=yes")


def add_member_flags(p) -> None:
    """The flags that `draw` and `report` share for the one network they show: fit,
    --overwrite of FILE, the size guard, and a family member's variables."""
    p.add_argument("--strict", action="store_true", help="a layer that does not fit is an error")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--max-layers", type=_positive, default=DEFAULT_MAX_LAYERS,
                   help=f"refuse networks that expand to more layers (default {DEFAULT_MAX_LAYERS:,})")
    add_family_flags(p)   # a family's member: every variable one value


def add_parser(commands):
    p = commands.add_parser("analyze", help="shapes, fit, params, MACs, memory, receptive field")
    p.add_argument("spec", help="a .yaml/.yml/.cnn file, a zoo name (vgg16), or inline DSL text")
    p.add_argument("--format", choices=FORMATS,
                   help="table (the default), json, csv (one line per layer), md (GitHub "
                        "Markdown) or html (one standalone page); default: -o's suffix, or table")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("-o", "--out", metavar="FILE", help="write the report to FILE, not stdout")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--columns", metavar="A,B,…", help=column_help())
    p.add_argument("--verify", action="store_true",
                   help="check the FLOPs of forward and backward against torch's FlopCounterMode "
                        "on the built network (needs torch: pip install 'cnndsl[train]')")
    p.add_argument("--strict", action="store_true", help="a layer that does not fit is an error")
    p.add_argument("--input", type=_input_shape, metavar="C,H,W", help="override the spec's input")
    p.add_argument("--batch", type=_positive, default=1, help="batch size for the memory figures")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw", "none"],
                   help="optimiser state in the training-memory estimate (default: the spec's, or sgd)")
    p.add_argument("--depth", type=_positive, metavar="N",
                   help="sum layers nested deeper than N name parts into their block's row")
    p.add_argument("--max-layers", type=_positive, default=DEFAULT_MAX_LAYERS,
                   help=f"refuse networks that expand to more layers (default {DEFAULT_MAX_LAYERS:,})")
    family = p.add_argument_group("families", "a spec with variables (`family:`, --set, `x?`) is "
                                  "a family of networks: one row per member")
    add_family_flags(family)
    family.add_argument("--sample", type=_positive, metavar="K",
                        help="analyse K members drawn at random (with --seed) instead of all")
    family.add_argument("--seed", type=_whole, default=0, help="the seed of --sample (default 0)")
    family.add_argument("--max-members", type=_positive, default=DEFAULT_MAX_MEMBERS,
                        help=f"refuse a family of more members, before any is analysed "
                             f"(default {DEFAULT_MAX_MEMBERS:,})")
    family.add_argument("--max-params", type=_count, metavar="N",
                        help="prune members with more parameters (5M, 500k, 1000000)")
    family.add_argument("--max-macs", type=_count, metavar="N", help="prune members with more MACs (2G)")
    family.add_argument("--max-memory", type=_bytes, metavar="BYTES",
                        help="prune members whose training-memory estimate (at --batch) is "
                             "larger (4GiB, 500MB)")
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

    fmt = _output_format(args)
    _parse_columns(args)
    if args.out:
        check_out(Path(args.out), args.overwrite, None, "report.md")
    spec = resolve(args.spec, max_layers=args.max_layers)  # a too long chain: refused unparsed
    check_spec(spec)   # a misspelt `train:` key is an error here too, not only in `train`
    spec = spec.with_values(args.set)
    if spec.is_family and _members(spec) > 1:
        _refuse_for_families(args)
        return _analyze_family(args, spec, fmt)
    analysis = spec.analyze(strict=args.strict, input=args.input, batch=args.batch,
                            optimizer=args.optimizer, max_layers=args.max_layers)
    verification = _verify(analysis) if args.verify and analysis.ok else None
    if fmt == "json":
        report = analysis.to_dict()
        if verification:
            report["verify"] = verification.to_dict()
        _emit(args, json.dumps(report) + "\n")
    elif analysis.ok:
        _emit(args, _document(analysis, fmt, args))
    print_diagnostics(analysis.diagnostics)
    if verification and fmt != "json":
        _print_verification(verification, to_stderr=fmt != "table" and not args.out)
    if not analysis.ok:
        return EXIT_SPEC_ERROR
    return EXIT_ERROR if verification and not verification.agrees else EXIT_OK


def _output_format(args) -> str:
    """--format, else --json, else -o's suffix, else the table. `args.json` then says
    whether the output is JSON: the command's failures are JSON objects then (cli.main)."""
    if args.json and args.format not in (None, "json"):
        raise CnnDslError(f"--json is --format json: give one of --json and --format {args.format}")
    suffix = Path(args.out).suffix.lower() if args.out else ""
    fmt = args.format or ("json" if args.json else SUFFIXES.get(suffix, "table"))
    if args.columns is not None and fmt == "json":
        raise CnnDslError("--columns picks the columns of the table, csv, md and html; "
                          "JSON always has every key")
    args.json = fmt == "json"
    return fmt


def _parse_columns(args) -> None:
    """--columns' words → its columns; a wrong word is one line, with the valid ones
    (argparse would print its whole usage first)."""
    if args.columns is None:
        return
    try:
        args.columns = parse_columns(args.columns)
    except ValueError as e:
        raise CnnDslError(f"--columns: {e}") from None


def _refuse_for_families(args) -> None:
    if args.verify:
        raise CnnDslError("--verify checks one network: pick a member of the family, every "
                          "variable with one value (--set N=2 ...)")
    if args.columns is not None:
        raise CnnDslError("--columns picks the columns of a network's layer table; a family's "
                          "table has one row per member, with the columns it always has")


def _document(analysis, fmt: str, args) -> str | None:
    """The report as text; None for the table on stdout, which rich prints itself."""
    if fmt != "table":
        from ..analysis.report import document   # rich: only when a table is printed

        return document(analysis, fmt, args.depth, args.columns)
    from ..analysis.report import print_report

    if not args.out:
        print_report(analysis, depth=args.depth, columns=args.columns)
        return None
    console = _file_console()
    with console.capture() as captured:
        print_report(analysis, console, depth=args.depth, columns=args.columns)
    return captured.get()


def _file_console():
    """A console for text that goes to a file: whole lines, no colours."""
    from rich.console import Console

    return Console(color_system=None, force_terminal=False, highlight=False)


def _emit(args, text: str | None) -> None:
    """`text` to -o FILE (whole or not at all) or to stdout."""
    if text is None:
        return
    if not args.out:
        _print_lines([text.removesuffix("\n")])
        return
    from ..training.checkpoint import atomic_write   # torch-free: os and tempfile only

    check_out(Path(args.out), args.overwrite, None, "report.md")   # again: a large net takes a while
    atomic_write(Path(args.out), lambda f: f.write(text.encode("utf-8")))
    print(f"wrote {args.out}")


def _verify(analysis):
    from .common import threads_sleep_when_idle

    threads_sleep_when_idle()
    try:
        from ..analysis.verify import verify
    except ImportError:
        raise CnnDslError("--verify needs torch: pip install 'cnndsl[train]'") from None
    return verify(analysis)


def _print_verification(verification, to_stderr: bool) -> None:
    """After the table on stdout; on stderr when stdout carries a CSV, Markdown or HTML
    document, which stays one well-formed document."""
    from rich.console import Console

    console = Console(stderr=to_stderr, highlight=False)
    if not console.is_terminal:
        console.width = 200
    console.print()
    console.print(verification.table(), crop=False)
    for line in verification.summary_lines():
        console.print(line, markup=False, crop=False, soft_wrap=True)


def _members(spec) -> int:
    from ..lang import family

    return family.member_count(family.variables(spec.program, spec.declared).values())


def _analyze_family(args, spec, fmt: str) -> int:
    from ..analysis.family import Limits, analyze_family

    result = analyze_family(
        spec, input=args.input, strict=args.strict, batch=args.batch, optimizer=args.optimizer,
        max_layers=args.max_layers, max_members=args.max_members, sample=args.sample,
        seed=args.seed, limits=Limits(args.max_params, args.max_macs, args.max_memory))
    errors = result.errors()
    if fmt == "json":
        ordered = result.survivors() + [m for m in result.members if m.pruned]
        lines = [json.dumps(member.to_dict()) for member in ordered]
        lines.append(json.dumps({**result.summary(),
                                 "diagnostics": [d.to_dict() for d in result.notes + errors]}))
        _emit(args, "\n".join(lines) + "\n")
        return EXIT_SPEC_ERROR if errors else EXIT_OK
    print_diagnostics(result.notes)
    if fmt == "table":
        _emit(args, _family_table(result, _file_console() if args.out else _stdout_console()))
    else:
        from ..analysis.report import family_document

        _emit(args, family_document(result, fmt))
    print_diagnostics(errors)
    return EXIT_SPEC_ERROR if errors else EXIT_OK


def _stdout_console():
    from rich.console import Console

    return Console()


def _family_table(result, console) -> str:
    """The table of surviving members (rendered by `console`), then the summary lines."""
    from ..analysis.family import family_table, summary_lines

    from ..analysis.report import whole_lines

    lines = []
    if result.survivors():
        table = family_table(result)
        whole_lines(console, table)
        with console.capture() as captured:
            console.print(table, crop=False)
        lines += [captured.get()]    # its lines, each ending in a line break, and an empty one
    return "\n".join(lines + summary_lines(result)) + "\n"


def _print_lines(lines: list[str]) -> None:
    """Lines on stdout; a reader that stops early (`| head`) is not an error."""
    import os
    import sys

    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe once more when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
