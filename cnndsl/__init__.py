"""cnndsl — a declarative CNN architecture compiler and analyser.

    >>> import cnndsl
    >>> spec = cnndsl.parse("INPUT(3, 227, 227) -> CONV11-96/4(pad=0)")
    >>> spec.analyze().output_shape           # the notes' AlexNet CONV1: 55×55×96
    (96, 55, 55)

The pipeline (DESIGN.md): `parser` (text → syntax tree), `expand` (→ networkx graph),
`passes` (shapes, costs, receptive fields), `analysis` / `report` (totals, table,
JSON), `compile` (→ torch.fx GraphModule), `train`.
"""
from .analysis import Analysis
from .errors import CnnDslError
from .lang.spec import Spec, load, parse, resolve

__all__ = ["Analysis", "CnnDslError", "Spec", "load", "parse", "resolve"]
__version__ = "0.1.0"
