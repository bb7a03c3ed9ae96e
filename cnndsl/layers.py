"""The one table of layer kinds.

Each `Kind` says, in one place, everything cnndsl knows about a layer: its options
and their defaults, how the DSL head (`CONV3-64/2`) fills them, its shape rule, its
parameter, MAC and FLOP counts, and how to build its torch module. Adding a layer is
adding one entry to `KINDS`; nothing else branches on layer names.

Joins (`merge=True`: CONCAT, ADD, MUL) are entries too, written `NAME(chain, chain, ...)`:
besides the shape rule and the costs, an entry says how many chains it takes
(`arity`), how a shape mismatch is worded (`mismatch`), how it is emitted into a
torch.fx graph (`emit`), and its shorthands (ADD's `RES(a)` and MUL's `GATE(a)`,
which append the identity branch: `ADD(a, ID)`, `MUL(a, ID)`). The grammar's join word
is made from the table's join names (`join_words()`), so adding a join is adding an
entry here, or `register(Kind(...))` at run time.

Shapes are tuples: (C, H, W) for a volume, (N,) for a flat vector. Counting rules
(the README's "Counting conventions"):
* MACs are the multiply-accumulates of CONV and FC only (torchvision's "GFLOPS").
* FLOPs count every floating-point operation of an inference forward pass: 2 per
  MAC, 1 per output for a bias, and per element as each entry's `flops` says.

This module never imports torch: `build` receives the module namespace to use.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

from .graph import shape_text

REQUIRED = "required"


class Opts(dict):
    """A layer's resolved options; `o.stride` reads `o["stride"]`.

    A missing option is an AttributeError, so `hasattr()` and `copy.deepcopy()` work:

    >>> o = Opts(stride=2)
    >>> o.stride, hasattr(o, "nope")
    (2, False)
    """

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no option {name!r}") from None


@dataclass(frozen=True)
class Opt:
    name: str
    type: Any                  # int, float, bool, or "size" (an int, or (h, w) from CONV3x5)
    default: Any = REQUIRED    # None: derived from other options (a conv's pad, a pool's stride)
    low: float | None = None   # smallest allowed value
    high: float | None = None  # largest allowed value


@dataclass(frozen=True)
class Window:
    """The sliding window of a conv or pool, per axis (h, w): what fit and RF need."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil: bool = False


def numel(shape) -> int:
    return math.prod(shape)


def pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _zero(o, x, y=None) -> int:
    return 0


def _same(o, x):
    return x


def _per_element(cost: int):
    """FLOPs of an element-wise layer: `cost` per output element."""
    return lambda o, x, y: cost * numel(y)


@dataclass(frozen=True)
class Kind:
    name: str
    doc: str
    options: tuple[Opt, ...] = ()
    head: tuple[str | None, str | None, str | None] = (None, None, None)  # {size}-{dash}/{slash}
    needs_volume: bool = False
    window: Callable[[Opts], Window] | None = None          # conv and pool
    out_channels: Callable[[Opts, int], int] | None = None  # for window kinds
    shape: Callable = _same                # (opts, input shape) -> output shape
    check: Callable = lambda o, x: None    # (opts, input shape) -> error message or None
    params: Callable = _zero               # (opts, input shape) -> trainable parameters
    buffers: Callable = _zero              # (opts, input shape) -> non-trainable state
    macs: Callable = _zero                 # (opts, input, output) -> multiply-accumulates
    flops: Callable = _zero                # (opts, input, output) -> FLOPs other than 2·MACs
    fan_in: Callable = _zero               # weights one output neuron reads (for "no sharing")
    global_rf: bool = False                # sees its whole input (GAP, FC on a volume)
    allocates: bool = True                 # its output is new memory, not a view of its input
    absorbs_bias: bool = False             # a CONV or FC feeding only this layer has no bias (BN)
    build: Callable | None = None          # (opts, input shape, m) -> torch module; m = cnndsl.modules
    # Joins, written NAME(chain, chain, ...). Their shape, params, macs, flops and fan_in
    # receive the list of input shapes (in branch order) instead of one shape.
    merge: bool = False                    # a join: reads several inputs (CONCAT, ADD, MUL)
    emit: Callable | None = None           # (fx graph, input nodes, torch) -> fx node
    arity: tuple[int, int | None] = (1, None)  # chains written: at least, at most (None: any)
    mismatch: Callable | None = None       # (written name, input shapes, ShapeMismatch) -> message
    shorthands: tuple["Shorthand", ...] = ()   # other words for this join (ADD's RES)

    def option(self, name: str) -> Opt | None:
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> dict[str, Opt]:  # option() is asked several times per layer
        return {o.name: o for o in self.options}


# --- conv and pool -------------------------------------------------------------

def _conv_pad(o):
    """The notes' size-preserving pad, (F-1)//2 per side (times the dilation)."""
    if o.pad is not None:
        return pair(o.pad)
    return tuple(d * (k - 1) // 2 for k, d in zip(pair(o.kernel), pair(o.dilation)))


def _conv_window(o) -> Window:
    return Window(pair(o.kernel), pair(o.stride), _conv_pad(o), pair(o.dilation))


def _conv_check(o, x):
    c = x[0]
    if c % o.groups or o.filters % o.groups:
        return (f"groups={o.groups} must divide both the input channels ({c}) "
                f"and the filters ({o.filters})")
    return None


def _conv_fan_in(o, x):
    kh, kw = pair(o.kernel)
    return kh * kw * x[0] // o.groups


def _conv_params(o, x):
    return _conv_fan_in(o, x) * o.filters + (o.filters if o.bias else 0)


def _conv_macs(o, x, y):
    return numel(y) * _conv_fan_in(o, x)


def _build_conv(o, x, m):
    return m.nn.Conv2d(x[0], o.filters, pair(o.kernel), o.stride, _conv_pad(o),
                       o.dilation, o.groups, bias=o.bias)


def _pool_window(o) -> Window:
    kernel = pair(o.kernel)
    stride = kernel if o.stride is None else pair(o.stride)
    return Window(kernel, stride, pair(o.pad), ceil=o.ceil)


def _pool_check(o, x):
    if any(2 * p > k for p, k in zip(pair(o.pad), pair(o.kernel))):
        return f"pad={o.pad} is more than half the pool's {_size_text(o.kernel)} window"
    return None


def _size_text(k) -> str:
    kh, kw = pair(k)
    return f"{kh}×{kw}"


def _pool_kind(name: str, doc: str, build: Callable, flops_per_window: Callable) -> Kind:
    return Kind(
        name, doc,
        options=(Opt("kernel", "size", 2, low=1), Opt("stride", int, None, low=1),
                 Opt("pad", int, 0, low=0), Opt("ceil", bool, False)),
        head=("kernel", None, "stride"), needs_volume=True,
        window=_pool_window, out_channels=lambda o, c: c, check=_pool_check,
        flops=lambda o, x, y: flops_per_window(numel(pair(o.kernel))) * numel(y),
        build=build,
    )


def _build_pool(cls_name):
    def build(o, x, m):
        w = _pool_window(o)
        return getattr(m.nn, cls_name)(w.kernel, w.stride, w.pad, ceil_mode=o.ceil)
    return build


_max_pool = dict(doc="max pooling; POOL{F} has stride F",
                 build=_build_pool("MaxPool2d"), flops_per_window=lambda k: k - 1)
# SILU and SWISH: one function, two names (as POOL and MAXPOOL). FLOPs: σ(x), then × x.
_silu = dict(doc="x·σ(x), the sigmoid-weighted linear unit (Swish)", cls="SiLU", flops=2)

# --- fully connected and normalisation -----------------------------------------

def _fc_params(o, x):
    return numel(x) * o.out + (o.out if o.bias else 0)


def _bn_build(o, x, m):
    cls = m.nn.BatchNorm2d if len(x) == 3 else m.nn.BatchNorm1d
    return cls(x[0], eps=o.eps, momentum=o.momentum)


def _lrn_build(o, x, m):
    # The AlexNet paper divides by (k + α·Σa²)^β; PyTorch by (k + α/n·Σa²)^β, so α·n.
    return m.nn.LocalResponseNorm(o.size, alpha=o.alpha * o.size, beta=o.beta, k=o.k)


def _activation(name: str, doc: str, cls: str, *options: Opt, flops: int = 1,
                build: Callable | None = None) -> Kind:
    def build_default(o, x, m):
        return getattr(m.nn, cls)(*o.values())
    return Kind(name, doc, options=options, flops=_per_element(flops),
                build=build or build_default)


# --- joins ----------------------------------------------------------------------

class ShapeMismatch(Exception):
    """Raised by a join's shape rule: branch `branch` (counted from 1) disagrees with
    branch `against` (branch 1 unless the rule says otherwise) in its `what` ("shapes",
    "heights and widths"); the join's `mismatch` words the diagnostic."""

    def __init__(self, what: str, branch: int, against: int = 1):
        super().__init__(what, branch, against)
        self.what, self.branch, self.against = what, branch, against


@dataclass(frozen=True)
class Shorthand:
    """Another word for a join, declared in the join's entry: RES(a) is ADD(a, ID)."""
    name: str
    doc: str
    arity: tuple[int, int | None] = (1, None)
    identity_branch: bool = False          # appends the join's own input as its last branch
    mismatch: Callable | None = None       # None: the join's own


@dataclass(frozen=True)
class Join:
    """A word written NAME(chain, ...): a join's own name or one of its shorthands,
    with the table entry its node gets (`kind`). See `join_words()`."""
    name: str
    doc: str
    kind: Kind
    arity: tuple[int, int | None]
    identity_branch: bool
    mismatch: Callable

    @property
    def one_chain(self) -> bool:
        """Takes exactly one chain, whose layers are then named `res1.conv1`, not `res1.b1.conv1`."""
        return self.arity == (1, 1)

    def arity_problem(self, chains: int) -> str | None:
        """What is wrong with writing it with `chains` chains, if anything.

        >>> join_words()["RES"].arity_problem(2)
        'RES takes one chain: RES(a) means ADD(a, ID)'
        """
        low, high = self.arity
        if low <= chains and (high is None or chains <= high):
            return None
        if high is None:
            wanted = f"at least {_chains(low)}"
        elif low == high:
            wanted = _chains(low)
        else:
            wanted = f"{low} to {high} chains"
        return f"{self.name} takes {wanted}: {self.doc}"


def _chains(n: int) -> str:
    return "one chain" if n == 1 else f"{n} chains"


def join_words(table: dict[str, Kind] | None = None) -> dict[str, Join]:
    """Every word written NAME(chain, ...), upper-case, in table order, each join's
    shorthands right after it.

    >>> list(join_words())
    ['CONCAT', 'ADD', 'RES', 'MUL', 'GATE']
    >>> join_words()["RES"].kind.name, join_words()["RES"].identity_branch
    ('ADD', True)
    """
    words: dict[str, Join] = {}
    for kind in (KINDS if table is None else table).values():
        if not kind.merge:
            continue
        mismatch = kind.mismatch or branches_disagree
        words[kind.name] = Join(kind.name, kind.doc, kind, kind.arity, False, mismatch)
        for short in kind.shorthands:
            words[short.name] = Join(short.name, short.doc, kind, short.arity,
                                     short.identity_branch, short.mismatch or mismatch)
    return words


def register(kind: Kind) -> Kind:
    """Adds a layer kind or a join (with its shorthands) to the table, as an entry
    written in `KINDS` would be; the parser picks up a new join's name by itself."""
    names = [kind.name, *(s.name for s in kind.shorthands)]
    for name in names:
        if not (name.isidentifier() and name.isupper()):
            raise ValueError(f"a table name is an upper-case identifier, not {name!r}")
    taken = sorted(set(names) & (set(KINDS) | set(join_words())))
    if taken or len(set(names)) < len(names):
        raise ValueError(f"{', '.join(taken or names)} is already a name in the table")
    if kind.merge and kind.emit is None:
        raise ValueError(f"join {kind.name} needs an `emit` for torch.fx")
    if kind.shorthands and not kind.merge:
        raise ValueError(f"only a join has shorthands, and {kind.name} is not one")
    KINDS[kind.name] = kind
    return kind


def first_disagreeing(xs, same: Callable) -> int | None:
    """The branch (counted from 1) whose shape is not `same` as branch 1's, if any."""
    return next((i for i, x in enumerate(xs[1:], 2) if not same(xs[0], x)), None)


def _concat_shape(o, xs):
    i = first_disagreeing(xs, lambda a, b: len(a) == len(b) and a[1:] == b[1:])
    if i is not None:
        raise ShapeMismatch("heights and widths", i)
    return (sum(x[0] for x in xs),) + tuple(xs[0][1:])


def _add_shape(o, xs):
    i = first_disagreeing(xs, lambda a, b: a == b)
    if i is not None:
        raise ShapeMismatch("shapes", i)
    return xs[0]


def branches_disagree(name: str, xs, e: ShapeMismatch) -> str:
    """A join's mismatch message, unless its entry words its own."""
    return (f"{name} branches disagree in their {e.what}: branch {e.against} gives "
            f"{shape_text(xs[e.against - 1])}, branch {e.branch} gives {shape_text(xs[e.branch - 1])}")


def gates(gate: tuple, volume: tuple) -> bool:
    """Whether `gate` is a C×1×1 channel gate of the C×H×W `volume` (squeeze-and-excitation):
    the one broadcast MUL allows.

    >>> gates((32, 1, 1), (32, 8, 8)), gates((16, 1, 1), (32, 8, 8)), gates((32,), (32, 1, 1))
    (True, False, False)
    """
    return len(gate) == len(volume) == 3 and gate == (volume[0], 1, 1) != volume


def _add_mismatch(name: str, xs, e: ShapeMismatch) -> str:
    message = branches_disagree(name, xs, e)
    first, other = xs[e.against - 1], xs[e.branch - 1]
    if gates(first, other) or gates(other, first):
        return message + ("; to multiply by a C×1×1 channel gate (squeeze-and-excitation) "
                          "instead, write MUL(...), or GATE(a) for MUL(a, ID)")
    if len(first) == len(other):
        # The projection goes on the branch that still has the larger height and width.
        j, source, target = ((e.against, first, other) if len(first) == 3 and first[1] > other[1]
                             else (e.branch, other, first))
        message += f"; add a projection shortcut to branch {j}: {_projection(target, source)}"
    return message


def _res_mismatch(name: str, xs, e: ShapeMismatch) -> str:
    chain, given = xs[0], xs[e.branch - 1]  # the chain's output, and the input added back
    message = (f"{name}'s chain changes the shape {shape_text(given)} → {shape_text(chain)}, so its "
               f"input cannot be added back; ")
    if gates(chain, given):
        return message + (f"to multiply it by the chain's {shape_text(chain)} output (a channel "
                          f"gate, squeeze-and-excitation) instead, write GATE(...)")
    return message + f"use a projection shortcut: ADD(..., {_projection(chain, given)})"


def _mul_shape(o, xs):
    """Equal shapes, or C×1×1 gates of a C×H×W volume (in any branch): that volume's shape."""
    out, source = xs[0], 1
    for i, x in enumerate(xs[1:], 2):
        if gates(out, x):
            out, source = x, i
        elif x != out and not gates(x, out):
            raise ShapeMismatch("shapes", i, against=source)
    return out


def _mul_allowed(volume: tuple) -> str:
    """The shapes that may be multiplied with `volume`."""
    if len(volume) == 3 and volume[1:] != (1, 1):
        return f"{shape_text(volume)} or {volume[0]}×1×1 (a channel gate)"
    return shape_text(volume)


def _mul_mismatch(name: str, xs, e: ShapeMismatch) -> str:
    larger = max(xs[e.against - 1], xs[e.branch - 1], key=numel)
    return (branches_disagree(name, xs, e) + f"; {name} multiplies equal shapes, or a C×1×1 "
            f"channel gate by a C×H×W volume: {shape_text(larger)} multiplies only "
            f"{_mul_allowed(larger)}")


def _gate_mismatch(name: str, xs, e: ShapeMismatch) -> str:
    chain, given = xs[0], xs[-1]  # the chain's output, and the input it multiplies
    return (f"{name}'s chain gives {shape_text(chain)}, which cannot multiply its input "
            f"{shape_text(given)}: {name}(a) needs a to give {_mul_allowed(given)}")


def _projection(target: tuple, source: tuple) -> str:
    """The 1×1 conv that maps `source` onto `target`: CONV1-{K}/{S} -> BN.

    >>> _projection((128, 28, 28), (64, 56, 56)), _projection((10,), (64, 4, 4))
    ('CONV1-128/2 -> BN', 'FC-10 -> BN')
    """
    if len(target) == 1:
        return f"FC-{target[0]} -> BN"
    stride = source[1] // target[1] if len(target) == len(source) == 3 and target[1] else 1
    return f"CONV1-{target[0]}" + (f"/{stride}" if stride > 1 else "") + " -> BN"


def _emit_cat(graph, xs, torch):
    return graph.call_function(torch.cat, (list(xs), 1))


def _emit_fold(operation: Callable):
    """Emits `operation` (operator.add, operator.mul) over the branches, left to right."""
    def emit(graph, xs, torch):
        total = xs[0]
        for x in xs[1:]:
            total = graph.call_function(operation, (total, x))
        return total
    return emit


def _per_extra_branch(o, xs, y) -> int:
    """FLOPs of ADD and MUL: one per output element for each branch after the first."""
    return (len(xs) - 1) * numel(y)


# --- channel groups, normalisation over channels, stochastic depth -------------

def _split_check(o, x):
    if o.part > o.of:
        return f"there is no part {o.part} of {o.of}: the parts are numbered 1 to {o.of}"
    if x[0] % o.of:
        return (f"the {x[0]} channels do not split into {o.of} equal parts; "
                f"the number of parts must divide the channels")
    return None


def _shuffle_check(o, x):
    if x[0] % o.groups:
        return f"groups={o.groups} must divide the {x[0]} channels"
    return None


def _ln_build(o, x, m):
    # torchvision: LayerNorm2d on a volume (each position's C values), nn.LayerNorm on a vector.
    cls = m.LayerNorm2d if len(x) == 3 else m.nn.LayerNorm
    return cls(x[0], eps=o.eps)


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("INPUT", "input volume, channels-first: INPUT(C, H, W) or INPUT[WxHxD]",
         options=(Opt("channels", int, low=1), Opt("height", int, low=1), Opt("width", int, low=1)),
         shape=lambda o, x: (o.channels, o.height, o.width)),
    Kind("CONV", "2-D convolution: CONV{F}-{K}, CONV{Fh}x{Fw}-{K}, /S for the stride",
         options=(Opt("filters", int, low=1), Opt("kernel", "size", low=1), Opt("stride", int, 1, low=1),
                  Opt("pad", int, None, low=0), Opt("dilation", int, 1, low=1),
                  Opt("groups", int, 1, low=1), Opt("bias", bool, None)),
         head=("kernel", "filters", "stride"), needs_volume=True,
         window=_conv_window, out_channels=lambda o, c: o.filters, check=_conv_check,
         params=_conv_params, macs=_conv_macs, fan_in=_conv_fan_in,
         flops=lambda o, x, y: numel(y) if o.bias else 0, build=_build_conv),
    _pool_kind("POOL", **_max_pool),
    _pool_kind("MAXPOOL", **_max_pool),
    _pool_kind("AVGPOOL", "average pooling (padding counts as zeros, as in PyTorch)",
               _build_pool("AvgPool2d"), flops_per_window=lambda k: k),
    Kind("GAP", "global average pooling to C×1×1", needs_volume=True, global_rf=True,
         shape=lambda o, x: (x[0], 1, 1), flops=lambda o, x, y: numel(x),
         build=lambda o, x, m: m.nn.AdaptiveAvgPool2d(1)),
    Kind("FC", "fully connected, N outputs; flattens its input",
         options=(Opt("out", int, low=1), Opt("bias", bool, None)), head=(None, "out", None),
         global_rf=True, shape=lambda o, x: (o.out,), params=_fc_params,
         macs=lambda o, x, y: numel(x) * o.out, fan_in=lambda o, x: numel(x),
         flops=lambda o, x, y: o.out if o.bias else 0,
         build=lambda o, x, m: m.FlattenLinear(numel(x), o.out, bias=o.bias)),
    _activation("RELU", "rectified linear unit, max(0, x)", "ReLU"),
    _activation("RELU6", "min(max(0, x), 6)", "ReLU6", flops=2),
    _activation("TANH", "hyperbolic tangent", "Tanh"),
    _activation("SIGMOID", "logistic sigmoid", "Sigmoid"),
    _activation("ELU", "exponential linear unit", "ELU", Opt("alpha", float, 1.0, low=0)),
    _activation("GELU", "Gaussian error linear unit", "GELU"),
    _activation("SILU", **_silu),
    _activation("SWISH", **_silu),
    # hard sigmoid min(max(x + 3, 0), 6)/6: +, max, min, ×1/6; hard swish: that, then × x
    _activation("HSIGMOID", "hard sigmoid, min(max(x + 3, 0), 6)/6", "Hardsigmoid", flops=4),
    _activation("HSWISH", "hard swish, x·min(max(x + 3, 0), 6)/6", "Hardswish", flops=5),
    _activation("LRELU", "leaky ReLU: LRELU(0.1); slope 0.01", "LeakyReLU",
                Opt("slope", float, 0.01, low=0), flops=2),
    _activation("SOFTMAX", "softmax over channels", "Softmax", flops=3,
                build=lambda o, x, m: m.nn.Softmax(dim=1)),
    Kind("DROPOUT", "dropout: DROPOUT(0.3); p=0.5",
         options=(Opt("p", float, 0.5, low=0, high=1),),
         build=lambda o, x, m: m.nn.Dropout(o.p)),
    Kind("DROPPATH", "stochastic depth: DROPPATH(0.1) zeroes a whole sample with probability p",
         options=(Opt("p", float, low=0, high=1),),
         build=lambda o, x, m: m.DropPath(o.p)),
    Kind("BN", "batch normalisation, 2-D or 1-D by its input",
         options=(Opt("eps", float, 1e-5, low=0), Opt("momentum", float, 0.1, low=0, high=1)),
         params=lambda o, x: 2 * x[0], buffers=lambda o, x: 2 * x[0] + 1,
         flops=_per_element(2), absorbs_bias=True, build=_bn_build),
    Kind("LRN", "local response normalisation across channels (AlexNet)",
         options=(Opt("size", int, 5, low=1), Opt("alpha", float, 1e-4, low=0),
                  Opt("beta", float, 0.75, low=0), Opt("k", float, 2.0, low=0)),
         needs_volume=True, flops=lambda o, x, y: (o.size + 4) * numel(y), build=_lrn_build),
    # Not absorbs_bias: LN subtracts the mean over a position's channels, which a bias
    # that differs per channel is not.
    Kind("LN", "layer normalisation over the channels of each position: LN(eps=1e-6)",
         options=(Opt("eps", float, 1e-5, low=0),),
         # per element: mean 1, subtract 1, variance 2 (square, sum), divide 1, scale and shift 2
         params=lambda o, x: 2 * x[0], flops=_per_element(7), build=_ln_build),
    Kind("SCALE", "a learnable scale per channel (layer scale): SCALE(1e-6), its initial value",
         options=(Opt("init", float, 1.0),), params=lambda o, x: x[0], flops=_per_element(1),
         build=lambda o, x, m: m.LayerScale(x[0], o.init, len(x))),
    Kind("FLATTEN", "C×H×W → C·H·W", shape=lambda o, x: (numel(x),), allocates=False,
         build=lambda o, x, m: m.nn.Flatten()),
    Kind("SPLIT", "one of equal groups of channels: SPLIT(1, 2) is the first half",
         options=(Opt("part", int, low=1), Opt("of", int, low=1)), check=_split_check,
         shape=lambda o, x: (x[0] // o.of,) + tuple(x[1:]), allocates=False,
         build=lambda o, x, m: m.ChannelSplit(o.part, o.of)),
    Kind("SHUFFLE", "channel shuffle (ShuffleNet): SHUFFLE(2) interleaves 2 groups of channels",
         options=(Opt("groups", int, low=1),), check=_shuffle_check,
         build=lambda o, x, m: m.ChannelShuffle(o.groups)),
    Kind("ID", "identity", allocates=False),
    Kind("CONCAT", "joins its branches along channels", merge=True, shape=_concat_shape,
         flops=_zero, emit=_emit_cat, mismatch=branches_disagree),
    Kind("ADD", "sums its branches", merge=True, shape=_add_shape,
         flops=_per_extra_branch, emit=_emit_fold(operator.add), mismatch=_add_mismatch,
         shorthands=(Shorthand("RES", "RES(a) means ADD(a, ID)", arity=(1, 1),
                               identity_branch=True, mismatch=_res_mismatch),)),
    Kind("MUL", "multiplies its branches; a C×1×1 branch gates a C×H×W one", merge=True,
         shape=_mul_shape, flops=_per_extra_branch, emit=_emit_fold(operator.mul),
         mismatch=_mul_mismatch,
         shorthands=(Shorthand("GATE", "GATE(a) means MUL(a, ID)", arity=(1, 1),
                               identity_branch=True, mismatch=_gate_mismatch),)),
]}


def describe(kind: Kind, o: Opts, written: frozenset = frozenset()) -> str:
    """The layer as it would be written: `CONV3-64/2`, `POOL3/2(pad=1)`.

    >>> describe(KINDS["CONV"], Opts(kernel=3, filters=64, stride=2, pad=None,
    ...          dilation=1, groups=1, bias=True))
    'CONV3-64/2'
    """
    size, dash, slash = kind.head
    text = kind.name
    if size and (size in written or kind.option(size).default == REQUIRED):
        text += "x".join(map(str, o[size])) if isinstance(o[size], tuple) else str(o[size])
    if dash:
        text += f"-{o[dash]}"
    if slash and o[slash] is not None and o[slash] != (kind.option(slash).default or o[size]):
        text += f"/{o[slash]}"
    return text + _written_options(kind, o, written)


def _written_options(kind: Kind, o: Opts, written: frozenset) -> str:
    """`(3, 32, 32)` or `(pad=0)`: the options past the head that were written;
    positionally when they are all the options there are (`INPUT(3, 32, 32)`, `DROPOUT(0.3)`)."""
    rest = [opt.name for opt in kind.options if opt.name not in kind.head]
    given = [name for name in rest if name in written]
    positional = given if given == rest else []
    parts = [_option_text(o[n]) if n in positional else f"{n}={_option_text(o[n])}" for n in given]
    return f"({', '.join(parts)})" if parts else ""


def _option_text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
