"""cnndsl — a declarative CNN architecture compiler and analyser.

    >>> import cnndsl
    >>> spec = cnndsl.parse("INPUT(3, 227, 227) -> CONV11-96/4(pad=0)")
    >>> spec.analyze().output_shape           # the notes' AlexNet CONV1: 55×55×96
    (96, 55, 55)

The pipeline, one folder a stage (the README's "Layout" lists every module):
`lang` (text → syntax tree → graph: `parser`, `expand`, `spec`), `graph` (the node
data and its helpers), `layers` (the one table of kinds and joins), `analysis` (passes,
totals, report), `backends` (→ torch.fx GraphModule), `training` (settings, data, the
loop, checkpoints), `cli` (one module per subcommand). The language: docs/language.md.
"""
from .analysis import Analysis
from .errors import CnnDslError
from .lang.spec import Spec, load, parse, resolve

__all__ = ["Analysis", "CnnDslError", "Spec", "load", "parse", "resolve"]
__version__ = "0.1.0"
