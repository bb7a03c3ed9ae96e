"""Static analysis of an expanded graph: `passes` annotate every node (shape, fit,
params, MACs, FLOPs, receptive field), `result` sums them into an `Analysis`, and
`report` prints it as a table. Nothing here imports torch.
"""
from .result import Analysis, analyze_graph

__all__ = ["Analysis", "analyze_graph"]
