"""Passes over the layer graph. Each annotates the graph's nodes in place, in
topological order (the graph's node order), as torch.fx passes write `node.meta`:

* `resolve_bias`      — `opts["bias"]`: off for a CONV or FC that feeds only a BN, or another
                        layer whose entry `absorbs_bias` (docs/language.md, 2.1)
* `infer_shapes`      — `shape`, with the fit, volume, groups and branch checks; `window`
                        (a conv's or pool's `layers.Window`, else None: made once, read after)
* `count_costs`       — `params`, `buffers`, `macs`, `flops`, `unshared_params`, `activations`,
                        `requires_grad`, `training_flops` (forward + backward, `backward_flops`)
* `receptive_fields`  — `rf` and `jump` per axis (h, w); through branches, the largest

A node whose shape could not be inferred (after an error) has `shape` None, and the
passes skip it and everything downstream of it.
"""
from __future__ import annotations

import networkx as nx

from ..errors import CnnDslError, Diagnostic
from ..graph import call_note, inputs, shape_text
from ..layers import ShapeMismatch, branches_disagree, describe, join_words, numel


def resolve_bias(g: nx.DiGraph) -> None:
    """A CONV or FC whose output goes straight (and only) into BN has no bias: BN, as
    every entry with `absorbs_bias`, subtracts its input's mean, and with it any bias."""
    for name in g:
        opts = g.nodes[name]["opts"]
        if "bias" in opts and opts["bias"] is None:
            consumers = list(g.successors(name))
            opts["bias"] = not (len(consumers) == 1 and g.nodes[consumers[0]]["kind"].absorbs_bias)


def infer_shapes(g: nx.DiGraph, strict: bool = False) -> list[Diagnostic]:
    diagnostics: list[Diagnostic] = []
    for name in g:
        node = g.nodes[name]
        xs = [g.nodes[p]["shape"] for p in inputs(g, name)]
        node["shape"] = node["window"] = None
        if any(x is None for x in xs):
            continue
        found: list[Diagnostic] = []
        try:
            node["shape"] = _output_shape(node, xs, strict, found)
        except CnnDslError as e:
            found.extend(e.diagnostics)
        diagnostics.extend(_with_call_notes(d, node["calls"]) for d in found)
    return diagnostics


def _with_call_notes(diagnostic: Diagnostic, calls: tuple) -> Diagnostic:
    """Inside a block, say which call (innermost first) the layer came from."""
    notes = tuple(Diagnostic("note", call_note(call), call.span) for call in reversed(calls))
    return Diagnostic(diagnostic.severity, diagnostic.message, diagnostic.span,
                      diagnostic.notes + notes)


def _output_shape(node: dict, xs: list[tuple], strict: bool, diagnostics: list) -> tuple:
    kind, opts = node["kind"], node["opts"]
    if kind.merge:
        try:
            return kind.shape(opts, xs)
        except ShapeMismatch as e:
            # Worded by the join as written: RES's message is not ADD's.
            join = join_words().get(opts["op"])
            mismatch = join.mismatch if join is not None else (kind.mismatch or branches_disagree)
            raise CnnDslError(mismatch(opts["op"], xs, e), node["span"]) from None
    x = xs[0] if xs else None
    written = _Written(kind, opts, node["written"])
    if kind.needs_volume and len(x) != 3:
        raise CnnDslError(f"{written} needs a C×H×W volume, but its input is a flat vector "
                          f"of {x[0]} (after FC or FLATTEN)", node["span"])
    problem = kind.check(opts, x)
    if problem:
        raise CnnDslError(f"{written}: {problem}", node["span"])
    if kind.window is None:
        return tuple(kind.shape(opts, x))
    window = node["window"] = kind.window(opts)
    hw = _fit_window(window, x[1:], written, node["span"], strict, diagnostics)
    return (kind.out_channels(opts, x[0]),) + hw


class _Written:
    """How a layer is written (`CONV3-64/2`), worked out only when a message says it:
    describing every layer of a 10,000-layer net up front costs more than its shapes."""

    def __init__(self, kind, opts, written):
        self.args = (kind, opts, written)

    def __format__(self, spec: str) -> str:
        return format(describe(*self.args), spec)


def _fit_window(window, hw: tuple, written: str, span, strict: bool, diagnostics: list) -> tuple:
    """The notes' (N - F + 2P)/S + 1 on each axis, and its diagnostics."""
    outputs, misfit = [], None
    for n, k, s, p, d in zip(hw, window.kernel, window.stride, window.pad, window.dilation):
        extent = d * (k - 1) + 1
        if n + 2 * p < extent:  # the output side would be below 1
            raise CnnDslError(f"{written} leaves no output from its {shape_text(hw)} input: "
                              f"{_formula(n, extent, s, p)}; its {extent}-wide window is larger "
                              f"than its padded input, {n} + 2·{p} = {n + 2 * p} < {extent}", span)
        out = window_output(n, extent, s, p, window.ceil)
        if out < 1:
            raise CnnDslError(f"{written} leaves no output: {_formula(n, extent, s, p)}", span)
        # ceil=true asks for the partial last window (as Caffe did): nothing is dropped.
        if (n - extent + 2 * p) % s and misfit is None and not window.ceil:
            misfit = (n, extent, s, p, out)
        outputs.append(out)
    if misfit:
        diagnostics.append(_misfit(misfit, hw, written, span, strict))
    return tuple(outputs)


def window_output(n: int, extent: int, stride: int, pad: int, ceil: bool) -> int:
    """Output side of a sliding window, exactly as PyTorch computes it.

    >>> window_output(7, 3, 3, 0, False), window_output(7, 3, 3, 0, True)
    (2, 3)
    """
    if not ceil:
        return (n + 2 * pad - extent) // stride + 1
    out = -(-(n + 2 * pad - extent) // stride) + 1
    # PyTorch (and Caffe) drop a last window that would start in the right padding.
    return out - 1 if (out - 1) * stride >= n + pad else out


def _formula(n, extent, s, p) -> str:
    value = (n - extent + 2 * p) / s + 1
    # Two decimals, not significant digits: 110.5 must not read as a whole 110.
    return f"({n} - {extent} + 2·{p})/{s} + 1 = {value:.2f}".rstrip("0").rstrip(".")


def _misfit(misfit, hw, written, span, strict) -> Diagnostic:
    n, extent, s, p, out = misfit
    skipped = (n - extent + 2 * p) % s  # rows of the padded input no window reaches
    lost = skipped - p                   # ... of which real input, not zero padding
    message = f"{written} does not fit its {shape_text(hw)} input: {_formula(n, extent, s, p)}; "
    if lost <= 0:
        message += f"it is floored to {out}; only padding goes unread, no input pixel is lost"
    elif lost == 1:
        message += f"it is floored to {out}, and the last row/column of the input is never read"
    else:
        message += f"it is floored to {out}, and the last {lost} rows/columns of the input are never read"
    return Diagnostic("error" if strict else "warning", message, span)


def count_costs(g: nx.DiGraph) -> None:
    for name in g:
        node = g.nodes[name]
        kind, opts, y = node["kind"], node["opts"], node["shape"]
        sources = [g.nodes[p] for p in inputs(g, name)]
        if y is None:
            node.update(params=0, buffers=0, macs=0, flops=0, unshared_params=0, activations=0,
                        requires_grad=False, training_flops=0)
            continue
        xs = [source["shape"] for source in sources]
        x = xs if kind.merge else (xs[0] if xs else None)
        macs = kind.macs(opts, x, y)
        params = kind.params(opts, x)
        fan_in = kind.fan_in(opts, x)
        flops = 2 * macs + kind.flops(opts, x, y)
        # As autograd decides: an output needs a gradient when a parameter is at or above it.
        input_grad = any([source["requires_grad"] for source in sources])
        node.update(
            params=params, buffers=kind.buffers(opts, x), macs=macs, flops=flops,
            # Without sharing, every output neuron has its own weights and bias (the notes' 105,705,600).
            unshared_params=numel(y) * (fan_in + bool(opts.get("bias"))) if fan_in else params,
            activations=numel(y) if kind.allocates else 0,
            requires_grad=input_grad or params > 0,
            training_flops=flops + backward_flops(macs, flops, params > 0, input_grad),
        )


def backward_flops(macs: int, flops: int, has_params: bool, input_grad: bool) -> int:
    """FLOPs of a layer's backward pass (docs/analyze.md, "Training FLOPs"):

    * a CONV or FC: 2·MACs for the gradient of its weights, and 2·MACs more for the
      gradient of its input, unless its input needs none (nothing above it has parameters:
      the first layer after INPUT), as `torch.autograd` skips it;
    * everything else the layer computes (a bias, an activation, BN, a pool, a join):
      as many FLOPs as forward (a bias's gradient sums the output's: 1 per element);
    * nothing for a layer that neither has parameters nor receives a gradient.

    >>> backward_flops(macs=100, flops=210, has_params=True, input_grad=True)   # CONV, bias
    410
    >>> backward_flops(macs=100, flops=210, has_params=True, input_grad=False)  # the first CONV
    210
    >>> backward_flops(0, 5, False, True), backward_flops(0, 5, False, False)   # RELU
    (5, 0)
    """
    if not (has_params or input_grad):
        return 0
    return 2 * macs * (1 + input_grad) + (flops - 2 * macs)


def receptive_fields(g: nx.DiGraph) -> None:
    """Receptive field size and jump (input pixels between adjacent outputs), per axis.

    `grid` is the spatial size of the feature map a node's outputs tile, which a
    global layer (GAP, FC) covers whole, also after a FLATTEN.
    """
    for name in g:
        node = g.nodes[name]
        sources = [g.nodes[p] for p in inputs(g, name)]
        if node["shape"] is None:
            node.update(rf=None, jump=None, grid=None)
        elif not sources:
            node.update(rf=(1, 1), jump=(1, 1), grid=node["shape"][1:])
        elif node["kind"].merge:
            node.update(_join(node, sources))
        else:
            node.update(_grow(node, sources[0]))


def _join(node: dict, sources: list[dict]) -> dict:
    """Through a join: the largest receptive field of its branches; the jump and grid of
    the branches at the join's own height and width, so that a C×1×1 channel gate (whose
    GAP saw the whole input) widens the receptive field but does not coarsen the grid."""
    spatial = node["shape"][1:]
    full = [s for s in sources if s["shape"][1:] == spatial] or sources
    return dict(rf=_axis_max(s["rf"] for s in sources),
                jump=_axis_max(s["jump"] for s in full), grid=full[0]["grid"])


def _grow(node: dict, source: dict) -> dict:
    kind, rf, jump = node["kind"], source["rf"], source["jump"]
    if kind.window is not None:
        w = node["window"]
        extents = [d * (k - 1) + 1 for k, d in zip(w.kernel, w.dilation)]
        return dict(rf=tuple(r + (e - 1) * j for r, e, j in zip(rf, extents, jump)),
                    jump=tuple(j * s for j, s in zip(jump, w.stride)), grid=node["shape"][1:])
    if kind.global_rf:
        grid = source["grid"]
        return dict(rf=tuple(r + (n - 1) * j for r, n, j in zip(rf, grid, jump)),
                    jump=tuple(j * n for j, n in zip(jump, grid)), grid=(1, 1))
    grid = node["shape"][1:] if len(node["shape"]) == 3 else source["grid"]
    return dict(rf=rf, jump=jump, grid=grid)


def _axis_max(pairs) -> tuple[int, int]:
    pairs = list(pairs)
    return (max(p[0] for p in pairs), max(p[1] for p in pairs))
