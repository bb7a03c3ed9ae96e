"""`cnndsl analyze --verify`: the static FLOPs against torch's own count of the built network.

The network is built (on the meta device where it can: shapes without memory or
arithmetic), and `torch.utils.flop_counter.FlopCounterMode` counts one forward pass and
one backward pass of a batch of 2, per layer (its module). FlopCounterMode counts only
matrix products and convolutions (aten.convolution and its backward, mm, addmm, bmm, …),
2 per multiply-accumulate, without their bias; so the static side compared is what the
analysis says those are: forward 2·MACs of each CONV and FC, backward the training FLOPs
less the forward and less what backward repeats of everything else (passes.backward_flops).
Activations, BN, pools, joins, biases are counted by the analysis and not by torch; the
report gives their sum.

One documented exception: FlopCounterMode (torch ≤ 2.14) counts the weight gradient of a
grouped convolution `groups` times (it drops the groups from that product). Whether the
installed torch does is measured on a small grouped convolution, and the excess is shown
apart ("known excess"), not as a difference.

This module imports torch; `cnndsl analyze` imports it only for --verify.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import fx
from torch.utils.flop_counter import FlopCounterMode

from ..backends.torch_fx import build_module
from .report import LayerTable

BATCH = 2   # BN normalises a batch in training mode: more than one value per channel
FIGURES = ("static_forward", "counted_forward", "static_backward", "counted_backward",
           "known_excess")


@dataclass
class LayerCount:
    """One layer's FLOPs of the ops FlopCounterMode counts, per image (or several layers'
    summed: a kind's, `layers` of them)."""
    name: str
    kind: str
    static_forward: int = 0
    counted_forward: int = 0
    static_backward: int = 0
    counted_backward: int = 0
    known_excess: int = 0   # FlopCounterMode's grouped weight-gradient over-count
    layers: int = 1

    @property
    def figures(self) -> tuple[int, ...]:
        return tuple(getattr(self, key) for key in FIGURES)

    @property
    def difference(self) -> int:
        return (self.counted_forward + self.counted_backward
                - self.static_forward - self.static_backward - self.known_excess)


@dataclass
class Verification:
    layers: list[LayerCount]
    device: str
    outside: int          # counted outside every layer's module (none expected)
    not_counted: int      # static training FLOPs of what FlopCounterMode does not count
    torch_version: str
    seconds: float

    @property
    def differences(self) -> list[LayerCount]:
        return [layer for layer in self.layers if layer.difference]

    @property
    def agrees(self) -> bool:
        return not self.differences and not self.outside

    def by_kind(self) -> dict[str, LayerCount]:
        """The counts of the layers of each kind that has any (CONV, FC), summed."""
        kinds: dict[str, LayerCount] = {}
        for layer in self.layers:
            if not any(layer.figures):
                continue
            total = kinds.setdefault(layer.kind, LayerCount(layer.kind, layer.kind, layers=0))
            total.layers += 1
            for key in FIGURES:
                setattr(total, key, getattr(total, key) + getattr(layer, key))
        return kinds

    def table(self) -> LayerTable:
        table = LayerTable(f"--verify: FLOPs per image against torch {self.torch_version}'s "
                           f"FlopCounterMode (forward and backward, {self.device} device, "
                           f"{self.seconds:.1f} s)")
        for header in ("kind", "layers", "forward: static", "counted", "backward: static",
                       "counted", "known excess", "difference"):
            table.add_column(header, justify="left" if header == "kind" else "right")
        for kind, t in self.by_kind().items():
            table.add_row(kind, f"{t.layers:,}", *(f"{v:,}" for v in (*t.figures, t.difference)))
        if self.outside:   # forward and backward together
            table.add_row("(outside the layers)", "", "", "", "", "", "", f"{self.outside:,}")
        return table

    def summary_lines(self) -> list[str]:
        lines = [f"not counted by FlopCounterMode (biases, activations, normalisation, pools, "
                 f"joins): {self.not_counted:,} training FLOPs per image"]
        if any(layer.known_excess for layer in self.layers):
            lines.append("known excess: FlopCounterMode counts a grouped convolution's weight "
                         "gradient `groups` times (docs/analyze.md)")
        if self.agrees:
            return lines + ["verify: the static FLOPs agree with FlopCounterMode"]
        for layer in self.differences[:10]:
            lines.append(f"differs: {layer.name} ({layer.kind}): forward {layer.static_forward:,} "
                         f"static, {layer.counted_forward:,} counted; backward "
                         f"{layer.static_backward:,} static, {layer.counted_backward:,} counted"
                         + (f" (known excess {layer.known_excess:,})" if layer.known_excess else ""))
        more, count = len(self.differences) - 10, len(self.differences)
        return lines + ([f"… and {more:,} more layers"] if more > 0 else []) + [
            f"verify: {count:,} layer{'s differ' if count != 1 else ' differs'} from "
            f"FlopCounterMode" + (f"; {self.outside:,} FLOPs counted outside the layers"
                                  if self.outside else "")]

    def to_dict(self) -> dict:
        """The "verify" object of --json."""
        return {"agrees": self.agrees, "device": self.device, "torch": self.torch_version,
                "seconds": round(self.seconds, 3), "outside_layers": self.outside,
                "not_counted_training_flops": self.not_counted,
                "kinds": {kind: {**_counts(t), "layers": t.layers}
                          for kind, t in self.by_kind().items()},
                "differences": [{"layer": layer.name, "kind": layer.kind, **_counts(layer)}
                                for layer in self.differences]}


def _counts(layer: LayerCount) -> dict:
    return {**dict(zip(FIGURES, layer.figures)), "difference": layer.difference}


def verify(analysis) -> Verification:
    """The analysis' FLOPs (it has no errors) against FlopCounterMode's, layer by layer."""
    start = time.perf_counter()
    graph = analysis.graph
    counted, outside, device = _count(graph, analysis.name, analysis.input_shape)
    overcounts = groups_weight_gradient_overcounted()
    layers, not_counted = [], 0
    for name in graph:
        node = graph.nodes[name]
        forward, backward = _static(node)
        counted_forward, counted_backward = counted[name]
        groups = node["opts"].get("groups", 1) if node["macs"] else 1
        # The weight gradient, 2·MACs, counted `groups` times.
        known = (groups - 1) * 2 * node["macs"] if overcounts else 0
        layers.append(LayerCount(name, node["kind"].name, forward, counted_forward, backward,
                                 counted_backward, known))
        not_counted += node["training_flops"] - forward - backward
    return Verification(layers, device, outside, not_counted, torch.__version__,
                        time.perf_counter() - start)


def _static(node: dict) -> tuple[int, int]:
    """A layer's static FLOPs of what FlopCounterMode counts: forward 2·MACs; backward the
    training FLOPs less the forward and less what backward repeats of everything else."""
    matmul = 2 * node["macs"]
    rest = node["flops"] - matmul
    backward = node["training_flops"] - node["flops"] - (rest if node["requires_grad"] else 0)
    return matmul, backward


def _count(graph, name: str, input_shape: tuple) -> tuple[dict, int, str]:
    """{layer: (forward, backward)} FLOPs per image counted by FlopCounterMode, the FLOPs
    it counted outside every layer, and the device it ran on."""
    try:
        return _count_on(graph, name, input_shape, "meta")
    except (NotImplementedError, RuntimeError):   # a module meta tensors cannot run
        return _count_on(graph, name, input_shape, "cpu")


def _count_on(graph, name: str, input_shape: tuple, device: str) -> tuple[dict, int, str]:
    with torch.device(device):
        module = build_module(graph, name)
        x = torch.zeros((BATCH, *input_shape))
    counter = FlopCounterMode(display=False)
    with counter:
        ledger = _Ledger(counter)
        y = _LayerMarks(module, ledger).run(x)
        ledger.mark(("backward", None))   # the loss's own backward belongs to no layer
        if y.requires_grad:   # a network without parameters has no backward
            y.sum().backward()
        ledger.mark(("end", None))
    per_layer = {layer: (ledger.flops[("forward", layer)] // BATCH,
                         ledger.flops[("backward", layer)] // BATCH) for layer in graph}
    outside = sum(flops for (_, layer), flops in ledger.flops.items() if layer not in graph)
    return per_layer, outside // BATCH, device


class _Ledger:
    """FlopCounterMode's running total cut into (pass, layer) pieces: whatever is counted
    between two marks belongs to the first mark's piece."""

    def __init__(self, counter: FlopCounterMode):
        self.counter, self.current, self.seen = counter, ("forward", None), 0
        self.flops: dict = defaultdict(int)

    def mark(self, piece) -> None:
        total = self.counter.get_total_flops()
        self.flops[self.current] += total - self.seen
        self.current, self.seen = piece, total


class _LayerMarks(fx.Interpreter):
    """Runs the network node by node, marking the ledger before each layer's forward; and
    hooks each layer's output, whose hook runs right before the autograd node that made it
    (the layer's last operation: the convolution, the matrix product) computes its backward.

    Not FlopCounterMode's own attribution to modules: in backward it credits an operation
    to every module whose backward has begun and not ended, which after a join (an ADD's
    two branches) is more than one."""

    def __init__(self, module, ledger: _Ledger):
        super().__init__(module)
        self.ledger = ledger

    def run_node(self, n):
        if n.op == "output":   # the network's output: its last layer's, already hooked
            return super().run_node(n)
        layer = n.target if n.op == "call_module" else n.name   # a join's fx node: not a layer
        self.ledger.mark(("forward", layer))
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda grad, layer=layer: self.ledger.mark(("backward", layer)))
        return out


def groups_weight_gradient_overcounted() -> bool:
    """Whether this torch's FlopCounterMode counts a grouped convolution's weight gradient
    `groups` times: measured on a 1×1 convolution of 2 groups, whose input needs no
    gradient (forward 4 FLOPs, weight gradient 4; 8 more when over-counted)."""
    with torch.device("meta"):
        conv = torch.nn.Conv2d(2, 2, 1, groups=2, bias=False)
        x = torch.zeros(1, 2, 1, 1)
    counter = FlopCounterMode(display=False)
    with counter:
        conv(x).sum().backward()
    return counter.get_total_flops() == 4 + 4 * 2
