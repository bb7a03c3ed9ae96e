"""The analysis of a spec: the annotated graph, its totals and its diagnostics.

This is what `cnndsl analyze` prints and what `Spec.analyze()` returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from . import passes
from ..errors import CnnDslError, Diagnostic
from ..graph import inputs
from ..layers import describe

# Bytes of optimiser state per parameter: SGD keeps a momentum buffer, Adam two moments.
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2, "none": 0}


@dataclass
class Analysis:
    name: str
    graph: nx.DiGraph
    diagnostics: list[Diagnostic] = field(default_factory=list)
    batch: int = 1
    optimizer: str = "sgd"

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            raise CnnDslError.from_diagnostics(self.errors)

    @property
    def input_shape(self) -> tuple:
        return self.graph.nodes["input"]["shape"]

    @property
    def output_shape(self) -> tuple | None:
        return self.graph.nodes[self.output]["shape"]

    @property
    def output(self) -> str:
        return self.graph.graph["output"]

    def layers(self, details: bool = False) -> list[dict]:
        """One row per layer, in order: what the table and `--json` show. `details` adds
        each layer's `input_shapes`, `kernel` and `stride`, for the table's columns that
        show them; --json leaves them out (they would cost a tenth of its time, and what
        was written, the inputs and their outputs say them already)."""
        rows = [self._row(name) for name in self.graph]
        if details:
            for row in rows:
                row.update(self._details(row))
        return rows

    def _row(self, name: str) -> dict:
        node = self.graph.nodes[name]
        span = node["span"]
        return {
            "name": name, "kind": node["kind"].name,
            "layer": _written(node), "inputs": inputs(self.graph, name),
            "output": list(node["shape"]) if node["shape"] else None,
            "params": node["params"], "buffers": node["buffers"], "macs": node["macs"],
            "flops": node["flops"], "activations": node["activations"],
            "unshared_params": node["unshared_params"],
            "rf": max(node["rf"]) if node["rf"] else None,
            "rf_hw": list(node["rf"]) if node["rf"] else None,
            "jump": max(node["jump"]) if node["jump"] else None,
            "line": span.line, "col": span.col,
            "training_flops": node["training_flops"],   # added after the keys above
        }

    def _details(self, row: dict) -> dict:
        window = self.graph.nodes[row["name"]]["window"]
        return {"input_shapes": [_listed(self.graph.nodes[p]["shape"]) for p in row["inputs"]],
                "kernel": list(window.kernel) if window else None,
                "stride": list(window.stride) if window else None}

    def totals(self) -> dict:
        nodes = [self.graph.nodes[n] for n in self.graph]
        total = {key: sum(n[key] for n in nodes) for key in
                 ("params", "buffers", "macs", "flops", "unshared_params", "training_flops")}
        activations = sum(n["activations"] for n in nodes)
        total.update(trainable_params=total["params"], activation_elements=activations,
                     layers=len(nodes) - 1, memory=self._memory(total["params"], activations))
        return total

    def _memory(self, params: int, activations: int) -> dict:
        """Bytes. Training = weights + gradients + optimiser state + the batch's activations,
        all fp32 (activations are what backward keeps: every layer's output)."""
        states = OPTIMIZER_STATES.get(self.optimizer, 1)
        weights = 4 * params
        return {
            "activations_per_image_fp32": 4 * activations,
            "activations_per_image_bf16": 2 * activations,
            "batch": self.batch,
            "activations_batch_fp32": 4 * activations * self.batch,
            "activations_batch_bf16": 2 * activations * self.batch,
            "weights_fp32": weights,
            "training_estimate": {
                "optimizer": self.optimizer, "weights": weights, "gradients": weights,
                "optimizer_state": states * weights,
                "activations": 4 * activations * self.batch,
                "total": (2 + states) * weights + 4 * activations * self.batch,
            },
        }

    def to_dict(self) -> dict:
        """The `--json` object (keys may be added, never renamed)."""
        return {
            "name": self.name,
            "input": list(self.input_shape) if self.input_shape else None,
            "output": list(self.output_shape) if self.output_shape else None,
            "totals": self.totals(),
            "layers": self.layers(),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


def _listed(shape: tuple | None) -> list | None:
    return list(shape) if shape else None


def _written(node: dict) -> str:
    opts = node["opts"]
    if node["kind"].merge:
        return opts["op"]
    return describe(node["kind"], opts, node["written"])


def analyze_graph(name: str, graph: nx.DiGraph, strict: bool = False, batch: int = 1,
                  optimizer: str = "sgd") -> Analysis:
    """Runs the passes, in order, over an expanded graph."""
    passes.resolve_bias(graph)
    # Notes from expansion (a bare INPUT's default shape) come first.
    diagnostics = list(graph.graph.get("notes", ())) + passes.infer_shapes(graph, strict)
    passes.count_costs(graph)
    passes.receptive_fields(graph)
    return Analysis(name, graph, diagnostics, batch, optimizer)
