"""Spec files → `Spec`: a `.yaml` spec, a `.cnn` file, or inline DSL text.

>>> spec = parse("INPUT(3, 32, 32) -> CONV5-10(pad=2)")
>>> spec.analyze().totals()["params"]    # the notes: 10 filters of 5×5×3, +1 bias each
760
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.result import Analysis, analyze_graph
from ..errors import CnnDslError, Source, Span, did_you_mean
from ..layers import KINDS
from ..resources import zoo_specs
from . import ast, yaml_spec
from .expand import DEFAULT_MAX_LAYERS, InputShape, expand
from .parser import parse_block, parse_net, parse_program

SPEC_SUFFIXES = (".yaml", ".yml", ".cnn")


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
        return expand(self.program, given, max_layers)

    def analyze(self, strict: bool = False, input: tuple[int, int, int] | None = None,
                batch: int = 1, optimizer: str | None = None,
                max_layers: int = DEFAULT_MAX_LAYERS) -> Analysis:
        """Shapes, fit, parameters, MACs, FLOPs, memory and receptive fields.

        Syntax and expansion errors raise `CnnDslError`; what does not fit is
        reported in the returned analysis' `diagnostics` (see `.ok`)."""
        optimizer = optimizer or str(self.train.get("optimizer", {}).get("name", "sgd"))
        graph = self.graph(input, max_layers)
        return analyze_graph(self.name, graph, strict or self.fit == "strict", batch, optimizer)

    def compile(self, input: tuple[int, int, int] | None = None, **options):
        """A `torch.fx.GraphModule` computing this network (imports torch)."""
        from ..backends.torch_fx import compile_spec
        return compile_spec(self, input=input, **options)

def parse(text: str, name: str = "inline") -> Spec:
    """Inline DSL text (block definitions, then the chain), as on the command line."""
    source = Source(text)
    return Spec(name, parse_program(text), source)

def load(path: str | Path) -> Spec:
    """A `.yaml`/`.yml` spec or a `.cnn` file."""
    path = Path(path)
    if path.suffix not in SPEC_SUFFIXES:
        raise CnnDslError(f"{path}: a spec file ends in .yaml, .yml or .cnn")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CnnDslError(f"no such spec file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CnnDslError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix == ".cnn":
        return Spec(path.stem, parse_program(text, str(path)), Source(text, str(path)))
    return _load_yaml(text, str(path), default_name=path.stem)

def resolve(argument: str) -> Spec:
    """What the command line names: a spec file, a zoo name (`vgg16`), or inline DSL."""
    try:
        is_file = Path(argument).is_file()
    except OSError:  # inline DSL text too long to be a file name
        is_file = False
    if is_file:
        return load(argument)
    zoo = zoo_specs()
    if argument in zoo:
        return load(zoo[argument])
    # `CONV3-8/2` (with --input) is DSL, not a path, though it has a slash.
    head = re.match(r"[A-Za-z]*", argument).group().upper()
    if argument.endswith(SPEC_SUFFIXES) or (
            re.fullmatch(r"[\w.-]*[/\\][\w./\\-]*", argument) and head not in KINDS):
        raise CnnDslError(f"no such spec file: {argument}")
    if re.fullmatch(r"[a-z][a-z0-9_]*", argument) and did_you_mean(argument, zoo):
        raise CnnDslError(f"no spec named '{argument}' in the zoo{did_you_mean(argument, zoo)}")
    return parse(argument)

def _load_yaml(text: str, path: str, default_name: str) -> Spec:
    source = Source(text, path)
    fields = yaml_spec.top_level(source)
    if "net" not in fields:
        raise CnnDslError("the spec has no `net:` (the network chain)", Span(source, 0, 1))
    program = ast.Program(net=parse_net(yaml_spec.text_fragment(source, fields["net"], "net")))
    for key, value in yaml_spec.mapping(source, fields.get("blocks"), "blocks"):
        block = parse_block(yaml_spec.text_fragment(source, key, "a block name"),
                            yaml_spec.text_fragment(source, value, "a block"))
        if block.name in program.blocks:
            raise CnnDslError(f"block '{block.name}' is defined twice", block.span)
        program.blocks[block.name] = block
    train = yaml_spec.construct(source, fields["train"]) if "train" in fields else {}
    if not isinstance(train, dict):
        raise CnnDslError("`train:` must be a mapping of options", yaml_spec.node_span(source, fields["train"]))
    return Spec(
        name=str(yaml_spec.construct(source, fields["name"])) if "name" in fields else default_name,
        program=program, source=source,
        description=str(yaml_spec.construct(source, fields.get("description")) or ""),
        input=yaml_spec.input_shape(source, fields.get("input")),
        fit=yaml_spec.fit_mode(source, fields.get("fit")),
        train=train, train_spans=yaml_spec.key_spans(source, fields.get("train")),
    )
