"""A compiled network as one standalone, readable PyTorch source file (`cnndsl export --to py`).

The file holds one `nn.Module` class and a `build()` that returns it, and needs torch
only (no cnndsl):

* `__init__` creates every layer under its hierarchical name (`self.layer1.basic1.res1.conv1
  = nn.Conv2d(...)`, with plain `nn.Module()` containers for the blocks), so the class's
  `state_dict()` has the compiled GraphModule's keys and takes its weights as they are.
  Each constructor is the one the layer's table entry (`layers.Kind.build`) makes: the
  entry is run with a namespace that records the call instead of making the module.
* `forward` is the fx graph's nodes in order, one statement each, each result named
  after its layer (`layer1_basic1_res1_conv1`, and `layer1_basic1_res1` for a join);
  joins as they were emitted (`torch.cat(...)`, `+`, `*`).
* The custom modules cnndsl uses (`FlattenLinear`, `LayerNorm2d`, ...) are copied from
  `backends/modules.py`, so the file computes exactly what the GraphModule computes.

Nothing the spec's author wrote becomes code: layer names are checked to be names a
module can hold, and written as attribute names only when they are identifiers (else as
string literals); the spec's name and text appear only in comments, with every
non-printable character escaped.
"""
from __future__ import annotations

import ast
import inspect
import keyword
import math
import operator

import torch
from torch import fx, nn

from ..errors import CnnDslError, clip
from . import modules
from .export import printable
from .torch_fx import _class_name

# The imports of backends/modules.py, which the copied classes need.
IMPORTS = ("import torch", "from torch import nn", "from torch.nn import functional as F")
# Names the generated file defines or imports: no variable or class may take them.
RESERVED = {"self", "torch", "nn", "F", "build", "x"}
# How a join's function (`Kind.emit`) is written: operators between their operands.
OPERATORS = {operator.add: "+", operator.mul: "*", operator.sub: "-",
             operator.truediv: "/", operator.matmul: "@"}


def python_source(module: fx.GraphModule, graph, comment: str = "") -> str:
    """The source of a file that rebuilds `module`, compiled from the analysed `graph`;
    `comment` (any text, such as the spec) is written as comments."""
    cls = _safe_class_name(module.__class__.__name__)
    layers = [n for n in module.graph.nodes if n.op == "call_module"]
    constructors = {n.target: _constructor(graph, n.target) for n in layers}
    head = [_docstring(cls, graph), _comments(comment), "\n".join(IMPORTS)]
    definitions = [_class_source(c) for c in _custom_classes(constructors.values())]
    definitions += [_network_class(cls, constructors, module.graph, graph), _build_function(cls)]
    # PEP 8: one blank line in the head, two between top-level definitions
    return "\n\n".join(p for p in head if p) + "\n\n\n" + "\n\n\n".join(definitions) + "\n"


# --- names --------------------------------------------------------------------------------

def _safe_class_name(name: str) -> str:
    cls = _class_name(name)
    taken = RESERVED | {c.__name__ for c in _module_classes()}
    return cls + "Net" if keyword.iskeyword(cls) or cls in taken else cls


def _plain(part: str) -> bool:
    """Whether a name part can be written as an attribute: `self.layer1`."""
    return part.isidentifier() and not keyword.iskeyword(part)


def name_problem(path: str) -> str | None:
    """Why a layer's hierarchical name cannot name a torch submodule, if it cannot: the
    parser refuses such labels (`lang.parser.label_problem`); checked again here because
    the file written is code."""
    from ..lang.parser import label_problem

    for part in path.split("."):
        problem = label_problem(part) if part else "an empty name part"
        if problem:
            return problem
    return None


def _check_name(path: str) -> None:
    problem = name_problem(path)
    if problem:
        raise CnnDslError(f"the layer '{clip(path)}' cannot be written as PyTorch source: {problem}")


def _access(parts: list[str]) -> str:
    """`self.layer1.basic1`; a part that is no identifier is read with getattr."""
    text = "self"
    for part in parts:
        text = f"{text}.{part}" if _plain(part) else f"getattr({text}, {part!r})"
    return text


def _variables(graph: fx.Graph, joins: dict) -> dict:
    """A Python variable for each fx node: its layer's or join's name (`.` as `_`), else
    its own, made safe and unique."""
    names, taken = {}, set(RESERVED)
    for node in graph.nodes:
        if node.op == "placeholder":
            names[node] = "x"
            continue
        wanted = node.target if node.op == "call_module" else joins.get(node, node.name)
        wanted = "".join(c if c.isalnum() or c == "_" else "_" for c in wanted)
        base = wanted if _plain(wanted) else "v_" + wanted
        var = base
        while var in taken or keyword.iskeyword(var):
            var += "_"
        taken.add(var)
        names[node] = var
    return names


# --- constructors -------------------------------------------------------------------------

class _Call:
    """A recorded constructor call: `nn.Conv2d(3, 64, ...)`, or a custom module's."""

    def __init__(self, cls: type, written: str, args: tuple, kwargs: dict):
        self.cls, self.written, self.args, self.kwargs = cls, written, args, kwargs

    def text(self) -> str:
        """The call with every argument that differs from its default, by keyword (as it
        was called where the signature has *args or **kwargs)."""
        params = inspect.signature(self.cls).parameters
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
            written = [_source(a) for a in self.args]
            written += [f"{k}={_source(v)}" for k, v in self.kwargs.items()]
        else:
            bound = inspect.signature(self.cls).bind(*self.args, **self.kwargs)
            written = [f"{k}={_source(v)}" for k, v in bound.arguments.items()
                       if not _is_default(v, params[k].default)]
        return f"{self.written}({', '.join(written)})"


def _is_default(value, default) -> bool:
    return default is not inspect.Parameter.empty and type(value) is type(default) and value == default


class _Recorder:
    """Stands for `backends.modules` (and its `nn`) when a layer's `build` runs: each
    class it names is looked up there, and calling it records the call."""

    def __init__(self, namespace, prefix: str):
        self._namespace, self._prefix = namespace, prefix

    @property
    def nn(self):
        return _Recorder(nn, "nn.")

    def __getattr__(self, name: str):
        cls = getattr(self._namespace, name, None)
        ours = self._namespace is not modules or cls in _module_classes()   # copied into the file
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module) and ours):
            raise CnnDslError(f"a layer's build uses {self._prefix}{name}, which the py export "
                              "cannot write (neither a torch.nn class nor one of backends/modules.py)")
        return lambda *args, **kwargs: _Call(cls, self._prefix + name, args, kwargs)


def _constructor(graph, name: str) -> _Call:
    """What `torch_fx.build_module` builds for the layer `name`, recorded."""
    node = graph.nodes[name]
    source_shape = graph.nodes[next(iter(graph.predecessors(name)))]["shape"]
    return node["kind"].build(node["opts"], source_shape, _Recorder(modules, ""))


def _source(value, names: dict | None = None) -> str:
    """An argument as Python source: an fx node's variable (from `names`), a list or tuple,
    or a plain value written as a literal (never text to run)."""
    if isinstance(value, fx.Node):
        return names[value]
    if isinstance(value, list):
        return "[" + ", ".join(_source(v, names) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_source(v, names) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        if ast.literal_eval(text) != value:   # a subclass with its own repr
            raise CnnDslError(f"cannot write the value {clip(text)} as Python source")
        return text
    raise CnnDslError(f"cannot write a {type(value).__name__} as Python source")


# --- custom modules -----------------------------------------------------------------------

def _module_classes() -> list[type]:
    """The classes of backends/modules.py, in the order they are defined there."""
    found = [c for c in vars(modules).values()
             if inspect.isclass(c) and c.__module__ == modules.__name__]
    return sorted(found, key=lambda c: inspect.getsourcelines(c)[1])


def _custom_classes(calls) -> list[type]:
    """The custom classes the network uses, with their custom bases, in file order."""
    used = {c.cls for c in calls}
    ours = _module_classes()
    needed = {base for cls in used for base in cls.__mro__ if base in ours}
    return [c for c in ours if c in needed]


def _class_source(cls: type) -> str:
    return inspect.getsource(cls).rstrip()


# --- the network --------------------------------------------------------------------------

def _join_names(graph: fx.Graph, g) -> dict:
    """The fx node that ends each join, with the join's name (`res1`, `concat1`).

    `torch_fx.build_module` emits the joins in the analysis graph's order, so the fx
    graph's functions are their emits one after another; each emit is replayed with a
    counting graph to know how many it made. Should they not line up, {} (the fx names)."""
    functions = [n for n in graph.nodes if n.op == "call_function"]
    names, done = {}, 0
    for name in g:
        kind = g.nodes[name]["kind"]
        if not kind.merge:
            continue
        made = _CountingGraph()
        kind.emit(made, [None] * len(g.pred[name]), torch)
        mine = functions[done:done + len(made.targets)]
        if not mine or [n.target for n in mine] != made.targets:
            return {}
        done += len(mine)
        names[mine[-1]] = name
    return names if done == len(functions) else {}


class _CountingGraph:
    """Stands for an fx graph when a join's `emit` is replayed: records the functions."""

    def __init__(self):
        self.targets = []

    def call_function(self, target, args=(), kwargs=None):
        self.targets.append(target)
        return None


def _network_class(cls: str, constructors: dict, graph: fx.Graph, g) -> str:
    lines = [f"class {cls}(nn.Module):",
             "    def __init__(self):",
             "        super().__init__()"]
    lines += ["        " + line for line in _init_lines(constructors)]
    lines += ["", "    def forward(self, x):"]
    lines += ["        " + line for line in _forward_lines(graph, _join_names(graph, g))]
    return "\n".join(lines)


def _init_lines(constructors: dict) -> list[str]:
    """One line per layer, in the graph's order, each block's container made first."""
    lines, made = [], set()
    for path, call in constructors.items():
        _check_name(path)
        parts = path.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = tuple(parts[:depth])
            if prefix in made:
                continue
            made.add(prefix)
            value = call.text() if depth == len(parts) else "nn.Module()"
            lines.append(_assignment(list(prefix), value))
    return lines


def _assignment(parts: list[str], value: str) -> str:
    *owner, last = parts
    if _plain(last):
        return f"{_access(owner)}.{last} = {value}"
    return f"{_access(owner)}.add_module({last!r}, {value})"


def _forward_lines(graph: fx.Graph, joins: dict) -> list[str]:
    names = _variables(graph, joins)
    lines = []
    for node in graph.nodes:
        if node.op == "call_module":
            arguments = ", ".join(_source(a, names) for a in node.args)
            lines.append(f"{names[node]} = {_access(node.target.split('.'))}({arguments})")
        elif node.op == "call_function":
            lines.append(f"{names[node]} = {_function_call(node, names)}")
        elif node.op == "output":
            lines.append(f"return {_source(node.args[0], names)}")
        elif node.op != "placeholder":
            raise CnnDslError(f"the py export cannot write the fx node {node.op} {node.target}")
    return lines


def _function_call(node: fx.Node, names: dict) -> str:
    """A join as emitted: `a + b`, `a * b`, or `torch.NAME(...)` (`torch.cat([a, b], 1)`)."""
    fn = node.target
    if fn in OPERATORS and len(node.args) == 2 and not node.kwargs:
        left, right = (_source(a, names) for a in node.args)   # variables: no precedence to mind
        return f"{left} {OPERATORS[fn]} {right}"
    name = getattr(fn, "__name__", "")
    if getattr(torch, name, None) is fn:
        written = [_source(a, names) for a in node.args]
        written += [f"{k}={_source(v, names)}" for k, v in node.kwargs.items()]
        return f"torch.{name}({', '.join(written)})"
    raise CnnDslError(f"the py export cannot write the function {clip(repr(fn))} "
                      "(a join's emit); add it to pysource.OPERATORS")


def _build_function(cls: str) -> str:
    return (f"def build() -> {cls}:\n"
            f'    """The network, with PyTorch\'s default initial weights (load a state_dict '
            f'for trained ones)."""\n'
            f"    return {cls}()")


# --- comments -----------------------------------------------------------------------------

def _docstring(cls: str, graph) -> str:
    shape = graph.nodes["input"]["shape"]
    shown = ", ".join(str(int(d)) for d in shape)
    return (f'"""The network {cls}, as plain PyTorch: written by `cnndsl export --to py`.\n\n'
            f"Input: a batch of shape (N, {shown}). `build()` makes it with fresh weights;\n"
            "the weights of a safetensors export (`cnndsl export ... --to safetensors`) fit\n"
            "it name for name:\n\n"
            "    from safetensors.torch import load_file\n"
            "    model = build()\n"
            '    model.load_state_dict(load_file("weights.safetensors"))\n'
            "    model.eval()\n"
            '"""')


def _comments(text: str) -> str | None:
    """`text` as comment lines, each character that is not printable escaped (`\\r`,
    `\\x00`, `\\u2028`), so no text can end a comment or hide in the file."""
    text = text.rstrip("\n")
    if not text:
        return None
    return "\n".join("# " + printable(line) if line else "#" for line in text.split("\n"))
