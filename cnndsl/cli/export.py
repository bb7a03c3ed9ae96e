"""`cnndsl export`: a spec or a checkpoint written as ONNX, a torch.export program,
TorchScript, safetensors weights or a standalone PyTorch file (backends.export), then
read back and checked against the compiled network."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..backends import INIT_SCHEMES
from ..backends.export import FORMATS, format_of_suffix, require
from ..errors import CnnDslError, clip, did_you_mean
from ..lang.expand import DEFAULT_MAX_LAYERS
from ..lang.spec import SPEC_SUFFIXES
from .analyze import _input_shape, _positive, add_family_flags
from .common import EXIT_OK, threads_sleep_when_idle

CHECKPOINT_SUFFIXES = (".pt", ".pth")
# Flags that shape a network compiled from a spec; a checkpoint's is rebuilt as trained.
SPEC_ONLY = ("weights", "input", "set", "strict", "init")


def add_parser(commands):
    formats = "; ".join(f"{f.name} ({f.suffix}): {f.purpose}" for f in FORMATS.values())
    p = commands.add_parser(
        "export", help=f"write the network as {', '.join(FORMATS)}",
        description="Write a network for other tools, in eval mode with a free batch "
                    "dimension, then read the file back and compare its outputs with the "
                    f"compiled network's on a random batch. Formats: {formats}.")
    p.add_argument("source", metavar="SOURCE",
                   help="a checkpoint of `cnndsl train` (.pt: its trained weights), or a spec "
                        "(a .yaml/.yml/.cnn file, a zoo name or inline DSL: fresh weights, "
                        "unless --weights)")
    p.add_argument("--to", metavar="FORMAT",
                   help=f"{', '.join(FORMATS)} (default: from the suffix of FILE: "
                        f"{', '.join(f.suffix for f in FORMATS.values())})")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--weights", metavar="W",
                   help="with a spec: its weights from a checkpoint, a state_dict .pth or "
                        "torchvision:NAME, as `cnndsl train --init-from` takes them")
    p.add_argument("--seed", type=int, default=0,
                   help="the seed of fresh weights and of the check's random batch (default 0)")
    p.add_argument("--init", choices=INIT_SCHEMES,
                   help="the initialisation of fresh weights (default: PyTorch's own)")
    p.add_argument("--input", type=_input_shape, metavar="C,H,W", help="override the spec's input")
    p.add_argument("--strict", action="store_true", help="a layer that does not fit is an error")
    add_family_flags(p)   # a family's member: every variable one value
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="do not read the file back and compare its outputs")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--max-layers", type=_positive, default=DEFAULT_MAX_LAYERS, metavar="N",
                   help=f"refuse networks that expand to more layers (default {DEFAULT_MAX_LAYERS:,})")
    return p


def run(args) -> int:
    threads_sleep_when_idle()
    out = Path(args.out)
    fmt = pick_format(args.to, out)
    from_checkpoint = is_checkpoint(args.source)
    _refuse_spec_flags(args, from_checkpoint)
    sources = [Path(s) for s in (args.source, args.weights) if s and _is_file(s)]
    check_out(out, sources, args.overwrite)
    require(fmt.needs, f"exporting to {fmt.name}")
    if args.check:
        require(fmt.check_needs, f"checking the {fmt.name} file", " (or skip the check: --no-check)")
    from ..backends import export as exporter

    net = exporter.from_checkpoint(args.source) if from_checkpoint else _from_spec(args)
    print(f"network {exporter.describe(net)}")
    print(f"weights: {net.weights}")
    if net.input_note():
        print(net.input_note())
    check_out(out, sources, args.overwrite)   # again: compiling a large net takes a while
    seconds = exporter.write(net, fmt, out)
    print(f"wrote {out} ({fmt.name}, {_size(out)}) in {seconds:.1f} s")
    if args.check:
        print(f"check: {exporter.check(net, fmt, out, args.seed).words}")
    return EXIT_OK


def _from_spec(args):
    from ..backends import export as exporter
    from ..lang.spec import resolve

    spec = resolve(args.source, max_layers=args.max_layers).with_values(args.set)
    return exporter.from_spec(spec, input=args.input, init=args.init or "default",
                            seed=args.seed, strict=args.strict, weights=args.weights,
                            max_layers=args.max_layers)


def pick_format(to: str | None, out: Path):
    """The format --to names, which -o's suffix must agree with; or the suffix's."""
    suffixes = ", ".join(f.suffix for f in FORMATS.values())
    by_suffix = format_of_suffix(out.suffix)
    if to is None:
        if by_suffix is None:
            raise CnnDslError(f"-o {clip(str(out))}: give --to FORMAT ({', '.join(FORMATS)}), "
                              f"or a file name ending in one of {suffixes}")
        return by_suffix
    fmt = FORMATS.get(to.lower())
    if fmt is None:
        raise CnnDslError(f"--to {clip(to)}: no such format{did_you_mean(to, FORMATS)} "
                          f"(the formats: {', '.join(FORMATS)})")
    if out.suffix.lower() != fmt.suffix:
        written = f", not in '{clip(out.suffix)}'" if out.suffix else ""
        other = f" (the suffix of {by_suffix.name} files)" if by_suffix else ""
        raise CnnDslError(f"-o {clip(str(out))}: {fmt.name} files end in {fmt.suffix}{written}{other}")
    return fmt


def is_checkpoint(source: str) -> bool:
    """A .pt/.pth path, or any existing file that is not a spec file: a checkpoint."""
    suffix = Path(source).suffix.lower()
    return suffix in CHECKPOINT_SUFFIXES or (_is_file(source) and suffix not in SPEC_SUFFIXES)


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):   # no such file, or inline DSL too long to be a name
        return False


def _refuse_spec_flags(args, from_checkpoint: bool) -> None:
    if not from_checkpoint:
        return
    given = [name for name in SPEC_ONLY if getattr(args, name)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise CnnDslError(f"{flag} applies to a spec; {clip(args.source)} is a checkpoint, whose "
                          "network and weights are exported as it was trained")


def check_out(out: Path, sources: list[Path], overwrite: bool) -> None:
    """Never over a file exported from (whatever the path or link), nor a folder; over
    any other existing file only with --overwrite; into an existing folder."""
    shown = clip(str(out))
    if out.is_dir():
        raise CnnDslError(f"-o {shown} is a folder: give a file path")
    if not out.parent.is_dir():
        raise CnnDslError(f"-o {shown}: the folder {clip(str(out.parent))} does not exist")
    if not (out.exists() or out.is_symlink()):
        return
    for source in sources:
        if out.resolve() == source.resolve() or (out.exists() and os.path.samefile(out, source)):
            raise CnnDslError(f"-o {shown} is {clip(str(source))}, exported from: write to another file")
    if not overwrite:
        raise CnnDslError(f"-o {shown} already exists: add --overwrite to replace it, or give another -o")


def _size(path: Path) -> str:
    from ..training.limits import human_bytes   # torch-free

    return human_bytes(path.stat().st_size)
