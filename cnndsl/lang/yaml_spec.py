"""Reading a YAML spec with every value's place in the file kept.

The spec is composed into YAML nodes (never constructed with anything but the safe
loader's constructors), so each key and value has its start and end in the file, and
a YAML string (`net:`, a block) becomes a `Fragment` whose characters map back to the
file's own lines and columns.
"""
from __future__ import annotations

import re

import yaml

from ..errors import CnnDslError, Diagnostic, Fragment, Source, Span, clip, did_you_mean, too_many_digits
from .expand import InputShape

YAML_KEYS = ("name", "description", "input", "fit", "family", "blocks", "net", "train")

# The values a spec may hold once its aliases are expanded: `&a [*b, *b, ...]` nine levels
# deep is 600 bytes of YAML and 10⁹ values. A real spec holds a few dozen.
MAX_YAML_VALUES = 100_000

_INT_TAG, _MERGE_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader's composer, counting the values the document holds with every
    alias expanded, and refusing at the alias that makes them more than `MAX_YAML_VALUES`
    (an alias bomb), or that stands inside the value it names (a recursive structure).

    An alias to a list or mapping becomes a copy of its node placed at the alias, so a
    diagnostic about that value points at the alias, not at the anchor."""

    def __init__(self, source: Source):
        super().__init__(source.text)
        self.source = source
        self.values = 0              # values composed so far, aliases expanded
        self.sizes: dict[int, int] = {}  # id(node) → its values, aliases expanded

    def compose_node(self, parent, index):
        if not self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            children = (node.value if isinstance(node, yaml.SequenceNode) else
                        [item for pair in node.value for item in pair]
                        if isinstance(node, yaml.MappingNode) else ())
            self.sizes[id(node)] = 1 + sum(self.sizes[id(child)] for child in children)
            self.values += 1
            return node
        event = self.peek_event()
        node = super().compose_node(parent, index)
        span = Span(self.source, event.start_mark.index,
                    max(event.end_mark.index, event.start_mark.index + 1))
        alias = clip(f"*{event.anchor}")
        size = self.sizes.get(id(node))
        if size is None:
            raise CnnDslError(f"the alias '{alias}' stands inside the value it names: a spec "
                              f"cannot hold a recursive YAML structure", span)
        self.values += size
        if self.values > MAX_YAML_VALUES:
            raise CnnDslError(f"with the alias '{alias}' the spec holds more than "
                              f"{MAX_YAML_VALUES:,} values once its aliases are expanded "
                              f"(a YAML alias bomb?)", span)
        if isinstance(node, yaml.ScalarNode):
            return node  # a scalar's diagnostics point at its text, where it is anchored
        copy = type(node)(node.tag, node.value, event.start_mark, event.end_mark,
                          flow_style=node.flow_style)
        self.sizes[id(copy)] = size
        return copy


def top_level(source: Source) -> dict:
    loader = _BoundedLoader(source)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        raise yaml_error(source, e) from None
    except RecursionError:
        raise CnnDslError("bad YAML: nested too deeply", Span(source, 0, 1)) from None
    finally:
        loader.dispose()
    _refuse_unsafe(source, root)
    if not isinstance(root, yaml.MappingNode):
        raise CnnDslError("a YAML spec is a mapping with `net:` (and name, input, blocks, ...)",
                          node_span(source, root) if root else Span(source, 0, 1))
    fields = {}
    for key, value in root.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else node_span(source, key).text()
        if name not in YAML_KEYS:
            raise CnnDslError(f"unknown key '{clip(name)}' (a spec has {', '.join(YAML_KEYS)})"
                              f"{did_you_mean(clip(name), YAML_KEYS)}", node_span(source, key))
        if name in fields:
            raise CnnDslError(f"key '{name}' is given twice", node_span(source, key))
        fields[name] = value
    return fields

def yaml_error(source: Source, e: yaml.YAMLError) -> CnnDslError:
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

def _refuse_unsafe(source: Source, root) -> None:
    """A tag the safe loader cannot build is refused by name, before anything is built;
    `!!python/...` would make Python objects (and run code) with an unsafe loader. So are
    merge keys (`<<`), and whole numbers too long for Python to read or print."""
    stack, seen = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag == _MERGE_TAG:
            raise CnnDslError("YAML merge keys (<<) are not supported in a spec: write the keys "
                              "out", node_span(source, node))
        if node.tag == _INT_TAG and isinstance(node, yaml.ScalarNode):
            problem = too_many_digits(sum(ch.isalnum() for ch in node.value))
            if problem:
                raise CnnDslError(problem, node_span(source, node))
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

def node_span(source: Source, node) -> Span:
    return Span(source, node.start_mark.index, max(node.end_mark.index, node.start_mark.index + 1))

def construct(source: Source, node):
    """A plain value from a YAML node, with the safe loader's constructors only."""
    if node is None:
        return None
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise yaml_error(source, e) from None
    except RecursionError:
        raise CnnDslError("bad YAML: nested too deeply", node_span(source, node)) from None


_KIND_OF_NODE = {yaml.SequenceNode: "a list", yaml.MappingNode: "a mapping"}


def scalar(source: Source, node, what: str):
    """The plain value of a key that holds one value (a text or a number), never a list
    or mapping (which could be an alias bomb, or print as one)."""
    if node is not None and not isinstance(node, yaml.ScalarNode):
        raise CnnDslError(f"`{what}:` is one value, not {_KIND_OF_NODE[type(node)]}",
                          node_span(source, node))
    return construct(source, node)

def mapping(source: Source, node, what: str):
    if node is None:
        return []
    if not isinstance(node, yaml.MappingNode):
        raise CnnDslError(f"`{what}:` must be a mapping", node_span(source, node))
    return node.value

def text_fragment(source: Source, node, what: str) -> Fragment:
    """A YAML string, with each character mapped back to its place in the file."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        raise CnnDslError(f"{what} is empty", node_span(source, node))
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        raise CnnDslError(f"{what} must be written as text; quote it, or use a block (`|`)",
                          node_span(source, node))
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

def input_shape(source: Source, node) -> InputShape | None:
    if node is None:
        return None
    value = construct(source, node) if (
        isinstance(node, yaml.SequenceNode) and len(node.value) == 3
        and all(isinstance(item, yaml.ScalarNode) for item in node.value)) else None
    if not (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise CnnDslError("`input:` must be [C, H, W], three positive whole numbers",
                          node_span(source, node))
    return InputShape(tuple(value), node_span(source, node))

def fit_mode(source: Source, node) -> str:
    value = scalar(source, node, "fit") if node is not None else "floor"
    if value not in ("floor", "strict"):
        raise CnnDslError(f"`fit:` is floor or strict, not {clip(repr(value))}", node_span(source, node))
    return value

def key_spans(source: Source, node, prefix: str = "") -> dict[str, Span]:
    """Spans of the keys of `train:` (dotted for nested ones), for its diagnostics."""
    spans = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # a list or mapping as a key: refused when `train:` is read
            name = prefix + str(key.value)
            spans[name] = node_span(source, key)
            spans.update(key_spans(source, value, name + "."))
    return spans
