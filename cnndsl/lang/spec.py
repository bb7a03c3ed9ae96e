"""Spec files → `Spec`: a `.yaml` spec, a `.cnn` file, or inline DSL text.

>>> spec = parse("INPUT(3, 32, 32) -> CONV5-10(pad=2)")
>>> spec.analyze().totals()["params"]    # the notes: 10 filters of 5×5×3, +1 bias each
760
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.result import Analysis, analyze_graph
from ..errors import CnnDslError, Fragment, Source, Span, clip, did_you_mean
from ..layers import KINDS
from ..resources import zoo_dir, zoo_specs
from . import ast, family, yaml_spec
from .expand import DEFAULT_MAX_LAYERS, InputShape, expand
from .parser import parse_block, parse_net, parse_program

SPEC_SUFFIXES = (".yaml", ".yml", ".cnn")

# The longest spec read: a flat chain of the default --max-layers (100,000) layers fits in
# it, and it parses in seconds; a larger text is refused before it is read or parsed.
MAX_SPEC_BYTES = 1 << 20


@dataclass
class Spec:
    name: str
    program: ast.Program
    source: Source
    description: str = ""
    input: InputShape | None = None
    fit: str = "floor"                      # or "strict": a misfit is an error
    train: dict = field(default_factory=dict)              # defaults for `cnndsl train`
    train_spans: dict[str, Span] = field(default_factory=dict)  # "optimizer.lr" → its key
    # A family's variables by name, with their values: `family:` and --set (lang.family).
    declared: dict[str, family.Variable] = field(default_factory=dict)

    @property
    def path(self) -> str | None:
        return self.source.path

    @property
    def text(self) -> str:
        return self.source.text

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def graph(self, input: tuple[int, int, int] | None = None,
              max_layers: int = DEFAULT_MAX_LAYERS):
        given = InputShape(tuple(input), override=True) if input else self.input
        # A family whose every variable has one value is one network; one of several
        # members is an error here (`cnndsl analyze` lists them, analysis.family).
        values = family.single_member(self.program, self.declared)
        return expand(self.program, given, max_layers, values)

    @property
    def is_family(self) -> bool:
        """Whether the spec has variables (declared, set, or a `?`), even single-valued."""
        return family.is_family(self.program, self.declared)

    def with_values(self, sets: list[tuple[str, "family.Variable"]]) -> "Spec":
        """This spec with `--set NAME=VALUES` applied: each replaces the declared values of
        NAME, or declares NAME. A spec that becomes one network is named after its values
        (`notes[N=2,M=3]`), so that its run folder tells members apart."""
        if not sets:
            return self
        family.check_sets(self.program, sets)
        declared = family.with_sets(self.declared, sets)
        variables = family.variables(self.program, declared)
        name = self.name
        if all(v.count == 1 for v in variables.values()):
            name = family.member_name(name, {k: v.values[0] for k, v in variables.items()})
        return dataclasses.replace(self, name=name, declared=declared)

    def analyze(self, strict: bool = False, input: tuple[int, int, int] | None = None,
                batch: int = 1, optimizer: str | None = None,
                max_layers: int = DEFAULT_MAX_LAYERS) -> Analysis:
        """Shapes, fit, parameters, MACs, FLOPs, memory and receptive fields.

        Syntax and expansion errors raise `CnnDslError`; what does not fit is
        reported in the returned analysis' `diagnostics` (see `.ok`)."""
        from ..training.settings import optimizer_name   # torch-free; `optimizer: adam` too
        optimizer = optimizer or optimizer_name(self.train)
        graph = self.graph(input, max_layers)
        return analyze_graph(self.name, graph, strict or self.fit == "strict", batch, optimizer)

    def compile(self, input: tuple[int, int, int] | None = None, weights: str | None = None,
                **options):
        """A `torch.fx.GraphModule` computing this network (imports torch).

        `weights`: start from a file's weights, as `cnndsl train --init-from` does: a
        checkpoint of `cnndsl train` (by name), a state_dict file (by name if its names
        are mostly the spec's, else by graph order), or `"torchvision:NAME"` (the cached
        file of torchvision's pretrained NAME, by graph order). What was copied is logged
        on the `cnndsl` logger (INFO); foreign weights that leave a tensor of the spec
        unmapped raise `CnnDslError`."""
        from ..backends.torch_fx import compile_spec
        module = compile_spec(self, input=input, **options)
        if weights is not None:
            import logging

            from ..backends import weights as weight_files
            logging.getLogger("cnndsl").info("weights %s", weight_files.load(module, weights))
        return module

def parse(text: str, name: str = "inline", max_bytes: int = MAX_SPEC_BYTES,
          max_layers: int | None = None) -> Spec:
    """Inline DSL text (block definitions, then the chain), as on the command line.

    A text of more than `max_bytes` is refused; so is, before it is parsed, a chain with
    more `->` than `max_layers` (when given: the limit `analyze` will apply)."""
    if len(text) > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise CnnDslError(f"the inline spec is {len(text.encode('utf-8', 'surrogatepass')):,} "
                          f"bytes long, more than the limit of {max_bytes:,} bytes for a spec")
    source = Source(text)
    _refuse_long_chain(Fragment(source, text), max_layers, blocks_possible=True)
    return Spec(name, parse_program(text), source)

def load(path: str | Path, max_bytes: int = MAX_SPEC_BYTES, max_layers: int | None = None) -> Spec:
    """A `.yaml`/`.yml` spec or a `.cnn` file (of at most `max_bytes`; `max_layers` as
    for `parse`), or the name of a bundled spec (`resnet50`, `families/notes`)."""
    path = Path(path)
    if path.suffix not in SPEC_SUFFIXES and not path.exists():
        bundled = zoo_specs().get(str(path)) or _bundled_in_folder(str(path))
        if bundled is not None:
            return load(bundled, max_bytes, max_layers)
    if path.suffix not in SPEC_SUFFIXES:
        raise CnnDslError(f"{path}: a spec file ends in .yaml, .yml or .cnn")
    text = _read(path, max_bytes)
    if path.suffix == ".cnn":
        source = Source(text, str(path))
        _refuse_long_chain(Fragment(source, text), max_layers, blocks_possible=True)
        return Spec(path.stem, parse_program(text, str(path)), source)
    return _load_yaml(text, str(path), default_name=path.stem, max_layers=max_layers)

_COMMENT = re.compile(r"#[^\n]*")
_NESTING = re.compile(r"[()\[\]{}=]")

def _refuse_long_chain(fragment: Fragment, max_layers: int | None, blocks_possible: bool) -> None:
    """A net whose chain has more `->` than `max_layers` is refused before it is parsed
    (a megabyte of `RELU -> RELU -> ...` takes seconds to parse): every `->` starts a
    stage of at least one layer, so the net expands to at least as many layers as it has
    `->` (INPUT is not counted). Not when a block may be defined (a `=` outside brackets):
    a block's `->` count only if it is called."""
    text = fragment.text
    if max_layers is None or text.count("->") <= max_layers:
        return
    text = _COMMENT.sub(lambda m: " " * len(m.group()), text)  # the same length: offsets hold
    if blocks_possible and "=" in text:
        depth = 0
        for mark in _NESTING.finditer(text):
            char = mark.group()
            if char == "=" and depth <= 0:
                return  # perhaps a block definition: the parser and the layer count decide
            depth += 1 if char in "([{" else -1 if char != "=" else 0
    arrows = re.finditer("->", text)
    for _ in range(max_layers):
        next(arrows, None)
    beyond = next(arrows, None)
    if beyond is not None:
        raise CnnDslError(f"this is '->' number {max_layers + 1:,} of the chain, so it expands to "
                          f"more layers than the limit of {max_layers:,} (raise it with --max-layers)",
                          fragment.span(beyond.start(), beyond.end()))

def _read(path: Path, max_bytes: int) -> str:
    """The text of a spec file: a regular file (never a directory, a device or a FIFO,
    which could block or never end) of at most `max_bytes`, without a UTF-8 BOM."""
    try:
        _refuse_unless_regular(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())   # the file opened: it may have changed since
            _refuse_unless_regular(path, info)
            _refuse_large(path, info.st_size, max_bytes)
            data = file.read(max_bytes + 1)  # a file may hold more than its size says (/proc)
        _refuse_large(path, len(data), max_bytes)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise CnnDslError(f"no such spec file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CnnDslError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    # An editor's byte-order mark is not text: without it, columns count as the editor shows.
    return text[1:] if text.startswith("\ufeff") else text

_FILE_KINDS = ((stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISSOCK, "a socket"))

def _refuse_unless_regular(path, info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISDIR(info.st_mode):
        raise CnnDslError(f"{path} is a directory, not a spec file")
    what = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "something else")
    raise CnnDslError(f"{path} is not a regular file but {what}, so not a spec file")

def _refuse_large(path, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise CnnDslError(f"{path} is {'at least ' if size == max_bytes + 1 else ''}{size:,} bytes, "
                          f"more than the limit of {max_bytes:,} bytes for a spec file")

# Letters that are read for digits (and back) in a name typed by hand: resnet5O, vgg1l.
_CONFUSABLE = str.maketrans("oil", "011")

def _zoo_guess(argument: str, zoo) -> str:
    """' — did you mean X?' for an argument that looks like a misspelt zoo name."""
    same = [name for name in zoo if name.lower().translate(_CONFUSABLE)
            == argument.lower().translate(_CONFUSABLE)]
    return f" — did you mean '{same[0]}'?" if len(same) == 1 else did_you_mean(argument, zoo)

def _bundled_in_folder(argument: str) -> Path | None:
    """A bundled spec in a folder of the zoo, named by its path there: `families/notes`."""
    if not re.fullmatch(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)+", argument):
        return None
    for suffix in SPEC_SUFFIXES:
        path = zoo_dir() / f"{argument}{suffix}"
        if path.is_file():
            return path
    return None

def resolve(argument: str, max_bytes: int = MAX_SPEC_BYTES, max_layers: int | None = None) -> Spec:
    """What the command line names: a spec file, a zoo name (`vgg16`), or inline DSL
    (`max_bytes` and `max_layers` as for `parse`)."""
    try:
        info = os.stat(argument)
    except (OSError, ValueError):  # no such file, or inline DSL text too long to be a file name
        info = None
    if info is not None and stat.S_ISREG(info.st_mode):
        return load(argument, max_bytes, max_layers)
    zoo = zoo_specs()
    if argument in zoo:
        return load(zoo[argument])
    bundled = _bundled_in_folder(argument)
    if bundled is not None:
        return load(bundled)
    if info is not None:  # a directory, a device, a FIFO: say so (never open it)
        _refuse_unless_regular(argument, info)
    # `CONV3-8/2` (with --input) is DSL, not a path, though it has a slash.
    head = re.match(r"[A-Za-z]*", argument).group().upper()
    if argument.endswith(SPEC_SUFFIXES) or (
            re.fullmatch(r"[\w.-]*[/\\][\w./\\-]*", argument) and head not in KINDS):
        raise CnnDslError(f"no such spec file: {clip(argument, 200)}")
    # A bare name close to a zoo name is a misspelt one (`resnet5O`), unless it starts
    # like a layer (`CONV3`: inline DSL).
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", argument) and (
            argument.islower() or head not in KINDS):
        guess = _zoo_guess(argument, zoo)
        if guess:
            raise CnnDslError(f"no spec named '{clip(argument)}' in the zoo{guess}")
    return parse(argument, max_bytes=max_bytes, max_layers=max_layers)

def _load_yaml(text: str, path: str, default_name: str, max_layers: int | None = None) -> Spec:
    source = Source(text, path)
    fields = yaml_spec.top_level(source)
    if "net" not in fields:
        raise CnnDslError("the spec has no `net:` (the network chain)", Span(source, 0, 1))
    net = yaml_spec.text_fragment(source, fields["net"], "net")
    _refuse_long_chain(net, max_layers, blocks_possible=False)  # blocks are apart in YAML
    program = ast.Program()
    for key, value in yaml_spec.mapping(source, fields.get("blocks"), "blocks"):
        block = parse_block(yaml_spec.text_fragment(source, key, "a block name"),
                            yaml_spec.text_fragment(source, value, "a block"))
        if block.name in program.blocks:
            raise CnnDslError(f"block '{block.name}' is defined twice", block.span)
        program.blocks[block.name] = block
    program.net = parse_net(net, blocks=program.blocks)   # the blocks first: for its diagnostics
    family.name_choices(program)   # the `?` of the net and the blocks, numbered together
    train = yaml_spec.construct(source, fields["train"]) if "train" in fields else {}
    if not isinstance(train, dict):
        raise CnnDslError("`train:` must be a mapping of options", yaml_spec.node_span(source, fields["train"]))
    return Spec(
        name=str(yaml_spec.scalar(source, fields["name"], "name")) if "name" in fields else default_name,
        program=program, source=source,
        description=str(yaml_spec.scalar(source, fields.get("description"), "description") or ""),
        input=yaml_spec.input_shape(source, fields.get("input")),
        fit=yaml_spec.fit_mode(source, fields.get("fit")),
        train=train, train_spans=yaml_spec.key_spans(source, fields.get("train")),
        declared=family.from_yaml(source, fields.get("family")),
    )
