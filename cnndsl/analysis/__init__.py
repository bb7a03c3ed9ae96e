"""Static analysis of an expanded graph: `passes` annotate every node (shape, fit,
params, MACs, FLOPs, receptive field), `result` sums them into an `Analysis`, and
`report` prints it as a table (`columns` and `formats`: its columns, CSV, Markdown,
HTML). Nothing here imports torch but `verify` (`analyze --verify`), which the command
imports only when asked.
"""
from .result import Analysis, analyze_graph

__all__ = ["Analysis", "analyze_graph"]
