"""The syntax tree the parser produces: what the user wrote, before blocks are expanded.

Every node keeps the `Span` of its text so later stages can point at it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Span


# --- values: whole numbers, floats, booleans, parameter names, {expressions} ---

@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Ref:
    """A block parameter (`c` in `CONV3-c`), a family's variable (`N` in `*N`), a
    repetition's index (`i` in `*M as i`), or `true` / `false`."""
    name: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # "+", "-", "*", "//", "**"
    left: "Value"
    right: "Value"
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: "Value"
    span: Span


Value = Num | Ref | BinOp | Neg


# --- the network ---

@dataclass(frozen=True)
class Arg:
    name: str | None  # None for a positional argument
    value: Value
    span: Span


@dataclass(frozen=True)
class Unit:
    """A layer or a block call: `CONV3-64/2(pad=0)`, `CONV{k}-c`, `basic(64)`.

    Which one it is depends on the blocks defined, so expansion decides.
    """
    name: str
    size: Value | None          # `{k}` right after the name
    dash: Value | None          # `-64`
    slash: Value | None         # `/2`
    dims: tuple[int, ...] | None  # `[227x227x3]`
    args: tuple[Arg, ...] | None  # `(...)`; None when no parentheses were written
    span: Span
    label: str | None = None


@dataclass(frozen=True)
class Chain:
    items: tuple["Node", ...]
    span: Span


@dataclass(frozen=True)
class Repeat:
    """`body*count`, or `body*count as index`: the copies see `index` = 0, 1, ….
    A label written on it (`layer1: basic(64)*2`) names the group: its copies are
    counted inside it, `layer1.basic1.`, `layer1.basic2.`."""
    body: "Node"
    count: Value
    span: Span
    label: str | None = None
    index: str | None = None


@dataclass(frozen=True)
class Optional:
    """`body?`: present or absent, as the family's yes/no variable `choice` says (one
    choice per `?` written, however often its text is expanded)."""
    body: "Node"
    choice: str  # `pool?`, `pool?2`: see lang.family.name_choices
    span: Span


@dataclass(frozen=True)
class Branch:
    """A join, `NAME(chain, chain, ...)`."""
    op: str  # the join's name in the table, upper-case: "CONCAT", "ADD", "RES", ... (layers.join_words)
    chains: tuple[Chain, ...]
    span: Span


Node = Unit | Chain | Repeat | Optional | Branch


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[str, ...]
    body: Chain
    span: Span


@dataclass
class Program:
    """Block definitions and the network chain of one spec."""
    blocks: dict[str, BlockDef] = field(default_factory=dict)
    net: Chain | None = None
    choices: tuple[str, ...] = ()  # the names of the `?` choices written (lang.family.name_choices)
