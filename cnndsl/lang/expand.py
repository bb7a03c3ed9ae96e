"""Syntax tree → graph: blocks called, repetitions unrolled, one node per layer.

The graph is a `networkx.DiGraph` whose node keys are hierarchical layer names
(`stage2.bottle3.conv2`). Each node carries `kind` (a `layers.Kind`), `opts` (its
resolved options), `written` (the options the user wrote) and `span`. An edge's
`port` orders the inputs of a join (CONCAT, ADD). Nodes are added producers first, so
the graph's node order is a topological order, which every pass relies on.

>>> from cnndsl.lang.parser import parse_program
>>> g = expand(parse_program("INPUT(3, 8, 8) -> [CONV3-4 -> RELU]*2"))
>>> list(g)
['input', 'conv1', 'relu1', 'conv2', 'relu2']
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from . import ast
from ..errors import CnnDslError, Diagnostic, Span, did_you_mean
from .family import undeclared_message
from ..graph import call_note, shape_text
from ..layers import KINDS, Kind, Opts, join_words

DEFAULT_MAX_LAYERS = 100_000
MAX_VALUE = 10**15    # an expression's value: far beyond any real layer, far below overflow
IMAGENET_INPUT = (3, 224, 224)   # the notes' ImageNet image, for a bare INPUT
_HEAD = re.compile(r"([A-Z]+?)(\d+)(?:X(\d+))?")


def _layer(name: str) -> Kind | None:
    """The table's layer of that (upper-case) name; joins are written only as NAME(chain, ...)."""
    kind = KINDS.get(name)
    return kind if kind is not None and not kind.merge else None


@dataclass(frozen=True)
class InputShape:
    """An input volume given outside the net (`input:` in a spec, `--input`)."""
    shape: tuple[int, int, int]
    span: Span | None = None
    override: bool = False  # --input replaces even the net's own INPUT


def expand(program: ast.Program, given_input: InputShape | None = None,
           max_layers: int = DEFAULT_MAX_LAYERS, values: dict | None = None,
           memo: dict | None = None, counted: bool = False) -> nx.DiGraph:
    """The graph of `program`; `values`, a family member's variables by name (its choices,
    `pool?`, true or false), seen everywhere, in blocks too, unless a block parameter or a
    repetition's index of the same name hides them (lang.family). `memo`, a dict kept from
    one member to the next, remembers each layer's options (analysis.family); `counted`:
    `variables_read` has checked the layer limit with these values already."""
    _check_block_names(program)
    first, rest = _split_input(program.net)
    values = values or {}
    try:
        # INPUT is not counted, as the report's `layers` does not count it.
        if not counted:
            _Counter(program.blocks, max_layers, values).count(
                ast.Chain(tuple(rest), program.net.span), values)
        builder = _Builder(program.blocks, values, memo)
        tail = builder.add_input(first, given_input, program.net.span)
        top = _Scope("")
        for item in rest:
            tail = builder.add(item, tail, values, top, ())
    except RecursionError:
        raise CnnDslError("blocks call each other too deeply", program.net.span) from None
    builder.graph.graph["output"] = tail
    return builder.graph


def variables_read(program: ast.Program, values: dict,
                   max_layers: int = DEFAULT_MAX_LAYERS, memo: dict | None = None) -> frozenset[str]:
    """The variables of `values` that the expansion of `program` reads: two members that
    agree on them expand to the same network (`N` is not read when `M` is 0). Read
    generously: a name written in a layer that is expanded counts, hidden by a block
    parameter or not. Raises what `expand` would raise for the layer limit."""
    _, rest = _split_input(program.net)
    counter = _Counter(program.blocks, max_layers, values, memo)
    try:
        counter.count(ast.Chain(tuple(rest), program.net.span), values)
    except RecursionError:
        raise CnnDslError("blocks call each other too deeply", program.net.span) from None
    first = program.net.items[0]
    if isinstance(first, ast.Unit):
        counter.read_unit(first)
    return frozenset(counter.read)


# --- values ----------------------------------------------------------------------

def evaluate_value(value: ast.Value, env: dict):
    """A value in the environment of block arguments: a number, or true / false."""
    if isinstance(value, ast.Num):
        return value.value
    if isinstance(value, ast.Ref):
        if value.name in env:
            return env[value.name]
        if value.name.lower() in ("true", "false"):
            return value.name.lower() == "true"
        if not env:   # outside any block: perhaps a family's variable, not declared
            raise CnnDslError(undeclared_message(value.name, ()), value.span)
        where = f"; parameters here: {', '.join(env)}"
        raise CnnDslError(f"'{value.name}' is not defined{did_you_mean(value.name, env)}{where}",
                          value.span)
    if isinstance(value, ast.Neg):
        return -_whole(value.operand, env)
    left, right = _whole(value.left, env), _whole(value.right, env)
    if value.op == "//" and right == 0:
        raise CnnDslError("division by zero", value.span)
    if value.op == "**":
        result = _power(left, right, value)
    else:
        result = {"+": left + right, "-": left - right, "*": left * right,
                  "//": left // right if right else 0}[value.op]
    if abs(result) > MAX_VALUE:  # `{9999*9999*…}` must not grow past what a layer can use
        raise CnnDslError(f"{value.span.text()[:80]} is larger than {MAX_VALUE:,}", value.span)
    return result


def _power(base: int, exponent: int, value: ast.BinOp) -> int:
    """`base ** exponent`, refused before it is computed when it would be out of bounds:
    2**50 is already past MAX_VALUE, so no exponent above 50 is needed."""
    if exponent < 0:
        raise CnnDslError(f"the exponent of {value.span.text()[:80]} is {exponent}: "
                          f"it must be 0 or more (a whole number results)", value.span)
    if abs(base) > 1 and exponent > 50:
        raise CnnDslError(f"{value.span.text()[:80]} is larger than {MAX_VALUE:,}", value.span)
    return base ** exponent


def _whole(value: ast.Value, env: dict) -> int:
    result = evaluate_value(value, env)
    if isinstance(result, bool) or not isinstance(result, int):
        raise CnnDslError(f"expected a whole number, got {result!r}", value.span)
    return result


def _repeat_count(node: ast.Repeat, env: dict) -> int:
    """`x*0` is x absent (the identity), as the notes' N ≥ 0 has it."""
    n = _whole(node.count, env)
    if n < 0:
        raise CnnDslError(f"a repeat count must be at least 0, got {n}", node.count.span)
    return n


def _choice(node: ast.Optional, env: dict) -> bool:
    """Whether `x?` is present in this member."""
    present = env.get(node.choice)
    if not isinstance(present, bool):
        raise CnnDslError(f"'{node.span.text()[:80]}' is optional (the choice {node.choice}): "
                          f"this spec is a family; give {node.choice} one value "
                          f"(--set {node.choice}=yes) to build one of its networks", node.span)
    return present


def _bind(block: ast.BlockDef, call: ast.Unit, env: dict) -> dict:
    """The arguments of a block call, by parameter name."""
    if call.size or call.dash or call.slash or call.dims:
        raise CnnDslError(f"'{block.name}' is a block: call it as {block.name}(...)", call.span)
    args = call.args or ()
    bound: dict = {}
    for position, arg in enumerate(args):
        name = arg.name if arg.name is not None else (
            block.params[position] if position < len(block.params) else None)
        if name not in block.params:
            raise CnnDslError(_arity_message(block, args), arg.span if arg.name else call.span)
        if name in bound:
            raise CnnDslError(f"argument '{name}' is given twice", arg.span)
        bound[name] = evaluate_value(arg.value, env)
    if len(bound) != len(block.params):
        raise CnnDslError(_arity_message(block, args), call.span)
    return bound


def _arity_message(block: ast.BlockDef, args) -> str:
    wanted = f"{len(block.params)} argument{'s' * (len(block.params) != 1)}"
    names = f" ({', '.join(block.params)})" if block.params else ""
    return f"block '{block.name}' takes {wanted}{names}, got {len(args)}"


# --- layers ----------------------------------------------------------------------

def names_a_layer(name: str) -> bool:
    """Whether `name` spells a layer of the table, with or without a kernel size.

    >>> names_a_layer("conv3x5"), names_a_layer("RELU"), names_a_layer("ADD"), names_a_layer("foo")
    (True, True, False, False)
    """
    upper = name.upper()
    match = _HEAD.fullmatch(upper)
    return _layer(upper) is not None or bool(match and _layer(match.group(1)))


def resolve_kind(unit: ast.Unit, blocks=()) -> tuple[Kind, int | tuple[int, int] | None]:
    """The layer kind a name spells, and the kernel size written in it.

    >>> resolve_kind(ast.Unit("conv3x5", None, None, None, None, None, None))[1]
    (3, 5)
    """
    upper = unit.name.upper()
    if (kind := _layer(upper)) is not None:
        return kind, None
    match = _HEAD.fullmatch(upper)
    if match and (kind := _layer(match.group(1))) is not None:
        h, w = match.group(2), match.group(3)
        return kind, int(h) if w is None else (int(h), int(w))
    layer_names = sorted(name for name in KINDS if _layer(name) is not None)
    guess = did_you_mean(match.group(1) if match else upper, layer_names)
    if not guess and unit.args is not None:  # `gatee(GAP)`: a join misspelt
        guess = did_you_mean(upper, join_words())
    if not guess and not (unit.size or unit.dash or unit.slash or unit.dims):  # a block call?
        guess = did_you_mean(unit.name, blocks).replace("mean", "mean the block") or \
            f", and no block '{unit.name}' is defined"
    raise CnnDslError(f"unknown layer '{unit.name}'{guess}", unit.span)


def layer_options(kind: Kind, unit: ast.Unit, size, env: dict) -> tuple[Opts, frozenset]:
    """Options from the table's defaults, the head (`CONV3-64/2`) and the arguments."""
    opts = Opts({opt.name: opt.default for opt in kind.options})
    written: set[str] = set()

    def put(name, value, span):
        if name in written:
            raise CnnDslError(f"{kind.name}'s {name} is given twice", span)
        opts[name] = _coerce(kind, name, value, span)
        written.add(name)

    for slot, value in zip(kind.head, (unit.size, unit.dash, unit.slash)):
        if value is not None:
            _head_slot(kind, slot, value.span)
            put(slot, evaluate_value(value, env), value.span)
    if size is not None:
        put(_head_slot(kind, kind.head[0], unit.span), size, unit.span)
    if unit.dims is not None:
        _put_dims(kind, unit, put)
    for arg in unit.args or ():
        put(_argument_name(kind, arg, written), evaluate_value(arg.value, env), arg.span)
    missing = [name for name, value in opts.items() if value == "required"]
    if missing:
        raise CnnDslError(f"{kind.name} needs its {' and '.join(missing)}: {kind.doc}", unit.span)
    return opts, frozenset(written)


def _head_slot(kind: Kind, slot: str | None, span: Span) -> str:
    if slot is None:
        raise CnnDslError(f"{kind.name} takes no such number here: {kind.doc}", span)
    return slot


def _put_dims(kind: Kind, unit: ast.Unit, put) -> None:
    if kind.name != "INPUT" or len(unit.dims) != 3:
        raise CnnDslError("only INPUT takes dimensions, written [WxHxD] like [227x227x3]",
                          unit.span)
    width, height, depth = unit.dims
    for name, value in (("channels", depth), ("height", height), ("width", width)):
        put(name, value, unit.span)


def _argument_name(kind: Kind, arg: ast.Arg, written: set) -> str:
    if arg.name is not None:
        if kind.option(arg.name) is None:
            names = [o.name for o in kind.options]
            hint = did_you_mean(arg.name, names) or (
                f"; its options are {', '.join(names)}" if names else "; it has no options")
            raise CnnDslError(f"{kind.name} has no option '{arg.name}'{hint}", arg.span)
        return arg.name
    free = [o.name for o in kind.options if o.name not in written]
    if not free:
        raise CnnDslError(f"{kind.name} takes no more arguments", arg.span)
    return free[0]


def _coerce(kind: Kind, name: str, value, span: Span):
    opt = kind.option(name)
    wanted = opt.type
    if wanted is bool:
        if not isinstance(value, bool):
            raise CnnDslError(f"{kind.name}'s {name} must be true or false, got {value!r}", span)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, tuple)):
        raise CnnDslError(f"{kind.name}'s {name} must be a number, got {value!r}", span)
    if wanted in (int, "size") and not isinstance(value, (int, tuple)):
        raise CnnDslError(f"{kind.name}'s {name} must be a whole number, got {value!r}", span)
    if wanted is float:
        value = float(value)
    for v in value if isinstance(value, tuple) else (value,):
        if opt.low is not None and not v >= opt.low:
            raise CnnDslError(f"{kind.name}'s {name} must be at least {opt.low}, got {v}", span)
        if opt.high is not None and not v <= opt.high:
            raise CnnDslError(f"{kind.name}'s {name} must be at most {opt.high}, got {v}", span)
    return value


# --- building the graph ---------------------------------------------------------

@dataclass
class _Scope:
    """Where names are made: `stage2.` inside the second call of `stage`."""
    prefix: str
    counts: Counter = field(default_factory=Counter)

    def name(self, key: str) -> str:
        self.counts[key] += 1
        # `relu6` and a block `stage1` end in a digit: `relu6_2`, not the ambiguous `relu62`.
        sep = "_" if key[-1:].isdigit() else ""
        return f"{self.prefix}{key}{sep}{self.counts[key]}"


class _Builder:
    def __init__(self, blocks: dict[str, ast.BlockDef], values: dict | None = None,
                 memo: dict | None = None):
        self.blocks = blocks
        self.values = values or {}   # a family member's variables: every block sees them
        self.memo = memo             # a layer's (kind, opts, written), by the layer and its names' values
        self.graph = nx.DiGraph()
        self.joins = join_words()

    def add(self, node: ast.Node, tail: str, env: dict, scope: _Scope, calls: tuple) -> str:
        """Adds `node` reading from `tail`; returns the name of its output node."""
        if isinstance(node, ast.Chain):
            for item in node.items:
                tail = self.add(item, tail, env, scope, calls)
            return tail
        if isinstance(node, ast.Repeat):
            return self._repeat(node, tail, env, scope, calls)
        if isinstance(node, ast.Optional):
            return self.add(node.body, tail, env, scope, calls) if _choice(node, env) else tail
        if isinstance(node, ast.Branch):
            return self._branch(node, tail, env, scope, calls)
        if node.name in self.blocks:
            return self._call(node, tail, env, scope, calls)
        return self._layer(node, tail, env, scope, calls)

    def _repeat(self, node: ast.Repeat, tail: str, env: dict, scope: _Scope, calls: tuple) -> str:
        if node.label:  # `layer1: basic(64)*2`: layer1.basic1., layer1.basic2.
            scope = _Scope(f"{scope.prefix}{node.label}.")
        for i in range(_repeat_count(node, env)):
            size = len(self.graph)
            tail = self.add(node.body, tail, {**env, node.index: i} if node.index else env,
                            scope, calls)
            if not node.index and len(self.graph) == size:
                break   # the body is empty here (`(x*0)*1000`): so is every copy
        return tail

    def add_input(self, first: ast.Unit | None, given: InputShape | None, net_span: Span) -> str:
        shape, span = self._input_shape(first, given, net_span)
        opts = Opts(channels=shape[0], height=shape[1], width=shape[2])
        self._node("input", KINDS["INPUT"], opts, frozenset(opts), span, [])
        return "input"

    def _input_shape(self, first, given, net_span):
        if first is not None and _bare(first):
            if given is not None:
                return given.shape, first.span
            # The reference: a bare INPUT with no input given is the notes' ImageNet image.
            self.graph.graph["notes"] = [Diagnostic(
                "note", "a bare INPUT with no `input:` or --input is the lecture notes' "
                f"ImageNet image, {shape_text(IMAGENET_INPUT)}", first.span)]
            return IMAGENET_INPUT, first.span
        if first is not None:
            opts, _ = layer_options(KINDS["INPUT"], first, None, self.values)
            written = (opts.channels, opts.height, opts.width)
            if given is None or given.override:
                return (given.shape if given else written), first.span
            if given.shape != written:
                raise CnnDslError(f"the net's INPUT {shape_text(written)} disagrees with the spec's "
                                  f"input {shape_text(given.shape)}", first.span)
            return written, first.span
        if given is None:
            raise CnnDslError("the network has no input: start it with INPUT(C, H, W), or give "
                              "`input: [C, H, W]` in the spec or --input C,H,W", net_span)
        return given.shape, given.span or net_span

    def _layer(self, unit: ast.Unit, tail: str, env: dict, scope: _Scope, calls: tuple) -> str:
        kind, opts, written = self._options(unit, env) if self.memo is not None else \
            self._resolve(unit, env)
        name = scope.prefix + unit.label if unit.label else scope.name(kind.name.lower())
        self._node(name, kind, opts, written, unit.span, [tail], calls)
        return name

    def _resolve(self, unit: ast.Unit, env: dict):
        kind, size = resolve_kind(unit, self.blocks)
        if kind.name == "INPUT":
            raise CnnDslError("INPUT can only start the network", unit.span)
        opts, written = layer_options(kind, unit, size, env)
        return kind, opts, written

    def _options(self, unit: ast.Unit, env: dict):
        """`_resolve`, remembered for the values of the names the layer writes; the options
        are copied, as the passes set a bias in them."""
        names = _names_of(unit, self.memo)
        # with the types: `true` and 1 are equal keys, but not equal options
        key = (id(unit), tuple((v, type(v)) for v in map(env.get, names)))
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self._resolve(unit, env)
        kind, opts, written = found
        return kind, Opts(opts), written

    def _call(self, unit: ast.Unit, tail: str, env: dict, scope: _Scope, calls: tuple) -> str:
        block = self.blocks[unit.name]
        inner_env = _bind(block, unit, env)
        if self.values:   # a family's variables, hidden by the block's parameters
            inner_env = {**self.values, **inner_env}
        prefix = scope.prefix + unit.label if unit.label else scope.name(unit.name)
        try:
            return self.add(block.body, tail, inner_env, _Scope(prefix + "."), calls + (unit,))
        except CnnDslError as e:
            raise e.with_note(call_note(unit), unit.span) from None

    def _branch(self, branch: ast.Branch, tail: str, env: dict, scope: _Scope, calls) -> str:
        join = self.joins.get(branch.op)
        if join is None:  # a syntax tree made while a join was registered, expanded after
            raise CnnDslError(f"'{branch.op}' is not a join", branch.span)
        name = scope.name(branch.op.lower())
        if join.one_chain:  # RES(a): its layers are `res1.conv1`
            scopes = [_Scope(name + ".")]
        else:               # CONCAT(a, b): `concat1.b1.conv1`, `concat1.b2.conv1`
            scopes = [_Scope(f"{name}.b{i}.") for i in range(1, len(branch.chains) + 1)]
        outputs = [self._branch_chain(chain, tail, env, chain_scope, calls)
                   for chain, chain_scope in zip(branch.chains, scopes)]
        if join.identity_branch:  # RES(a) is ADD(a, ID)
            outputs.append(tail)
        # `op` is the join as written (RES), for reports and its mismatch message.
        self._node(name, join.kind, Opts(op=branch.op), frozenset(), branch.span, outputs, calls)
        return name

    def _branch_chain(self, chain: ast.Chain, tail: str, env, scope: _Scope, calls) -> str:
        """A join's chain; one that is empty in this member (`(CONV3-8)*0`, `POOL?` absent)
        is the identity, an ID layer, so that the join still reads one input per chain."""
        output = self.add(chain, tail, env, scope, calls)
        if output != tail:
            return output
        name = scope.name("id")
        self._node(name, KINDS["ID"], Opts(), frozenset(), chain.span, [tail], calls)
        return name

    def _node(self, name, kind, opts, written, span, inputs, calls=()) -> None:
        if name in self.graph:
            first = self.graph.nodes[name]["span"]
            raise CnnDslError(f"'{name}' names two layers (the first at line {first.line}, "
                              f"column {first.col})", span)
        # `calls`: the block calls (innermost last) this layer was expanded from, for notes.
        self.graph.add_node(name, kind=kind, opts=opts, written=written, span=span, calls=calls)
        for port, source in enumerate(inputs):
            self.graph.add_edge(source, name, port=port)


def _names(unit: ast.Unit) -> set[str]:
    """The names a layer's numbers and options are written with (`c` in `CONV3-{2*c}`)."""
    found: set[str] = set()
    stack = [unit.size, unit.dash, unit.slash, *(arg.value for arg in unit.args or ())]
    while stack:
        value = stack.pop()
        if isinstance(value, ast.Ref):
            found.add(value.name)
        elif isinstance(value, ast.Neg):
            stack.append(value.operand)
        elif isinstance(value, ast.BinOp):
            stack += [value.left, value.right]
    return found


def _names_of(unit: ast.Unit, memo: dict | None) -> tuple[str, ...]:
    if memo is None:
        return tuple(_names(unit))
    names = memo.get(id(unit))
    if names is None:
        names = memo[id(unit)] = tuple(sorted(_names(unit)))
    return names


def _bare(unit: ast.Unit) -> bool:
    """`INPUT` written without a shape: it takes the one given elsewhere."""
    return not (unit.size or unit.dash or unit.slash or unit.dims or unit.args)


def _split_input(net: ast.Chain):
    """The net's leading INPUT layer, if it has one, and the rest of the chain."""
    first = net.items[0]
    if isinstance(first, ast.Unit) and first.name.upper() == "INPUT":
        return first, net.items[1:]
    return None, net.items


def _check_block_names(program: ast.Program) -> None:
    """A block may not be named like a layer: `conv3` would silently shadow `CONV3`."""
    for block in program.blocks.values():
        upper = block.name.upper()
        match = _HEAD.fullmatch(upper)
        if upper in KINDS:
            raise CnnDslError(f"block '{block.name}' has the name of a layer", block.span)
        if match and _layer(match.group(1)) is not None:
            raise CnnDslError(f"block '{block.name}' would hide the layer {upper} "
                              f"({match.group(1)} with a {match.group(2)}-wide kernel); "
                              f"give the block another name", block.span)


# --- the layer limit, checked before anything is expanded --------------------------

class _Counter:
    """Counts the layers a net expands to without expanding it, so that a repetition
    bomb like `((X)*1000)*1000)*1000` is refused at once. Also finds recursion."""

    def __init__(self, blocks: dict[str, ast.BlockDef], limit: int, values: dict | None = None,
                 names: dict | None = None):
        self.blocks, self.limit, self.memo = blocks, limit, {}
        self.values = values or {}
        self.names = names   # a layer's names, by id (the memo of `expand`)
        self.read: set[str] = set()   # the variables of `values` the net reads (variables_read)
        # Copies of indexed repetitions counted one by one: bounded, so that
        # `((x*{i*0})*1000 as i)*1000 as j ...` is refused instead of counted for hours.
        self.steps = 10 * limit

    def count(self, node: ast.Node, env: dict, calls: tuple = ()) -> int:
        if isinstance(node, ast.Chain):
            return self._checked(sum(self.count(i, env, calls) for i in node.items), node.span)
        if isinstance(node, ast.Repeat):
            if self.values:
                self._read(node.count)
            n = _repeat_count(node, env)
            if n == 0:
                return 0   # what the body reads is not read
            if node.index is None:
                return self._checked(self.count(node.body, env, calls) * n, node.span)
            return self._indexed(node, n, env, calls)
        if isinstance(node, ast.Optional):
            self.read.add(node.choice)
            return self.count(node.body, env, calls) if env.get(node.choice, True) else 0
        if isinstance(node, ast.Branch):
            # + 1 for the join; an empty chain becomes an ID layer (at most one per chain)
            return 1 + sum(max(1, self.count(c, env, calls)) for c in node.chains)
        if self.values:
            self.read_unit(node)
        if node.name not in self.blocks:
            return 1
        return self._call(node, env, calls)

    def read_unit(self, unit: ast.Unit) -> None:
        self.read.update(name for name in _names_of(unit, self.names) if name in self.values)

    def _read(self, value: ast.Value) -> None:
        if isinstance(value, ast.Ref):
            if value.name in self.values:
                self.read.add(value.name)
        elif isinstance(value, ast.Neg):
            self._read(value.operand)
        elif isinstance(value, ast.BinOp):
            self._read(value.left)
            self._read(value.right)

    def _call(self, unit: ast.Unit, env: dict, calls: tuple) -> int:
        if unit.name in calls:
            cycle = " → ".join(calls[calls.index(unit.name):] + (unit.name,))
            raise CnnDslError(f"block '{unit.name}' calls itself: {cycle}", unit.span)
        block = self.blocks[unit.name]
        inner_env = _bind(block, unit, env)
        if self.values:
            inner_env = {**self.values, **inner_env}
        key = (unit.name, tuple(sorted(inner_env.items(), key=lambda kv: kv[0])))
        if key not in self.memo:
            try:
                self.memo[key] = self.count(block.body, inner_env, calls + (unit.name,))
            except CnnDslError as e:
                raise e.with_note(call_note(unit), unit.span) from None
        return self.memo[key]

    def _indexed(self, node: ast.Repeat, n: int, env: dict, calls: tuple) -> int:
        """`x*n as i`: each copy may differ (`CONV3-{16*2**i}` keeps its size, but
        `(CONV3-8)*i` does not), so the copies are counted one by one."""
        total = 0
        for i in range(n):
            self.steps -= 1
            if self.steps < 0:
                raise CnnDslError(f"this repetition takes too long to expand: more than "
                                  f"{10 * self.limit:,} copies of indexed repetitions in all "
                                  f"(raise --max-layers)", node.span)
            total = self._checked(total + self.count(node.body, {**env, node.index: i}, calls),
                                  node.span)
        return total

    def _checked(self, total: int, span: Span) -> int:
        if total > self.limit:
            raise CnnDslError(f"this expands to {total:,} layers, more than the limit of "
                              f"{self.limit:,} (raise it with --max-layers)", span)
        return total
