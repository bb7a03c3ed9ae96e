"""Families: a spec with free variables, each ranging over a few values.

The lecture notes' pattern `INPUT -> [(CONV -> RELU)*N -> POOL?]*M -> [FC -> RELU]*K -> FC`
is a family of networks, one *member* per choice of N, M, K and the pool. A spec is a
family when it declares variables (YAML `family:`, or `--set` on the command line) or
writes `x?`:

* A **variable** is a name used where a whole number stands (`*N`, `CONV3-{c}`), declared
  with its values: `N: 0..3` (a range, both ends included), `c: [16, 32, 64]` (a list) or
  one number. Variables are declared, never inferred: an undeclared name is an error at
  its use, a declared name the net never uses an error at its declaration.
* A **choice** is written `x?`: x is present in some members and absent in others. Each
  `?` written is one yes/no variable, named after what it makes optional (`POOL?` is the
  choice `pool?`; when several `?` would have one name they are numbered in the order
  written: `pool?1`, `pool?2`). Its value is the same everywhere its text is expanded,
  in every copy of a repetition and every call of a block.

A member is a dict of values by name; `lang.expand.expand(program, values=...)` builds its
network. This module never imports torch, and nothing here evaluates user text: values
are whole numbers read with `int()`.

>>> declared = dict([parse_set("N=0..3"), parse_set("c=16,32")])
>>> [v.count for v in declared.values()], member_count(declared.values())
([4, 2], 8)
>>> member_values(list(declared.values()), 5)
{'N': 2, 'c': 32}
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

from . import ast
from ..errors import CnnDslError, Source, Span, clip, did_you_mean, too_many_digits

DEFAULT_MAX_MEMBERS = 100_000
CHOICE_VALUES = (False, True)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHOICE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\?[0-9]*")
_RANGE = re.compile(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*")
_YES = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
_RESERVED = {"true", "false", "as"}


@dataclass(frozen=True)
class Variable:
    """A variable of a family and the values it takes, in order.

    `values` is a `range` (from `a..b`) or a tuple; `span` is where it was declared
    (None for `--set` and for a choice nobody declared: the `?` itself is `use`)."""
    name: str
    values: Sequence
    span: Span | None = None
    use: Span | None = None      # the first place the net uses it (for a choice, its `?`)

    @property
    def is_choice(self) -> bool:
        return "?" in self.name

    @property
    def count(self) -> int:
        """How many values; a range's length without `len()`, which stops at 2⁶³."""
        v = self.values
        return max(0, v.stop - v.start) if isinstance(v, range) else len(v)

    def text(self) -> str:
        """The values as written back: `0..3`, `16, 32`, `yes, no`."""
        v = self.values
        if isinstance(v, range):
            return f"{v.start}..{v.stop - 1}" if self.count > 1 else str(v.start)
        return ", ".join(value_text(x) for x in v)


def value_text(value) -> str:
    """A value as tables and messages write it: a choice is yes or no."""
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


# --- the syntax tree: choices and the names a net uses ----------------------------------

def choice_base(node) -> str:
    """What a `?` makes optional, named: `POOL?` → `pool`, `fc6: FC-10?` → `fc6`,
    `(CONV3-16 -> RELU)?` → `conv3`, `RES(...)?` → `res`, `stage(64)?` → `stage`."""
    while not isinstance(node, (ast.Unit, ast.Branch)):
        node = node.items[0] if isinstance(node, ast.Chain) else node.body
    if isinstance(node, ast.Branch):
        return node.op.lower()
    return node.label or node.name.lower()


def name_choices(program: ast.Program) -> ast.Program:
    """Numbers the choices that share a name, in the order written (`pool?1`, `pool?2`),
    and lists every choice's name in `program.choices`. Changes `program` in place."""
    written: list[ast.Optional] = []
    for root in [*program.blocks.values(), program.net]:
        if root is not None:
            _walk_nodes(root.body if isinstance(root, ast.BlockDef) else root,
                        lambda n: written.append(n) if isinstance(n, ast.Optional) else None)
    written.sort(key=lambda n: n.span.start)
    bases = [n.choice for n in written]
    shared = {b for b in bases if bases.count(b) > 1}
    seen: dict[str, int] = {}
    names: dict[tuple, str] = {}   # by where the `?` is written: nodes are rebuilt below
    for node in written:
        if node.choice in shared:
            seen[node.choice] = seen.get(node.choice, 0) + 1
            names[_where(node)] = f"{node.choice}{seen[node.choice]}"
    if names:
        def rename(n):
            new = names.get(_where(n)) if isinstance(n, ast.Optional) else None
            return dataclasses.replace(n, choice=new) if new else n
        program.blocks = {k: dataclasses.replace(b, body=_map_nodes(b.body, rename))
                          for k, b in program.blocks.items()}
        program.net = _map_nodes(program.net, rename) if program.net is not None else None
    program.choices = tuple(names.get(_where(n), n.choice) for n in written)
    return program


def _where(node) -> tuple:
    return node.span.start, node.span.end


def _walk_nodes(node, visit) -> None:
    """Calls `visit` on every node under `node` (itself first), not into block calls."""
    stack = [node]
    while stack:
        n = stack.pop()
        visit(n)
        if isinstance(n, ast.Chain):
            stack.extend(reversed(n.items))
        elif isinstance(n, ast.Branch):
            stack.extend(reversed(n.chains))
        elif isinstance(n, (ast.Repeat, ast.Optional)):
            stack.append(n.body)


def _map_nodes(node, change):
    """The tree with `change` applied to every node, from the leaves up."""
    if isinstance(node, ast.Chain):
        node = dataclasses.replace(node, items=tuple(_map_nodes(i, change) for i in node.items))
    elif isinstance(node, ast.Branch):
        node = dataclasses.replace(node, chains=tuple(_map_nodes(c, change) for c in node.chains))
    elif isinstance(node, (ast.Repeat, ast.Optional)):
        node = dataclasses.replace(node, body=_map_nodes(node.body, change))
    return change(node)


@dataclass
class Uses:
    """The free names a net uses (first use of each) and the choices it can reach, in the
    order written; block calls are followed once each, blocks never called are not."""
    names: dict[str, Span]
    choices: dict[str, Span]


def uses(program: ast.Program) -> Uses:
    found = Uses({}, {})
    visited: set[str] = set()
    _uses(program.net, frozenset(), program.blocks, visited, found)
    found.names = dict(sorted(found.names.items(), key=lambda kv: kv[1].start))
    found.choices = dict(sorted(found.choices.items(), key=lambda kv: kv[1].start))
    return found


def _uses(node, bound: frozenset, blocks: dict, visited: set, found: Uses) -> None:
    if isinstance(node, ast.Chain):
        for item in node.items:
            _uses(item, bound, blocks, visited, found)
    elif isinstance(node, ast.Branch):
        for chain in node.chains:
            _uses(chain, bound, blocks, visited, found)
    elif isinstance(node, ast.Repeat):
        _value_uses(node.count, bound, found)
        _uses(node.body, bound | {node.index} if node.index else bound, blocks, visited, found)
    elif isinstance(node, ast.Optional):
        found.choices.setdefault(node.choice, node.span)
        _uses(node.body, bound, blocks, visited, found)
    else:
        for value in (node.size, node.dash, node.slash, *(a.value for a in node.args or ())):
            if value is not None:
                _value_uses(value, bound, found)
        block = blocks.get(node.name)
        if block is not None and block.name not in visited:
            visited.add(block.name)
            _uses(block.body, frozenset(block.params), blocks, visited, found)


def _value_uses(value, bound: frozenset, found: Uses) -> None:
    if isinstance(value, ast.Ref):
        if value.name not in bound and value.name.lower() not in ("true", "false"):
            found.names.setdefault(value.name, value.span)
    elif isinstance(value, ast.Neg):
        _value_uses(value.operand, bound, found)
    elif isinstance(value, ast.BinOp):
        _value_uses(value.left, bound, found)
        _value_uses(value.right, bound, found)


# --- declaring values: YAML `family:` and --set -----------------------------------------

def parse_values(name: str, text: str) -> Sequence:
    """`0..3`, `16,32`, `2`, or for a choice `yes`, `no`, `yes,no`; raises ValueError with
    the reason."""
    if "?" in name:
        words = [w.strip().lower() for w in text.split(",")]
        if not all(w in _YES for w in words):
            raise ValueError(f"a choice's values are yes and no (or true/false, 1/0), "
                             f"got {clip(repr(text))}")
        return _distinct(name, [_YES[w] for w in words])
    span = _RANGE.fullmatch(text)
    if span is not None:
        return _range(name, span.group(1), span.group(2))
    try:
        numbers = [_whole(w) for w in text.split(",")]
    except ValueError as e:
        raise ValueError(str(e) or f"the values of '{name}' are written a..b (a range, both "
                         f"ends included), a,b,c (a list) or one whole number, got "
                         f"{clip(repr(text))}") from None
    return _distinct(name, numbers)


def _whole(text: str) -> int:
    """A value: at most as large as an expression may grow (lang.expand's MAX_VALUE)."""
    from .expand import MAX_VALUE   # expand imports this module

    text = text.strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError("")
    problem = too_many_digits(len(text.lstrip("-")))
    if problem:
        raise ValueError(problem)
    value = int(text)
    if abs(value) > MAX_VALUE:
        raise ValueError(f"{value} is larger than a variable may be ({MAX_VALUE:,})")
    return value


def _range(name: str, low: str, high: str) -> range:
    a, b = _whole(low), _whole(high)
    if b < a:
        raise ValueError(f"the range {a}..{b} of '{name}' is empty: write it low..high "
                         f"(both ends are included)")
    return range(a, b + 1)


def _distinct(name: str, values: list) -> tuple:
    for i, v in enumerate(values):
        if v in values[:i]:
            raise ValueError(f"{value_text(v)} is listed twice in the values of '{name}'")
    return tuple(values)


def check_name(name: str) -> str | None:
    """Why `name` cannot name a variable, or None."""
    if _NAME.fullmatch(name) or _CHOICE_NAME.fullmatch(name):
        if name.lower() in _RESERVED:
            return f"'{name}' is a reserved word, not a variable"
        return None
    return (f"'{clip(name)}' is not a variable's name: a name (N, width_2), or a choice "
            f"written with its '?' (pool?, pool?2)")


def parse_set(text: str) -> tuple[str, Variable]:
    """`--set NAME=VALUES` → (name, its variable); raises CnnDslError (no span: the
    command line) for a malformed one.

    >>> parse_set("N=1..3")[1].values, parse_set("c=16,32")[1].values, parse_set("pool?=no")[1].values
    (range(1, 4), (16, 32), (False,))
    """
    name, equals, values = text.partition("=")
    name = name.strip()
    if not equals:
        raise CnnDslError(f"--set {clip(text)}: write --set NAME=VALUES, e.g. --set N=2, "
                          f"--set N=0..3, --set c=16,32, --set pool?=yes")
    problem = check_name(name)
    if problem:
        raise CnnDslError(f"--set {clip(text)}: {problem}")
    try:
        return name, Variable(name, parse_values(name, values))
    except ValueError as e:
        raise CnnDslError(f"--set {clip(text)}: {e}") from None


def from_yaml(source: Source, node) -> dict[str, Variable]:
    """The variables of a YAML spec's `family:` mapping, in the order written."""
    import yaml

    from .yaml_spec import node_span

    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise CnnDslError("`family:` is a mapping of variables to their values, like "
                          "`N: 0..3` or `c: [16, 32, 64]`", node_span(source, node))
    declared: dict[str, Variable] = {}
    for key, value in node.value:
        key_span = node_span(source, key)
        name = key.value if isinstance(key, yaml.ScalarNode) else key_span.text()
        problem = check_name(str(name))
        if problem:
            raise CnnDslError(problem, key_span)
        if name in declared:
            raise CnnDslError(f"variable '{name}' is declared twice", key_span)
        declared[name] = Variable(name, _yaml_values(source, name, value), key_span)
    return declared


def _yaml_values(source: Source, name: str, node) -> Sequence:
    import yaml

    from .yaml_spec import construct, node_span

    span = node_span(source, node)
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    if isinstance(node, yaml.SequenceNode) and not items:
        raise CnnDslError(f"'{name}' has no values: its list is empty", span)
    if not all(isinstance(item, yaml.ScalarNode) for item in items):
        raise CnnDslError(_values_help(name), span)
    values = [construct(source, item) for item in items]
    try:
        if "?" not in name and len(values) == 1 and isinstance(values[0], str) and ".." in values[0]:
            return _range(name, *values[0].split("..", 1))
        if "?" in name:
            if not all(isinstance(v, bool) for v in values):
                raise ValueError(f"a choice's values are yes and no (true and false), got "
                                 f"{clip(span.text())}")
            return _distinct(name, values)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(_values_help(name))
        return _distinct(name, [_whole(str(v)) for v in values])
    except ValueError as e:
        raise CnnDslError(str(e) or _values_help(name), span) from None


def _values_help(name: str) -> str:
    return (f"the values of '{name}' are written a..b (a range, both ends included), "
            f"[a, b, …] (a list of whole numbers) or one whole number")


# --- a family's variables, checked against the net -------------------------------------

def variables(program: ast.Program, declared: dict[str, Variable]) -> dict[str, Variable]:
    """Every variable of the family in the table's order (declared ones as declared,
    then the choices nobody declared, as written), each with its first use.

    Raises a diagnostic at the first use of an undeclared name, at the declaration of a
    variable the net never uses, and at a declared choice that no `?` makes."""
    found = uses(program)
    for name, span in found.names.items():
        if name not in declared:
            raise CnnDslError(undeclared_message(name, declared), span)
    result: dict[str, Variable] = {}
    for name, variable in declared.items():
        use = found.choices.get(name) if variable.is_choice else found.names.get(name)
        if use is None:
            raise CnnDslError(_unused_message(name, found), variable.span)
        result[name] = dataclasses.replace(variable, use=use)
    for name, span in found.choices.items():
        if name not in result:
            result[name] = Variable(name, CHOICE_VALUES, None, span)
    return result


def undeclared_message(name: str, declared) -> str:
    return (f"'{name}' is not defined{did_you_mean(name, declared)}; a family's variable is "
            f"declared with its values, in a YAML spec's `family:` ({name}: 0..3) or with "
            f"--set {name}=0..3")


def _unused_message(name: str, found: Uses) -> str:
    if "?" in name:
        made = ", ".join(found.choices) or "none"
        return (f"no '?' in the net makes a choice named '{name}'{did_you_mean(name, found.choices)} "
                f"(the choices it makes: {made})")
    return (f"variable '{name}' is declared, but the net never uses it"
            f"{did_you_mean(name, found.names)}")


def with_sets(declared: dict[str, Variable], sets: list[tuple[str, Variable]]) -> dict[str, Variable]:
    """The declared variables with `--set` ones replacing or adding to them (in order);
    a declared variable keeps its place and the span of its declaration."""
    result = dict(declared)
    for name, variable in sets:
        old = result.get(name)
        result[name] = dataclasses.replace(variable, span=old.span) if old else variable
    return result


def check_sets(program: ast.Program, sets: list[tuple[str, Variable]]) -> None:
    """A `--set` of a name the net does not use is a mistake (a typo, most likely)."""
    found = uses(program)
    for name, _ in sets:
        known = found.choices if "?" in name else found.names
        if name not in known:
            names = list(found.names) + list(found.choices)
            listed = f" (its variables: {', '.join(names)})" if names else " (it has no variables)"
            raise CnnDslError(f"--set {name}: the net has no variable '{name}'"
                              f"{did_you_mean(name, names)}{listed}")


# --- members ------------------------------------------------------------------------------

def member_count(variables) -> int:
    return math.prod(v.count for v in variables)


def member_values(variables: list[Variable], index: int) -> dict:
    """The values of member number `index`, counting with the last variable fastest."""
    values = {}
    for variable in reversed(variables):
        index, digit = divmod(index, variable.count)
        values[variable.name] = variable.values[digit]
    return dict(reversed(values.items()))


def member_indices(total: int, sample: int | None, seed: int) -> Iterator[int]:
    """All members in order, or `sample` distinct ones drawn with `seed` (reproducibly),
    in order; a family may have more members than `range` can count."""
    if sample is None or sample >= total:
        return iter(range(total))
    rng = random.Random(seed)
    if total <= sys.maxsize:
        return iter(sorted(rng.sample(range(total), sample)))
    picked: set[int] = set()
    while len(picked) < sample:   # sample ≤ --max-members, far fewer than total
        picked.add(rng.randrange(total))
    return iter(sorted(picked))


def is_family(program: ast.Program, declared: dict[str, Variable]) -> bool:
    """Whether the spec has variables at all (declared, or a `?`): cheap, no walk."""
    return bool(declared) or bool(program.choices)


def describe(variables: dict[str, Variable]) -> str:
    """`N: 0..3, M: 0..5, pool?: no, yes`."""
    return "; ".join(f"{name}: {v.text()}" for name, v in variables.items())


def single_member(program: ast.Program, declared: dict[str, Variable]) -> dict:
    """The values of the one network a spec stands for: {} for an ordinary spec, and for
    a family whose every variable has exactly one value, those values. A family of
    several members raises an error that says how to pick one."""
    if not is_family(program, declared):
        return {}
    found = variables(program, declared)
    several = free(found)
    if several:
        first = next(iter(several.values()))
        raise CnnDslError(f"this spec is a family of {member_count(found.values()):,} networks "
                          f"({describe(several)}); `cnndsl analyze` lists them; to build or "
                          f"train one, give every variable one value, e.g. {pick_flags(several)}",
                          first.span or first.use)
    return {name: v.values[0] for name, v in found.items()}


def free(variables: dict[str, Variable]) -> dict[str, Variable]:
    """The variables that still have several values."""
    return {name: v for name, v in variables.items() if v.count != 1}


def pick_flags(several: dict[str, Variable]) -> str:
    """`--set N=0 --set pool?=no`: the flags that pick one member (the first values)."""
    return " ".join(f"--set {name}={value_text(v.values[0])}" for name, v in several.items())


def member_name(name: str, values: dict) -> str:
    """`notes[N=2,M=3,pool?=yes]`: a member's name, for reports and its run folder."""
    if not values:
        return name
    return f"{name}[{','.join(f'{k}={value_text(v)}' for k, v in values.items())}]"
