"""The layer graph every stage after the front end works on, and its helpers.

A graph is a `networkx.DiGraph` made by `lang.expand`: one node per layer, keyed by
its hierarchical name (`stage2.bottle3.conv2`), added producers first, so the graph's
node order is a topological order. An edge's `port` orders the inputs of a join.
`graph.graph["output"]` names the last layer.

A node's data has two parts, kept apart by name:

* what the user wrote (set by `expand`, read by everything after it)
    kind      the `layers.Kind` of the layer or join
    opts      its options, resolved from the table's defaults, the head and the
              arguments; `None` where a pass decides (a CONV's `bias`)
    written   the option names the user wrote, so reports write them back
    span      where in the source it was written
    calls     the block calls it was expanded from, innermost last
* what the passes compute (`analysis.passes`, in this order)
    bias      resolve_bias: whether a CONV or FC keeps its bias (2.1 of the reference)
    shape     infer_shapes: the output shape, None after an error upstream
    window    infer_shapes: a conv's or pool's `layers.Window`, else None
    params, buffers, macs, flops, unshared_params, activations,
    requires_grad, training_flops                                count_costs
    rf, jump, grid                                                 receptive_fields

>>> import networkx as nx
>>> g = nx.DiGraph(); g.add_edge("a", "j", port=1); g.add_edge("b", "j", port=0)
>>> inputs(g, "j")
['b', 'a']
"""
from __future__ import annotations

import networkx as nx

WRITTEN = ("kind", "opts", "written", "span", "calls")


def inputs(graph: nx.DiGraph, name: str) -> list[str]:
    """A node's inputs in the order they were written (a CONCAT's branch order)."""
    edges = graph.pred[name]  # {input: edge data}: far cheaper than graph.edges[p, name]
    return list(edges) if len(edges) < 2 else sorted(edges, key=lambda p: edges[p]["port"])


def shape_text(shape) -> str:
    """A shape as reports and messages write it.

    >>> shape_text((64, 56, 56)), shape_text((1000,)), shape_text(None)
    ('64×56×56', '1000', '?')
    """
    return "×".join(map(str, shape)) if shape else "?"


def call_note(call) -> str:
    """The note under a diagnostic raised inside a block: which call it came from."""
    return f"in {call.span.text()}, called here"
