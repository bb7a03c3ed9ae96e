"""Annotated graph → `torch.fx.GraphModule`.

The fx graph is built directly, one `call_module` per layer under its hierarchical
name (`stage2.bottle3.conv2`), and for a join what its table entry `emit`s
(`torch.cat` for CONCAT, `+` for ADD and RES), so the generated
`forward` (see `.code`) is plain Python: as fast as a hand-written module, and ready
for `torch.compile`, `torch.jit.trace`, export and DDP.
"""
from __future__ import annotations

import re

import torch
from torch import fx, nn

from ..graph import inputs
from . import INIT_SCHEMES, modules



def compile_spec(spec, input=None, init: str = "default", strict: bool = False) -> fx.GraphModule:
    """The network of a `Spec`; raises `CnnDslError` if its analysis has errors."""
    analysis = spec.analyze(strict=strict, input=input)
    analysis.raise_for_errors()
    return build_module(analysis.graph, spec.name, init)


def build_module(g, name: str = "Net", init: str = "default") -> fx.GraphModule:
    graph, submodules, values = fx.Graph(), {}, {}
    for node_name in g:
        node = g.nodes[node_name]
        kind, args = node["kind"], [values[p] for p in inputs(g, node_name)]
        if not args:
            values[node_name] = graph.placeholder("x")
        elif kind.merge:
            values[node_name] = kind.emit(graph, args, torch)
        elif kind.build is None:
            values[node_name] = args[0]  # ID: nothing to compute
        else:
            source_shape = g.nodes[next(iter(g.predecessors(node_name)))]["shape"]
            submodules[node_name] = kind.build(node["opts"], source_shape, modules)
            values[node_name] = graph.call_module(node_name, (args[0],))
    graph.output(values[g.graph["output"]])
    module = fx.GraphModule(submodules, graph, class_name=_class_name(name))
    initialize(module, init)
    return module


def initialize(module: nn.Module, scheme: str = "default") -> None:
    """Weights of every CONV and FC; biases to zero.

    * xavier  — Var(W) = 1/n_in, the lecture notes' recommendation (Glorot & Bengio
                as the notes simplify it; kaiming_normal_ with a linear gain gives it).
    * kaiming — Var(W) = 2/n_in for ReLU nets (He et al. 2015).
    * default — PyTorch's own initialisation.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, not {scheme!r}")
    if scheme == "default":
        return
    gain = "linear" if scheme == "xavier" else "relu"
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _class_name(name: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", name)
    cls = "".join(w[:1].upper() + w[1:] for w in words if w)
    return cls if cls[:1].isalpha() else "Net" + cls
