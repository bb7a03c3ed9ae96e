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

import yaml

from . import ast
from .analysis import Analysis, analyze_graph
from .errors import CnnDslError, Diagnostic, Fragment, Source, Span, did_you_mean
from .expand import DEFAULT_MAX_LAYERS, InputShape, expand
from .layers import KINDS
from .parser import parse_block, parse_net, parse_program
from .resources import zoo_specs

SPEC_SUFFIXES = (".yaml", ".yml", ".cnn")
YAML_KEYS = ("name", "description", "input", "fit", "blocks", "net", "train")


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
        from .compile import compile_spec
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


# --- YAML specs --------------------------------------------------------------------

def _load_yaml(text: str, path: str, default_name: str) -> Spec:
    source = Source(text, path)
    fields = _top_level(source)
    if "net" not in fields:
        raise CnnDslError("the spec has no `net:` (the network chain)", Span(source, 0, 1))
    program = ast.Program(net=parse_net(_text_fragment(source, fields["net"], "net")))
    for key, value in _mapping(source, fields.get("blocks"), "blocks"):
        block = parse_block(_text_fragment(source, key, "a block name"),
                            _text_fragment(source, value, "a block"))
        if block.name in program.blocks:
            raise CnnDslError(f"block '{block.name}' is defined twice", block.span)
        program.blocks[block.name] = block
    train = _construct(source, fields["train"]) if "train" in fields else {}
    if not isinstance(train, dict):
        raise CnnDslError("`train:` must be a mapping of options", _node_span(source, fields["train"]))
    return Spec(
        name=str(_construct(source, fields["name"])) if "name" in fields else default_name,
        program=program, source=source,
        description=str(_construct(source, fields.get("description")) or ""),
        input=_input(source, fields.get("input")),
        fit=_fit(source, fields.get("fit")),
        train=train, train_spans=_key_spans(source, fields.get("train")),
    )


def _top_level(source: Source) -> dict:
    try:
        root = yaml.compose(source.text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    except RecursionError:
        raise CnnDslError("bad YAML: nested too deeply", Span(source, 0, 1)) from None
    _refuse_tags(source, root)
    if not isinstance(root, yaml.MappingNode):
        raise CnnDslError("a YAML spec is a mapping with `net:` (and name, input, blocks, ...)",
                          _node_span(source, root) if root else Span(source, 0, 1))
    fields = {}
    for key, value in root.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else _node_span(source, key).text()
        if name not in YAML_KEYS:
            raise CnnDslError(f"unknown key '{name}' (a spec has {', '.join(YAML_KEYS)})"
                              f"{did_you_mean(str(name), YAML_KEYS)}", _node_span(source, key))
        if name in fields:
            raise CnnDslError(f"key '{name}' is given twice", _node_span(source, key))
        fields[name] = value
    return fields


def _yaml_error(source: Source, e: yaml.YAMLError) -> CnnDslError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = (getattr(e, "problem", None) or str(e)).replace("'<stream end>'", "the end of the file")
    if problem == "mapping values are not allowed here":
        problem += " (a value with ': ' in it, like a label `fc6: FC-4096`, is quoted or written as a block, `net: |`)"
    span = Span(source, mark.index, mark.index + 1) if mark else None
    # "while parsing a flow sequence" at the '[' that was never closed: often the real place.
    context, where = getattr(e, "context", None), getattr(e, "context_mark", None)
    notes = ()
    if context and where and span is not None and where.index != mark.index:
        notes = (Diagnostic("note", context.replace("while scanning", "while reading")
                            .replace("while parsing", "while reading") + " that starts here",
                            Span(source, where.index, where.index + 1)),)
    return CnnDslError("", diagnostics=[Diagnostic("error", f"bad YAML: {problem}", span, notes)])


_SAFE_TAGS = {tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None}


def _refuse_tags(source: Source, root) -> None:
    """A tag the safe loader cannot build is refused by name, before anything is built;
    `!!python/...` would make Python objects (and run code) with an unsafe loader."""
    stack, seen = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in _SAFE_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            start = node.start_mark.index
            end = start + len(re.match(r"[^\s,\[\]{}]*", source.text[start:]).group())
            why = ("it would build a Python object; a spec holds plain data only, and cnndsl "
                   "reads YAML with a safe loader" if "python/" in tag else
                   "a spec holds plain data only: text, numbers, lists and mappings")
            raise CnnDslError(f"the YAML tag '{tag}' is refused: {why}", Span(source, start, max(end, start + 1)))
        if isinstance(node, yaml.SequenceNode):  # reversed: the first in the file is reported
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(reversed([item for pair in node.value for item in pair]))


def _node_span(source: Source, node) -> Span:
    return Span(source, node.start_mark.index, max(node.end_mark.index, node.start_mark.index + 1))


def _construct(source: Source, node):
    """A plain value from a YAML node, with the safe loader's constructors only."""
    if node is None:
        return None
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None


def _mapping(source: Source, node, what: str):
    if node is None:
        return []
    if not isinstance(node, yaml.MappingNode):
        raise CnnDslError(f"`{what}:` must be a mapping", _node_span(source, node))
    return node.value


def _text_fragment(source: Source, node, what: str) -> Fragment:
    """A YAML string, with each character mapped back to its place in the file."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        raise CnnDslError(f"{what} is empty", _node_span(source, node))
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        raise CnnDslError(f"{what} must be written as text; quote it, or use a block (`|`)",
                          _node_span(source, node))
    value, start = node.value, node.start_mark.index
    raw = source.text[start:node.end_mark.index]
    chars, where = _raw_chars(raw, node.style)
    # Skip a block's header line (`|  # comment`) and a quote, lest the value match in them.
    j = raw.find("\n") + 1 if node.style in ("|", ">") else int(node.style in ("'", '"'))
    offsets = []
    for ch in value:
        found = _find_char(chars, ch, j)
        j = found if found is not None else j
        offsets.append(start + (where[min(j, len(where) - 1)] if where else 0))
        j += found is not None
    return Fragment(source, value, tuple(offsets) or (start,))


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|\r?\n[ \t]*|.)", re.S)
_ESCAPED = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f",
            "r": "\r", "e": "\x1b", "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029"}


def _raw_chars(raw: str, style) -> tuple[str, list[int]]:
    """A scalar's raw text as its characters read, each with its index in `raw`: in a
    double-quoted one, an escape (`\\t`, `\\x41`) is one character, at its backslash."""
    if style != '"':
        return raw, list(range(len(raw)))
    chars, where, i = [], [], 0
    while i < len(raw):
        escape = _ESCAPE.match(raw, i) if raw[i] == "\\" else None
        if escape is None:
            chars.append(raw[i])
            where.append(i)
            i += 1
            continue
        body = escape.group(1)
        if body[0] not in "\r\n":  # an escaped line break joins two lines: no character
            chars.append(chr(int(body[1:], 16)) if body[0] in "xuU" and len(body) > 1
                         else _ESCAPED.get(body, body))
            where.append(i)
        i = escape.end()
    return "".join(chars), where


def _find_char(raw: str, ch: str, j: int) -> int | None:
    """Where `ch` of a YAML value stands in its raw text: folding turns line breaks
    into spaces, so any whitespace matches whitespace."""
    if ch.isspace():
        match = re.compile(r"\s").search(raw, j)
        return match.start() if match else None
    found = raw.find(ch, j)
    return found if found >= 0 else None


def _input(source: Source, node) -> InputShape | None:
    if node is None:
        return None
    value = _construct(source, node)
    if not (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise CnnDslError("`input:` must be [C, H, W], three positive whole numbers",
                          _node_span(source, node))
    return InputShape(tuple(value), _node_span(source, node))


def _fit(source: Source, node) -> str:
    value = _construct(source, node) if node is not None else "floor"
    if value not in ("floor", "strict"):
        raise CnnDslError(f"`fit:` is floor or strict, not {value!r}", _node_span(source, node))
    return value


def _key_spans(source: Source, node, prefix: str = "") -> dict[str, Span]:
    """Spans of the keys of `train:` (dotted for nested ones), for its diagnostics."""
    spans = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = prefix + str(key.value)
            spans[name] = _node_span(source, key)
            spans.update(_key_spans(source, value, name + "."))
    return spans
