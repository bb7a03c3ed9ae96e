"""The one table of layer kinds.

Each `Kind` says, in one place, everything cnndsl knows about a layer: its options
and their defaults, how the DSL head (`CONV3-64/2`) fills them, its shape rule, its
parameter, MAC and FLOP counts, and how to build its torch module. Adding a layer is
adding one entry to `KINDS`; nothing else branches on layer names.

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
from dataclasses import dataclass, field
from typing import Any, Callable

REQUIRED = "required"


class Opts(dict):
    """A layer's resolved options; `o.stride` reads `o["stride"]`."""

    __getattr__ = dict.__getitem__


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
    merge: bool = False                    # reads several inputs (CONCAT, ADD)
    global_rf: bool = False                # sees its whole input (GAP, FC on a volume)
    allocates: bool = True                 # its output is new memory, not a view of its input
    build: Callable | None = None          # (opts, input shape, m) -> torch module; m = cnndsl.modules
    emit: Callable | None = None           # merges: (fx graph, input nodes, torch) -> fx node

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


# --- branches ------------------------------------------------------------------

def _concat_shape(o, xs):
    if len({len(x) for x in xs}) > 1 or any(x[1:] != xs[0][1:] for x in xs):
        raise ShapeMismatch("heights and widths")
    return (sum(x[0] for x in xs),) + tuple(xs[0][1:])


def _add_shape(o, xs):
    if any(x != xs[0] for x in xs):
        raise ShapeMismatch("shapes")
    return xs[0]


def _emit_sum(graph, xs, torch):
    import operator
    total = xs[0]
    for x in xs[1:]:
        total = graph.call_function(operator.add, (total, x))
    return total


class ShapeMismatch(Exception):
    """Raised by a merge's shape rule; the shape pass words the diagnostic."""


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
    _activation("LRELU", "leaky ReLU: LRELU(0.1); slope 0.01", "LeakyReLU",
                Opt("slope", float, 0.01, low=0), flops=2),
    _activation("SOFTMAX", "softmax over channels", "Softmax", flops=3,
                build=lambda o, x, m: m.nn.Softmax(dim=1)),
    Kind("DROPOUT", "dropout: DROPOUT(0.3); p=0.5",
         options=(Opt("p", float, 0.5, low=0, high=1),),
         build=lambda o, x, m: m.nn.Dropout(o.p)),
    Kind("BN", "batch normalisation, 2-D or 1-D by its input",
         options=(Opt("eps", float, 1e-5, low=0), Opt("momentum", float, 0.1, low=0, high=1)),
         params=lambda o, x: 2 * x[0], buffers=lambda o, x: 2 * x[0] + 1,
         flops=_per_element(2), build=_bn_build),
    Kind("LRN", "local response normalisation across channels (AlexNet)",
         options=(Opt("size", int, 5, low=1), Opt("alpha", float, 1e-4, low=0),
                  Opt("beta", float, 0.75, low=0), Opt("k", float, 2.0, low=0)),
         needs_volume=True, flops=lambda o, x, y: (o.size + 4) * numel(y), build=_lrn_build),
    Kind("FLATTEN", "C×H×W → C·H·W", shape=lambda o, x: (numel(x),), allocates=False,
         build=lambda o, x, m: m.nn.Flatten()),
    Kind("ID", "identity", allocates=False),
    Kind("CONCAT", "joins its branches along channels", merge=True, shape=_concat_shape,
         emit=lambda graph, xs, torch: graph.call_function(torch.cat, (list(xs), 1))),
    Kind("ADD", "sums its branches", merge=True, shape=_add_shape,
         flops=lambda o, xs, y: (len(xs) - 1) * numel(y), emit=_emit_sum),
]}

# Written only through CONCAT(...), ADD(...) and RES(...), never as a layer.
MERGE_KINDS = {name for name, kind in KINDS.items() if kind.merge}


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
