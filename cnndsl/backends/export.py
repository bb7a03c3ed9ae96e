"""A compiled network written for other tools: ONNX, a torch.export program, TorchScript,
safetensors weights, or a standalone PyTorch source file (`cnndsl export`).

`FORMATS` is the one table of formats: each entry's name, suffix, purpose, the packages
it needs, how it is written, and how the written file is read back and run for the
check. The command's flags, help and messages are made from it. Importing this module
does not import torch (`cnndsl --help` stays fast); its functions do.

Every format is written for inference: the network in eval mode (dropout and stochastic
depth off, batch norm with its running statistics), the batch dimension left free.
After writing, the file is read back (as its users will read it) and run on a random
batch of another size than the one traced; its outputs are compared with the compiled
network's. `exact` formats must give the same tensor bit for bit; the others must agree
within `TOLERANCE` times the largest |output|: relative, because a freshly initialised
network's outputs can be tiny (1e-6), where an absolute 1e-4 would pass a file that
computes zeros.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import CnnDslError, clip
from ..graph import shape_text

if TYPE_CHECKING:
    import torch
    from torch import fx

INSTALL = "pip install 'cnndsl[export]'"
EXAMPLE_BATCH = 2      # the batch the exporters trace with (torch.export specialises 1)
CHECK_BATCH = 3        # the check's batch: another size, so a batch fixed by mistake fails
TOLERANCE = 1e-4       # inexact formats: largest |difference| / largest |output|
TINY = 2.0 ** -126      # float32's smallest normal number: the scale of an all-zero output
OPSET = 18             # ONNX opset: the dynamo exporter's oldest, read by onnxruntime ≥ 1.14


@dataclass
class Network:
    """What is exported: the compiled module with its weights, and what it came from."""
    module: "fx.GraphModule"
    analysis: object                  # analysis.result.Analysis: the graph it was compiled from
    name: str                         # the spec's name
    spec_text: str
    weights: str                      # where the weights come from, in words: "fresh, ..."
    normalize: dict | None = None     # a checkpoint's input normalisation: {"mean": [...], "std": [...]}
    class_names: list | None = None   # a checkpoint's classes, in output order

    @property
    def input_shape(self) -> tuple:
        return tuple(self.analysis.input_shape)

    def input_note(self) -> str | None:
        """How the inputs were normalised in training, which a user of the file must repeat."""
        if not self.normalize:
            return None
        stats = "; ".join(f"{k} {_numbers(self.normalize[k])}" for k in ("mean", "std"))
        return (f"inputs: subtract the training data's per-channel mean and divide by its std "
                f"first, as `cnndsl train` did ({stats})")

    def batch(self, size: int, seed: int) -> "torch.Tensor":
        import torch

        generator = torch.Generator().manual_seed(seed)
        return torch.randn(size, *self.input_shape, generator=generator)


def _numbers(values: list, shown: int = 8) -> str:
    """`0.485, 0.456, 0.406`: the first `shown` of one value per channel."""
    text = ", ".join(f"{v:.6g}" for v in values[:shown])
    return text + (", …" if len(values) > shown else "")


# --- where the network comes from --------------------------------------------------------

def from_spec(spec, input=None, init: str = "default", seed: int = 0, strict: bool = False,
              weights: str | None = None, max_layers: int | None = None) -> Network:
    """The spec compiled with fresh weights (drawn under `seed`), or with `weights` (a
    state_dict file or torchvision:NAME, as `cnndsl train --init-from` takes them)."""
    import torch

    from ..training.limits import check_memory
    from . import weights as weight_files
    from .torch_fx import build_module

    limit = {} if max_layers is None else {"max_layers": max_layers}
    analysis = spec.analyze(strict=strict, input=input, **limit)
    analysis.raise_for_errors()
    check_memory(analysis, optimizer_states=0)   # before torch allocates the weights
    torch.manual_seed(seed)
    module = build_module(analysis.graph, spec.name, init)
    if weights is not None:
        origin = weight_files.load(module, weights)
    else:
        scheme = "PyTorch's default" if init == "default" else init
        origin = (f"fresh, {scheme} initialisation, seed {seed} (a checkpoint or --weights "
                  "gives trained ones)")
    return Network(module.eval(), analysis, spec.name, spec.text, origin)


def from_checkpoint(path: str | Path) -> Network:
    """A checkpoint of `cnndsl train`: the network rebuilt from its stored spec, with its
    weights (as `training.inference` rebuilds it, without loading its data)."""
    from ..training import checkpoint
    from ..training.inference import analyzed, model_upto

    state = checkpoint.load(path)
    spec = checkpoint.spec_of(state, path)
    analysis = analyzed(spec, state["config"].get("strict") is True)
    module = model_upto(analysis, spec.name, None, state, path)
    origin = f"checkpoint {path}, epoch {state['epoch']}"
    normalize = {k: state["normalize"][k].flatten().tolist() for k in ("mean", "std")}
    return Network(module.eval(), analysis, spec.name, spec.text, origin, normalize,
                   list(state["class_names"]))


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    purpose: str                       # what it is for, one line
    write: Callable                    # (Network, path) -> None
    run: Callable                      # (Network, path, batch) -> the file's outputs
    reader: str                        # what reads it back in the check
    needs: tuple[str, ...] = ()        # Python packages to write it
    check_needs: tuple[str, ...] = ()  # and to read it back
    exact: bool = False                # the check demands the same tensor, bit for bit


def _example(net: Network) -> tuple:
    return (net.batch(EXAMPLE_BATCH, 0),)


def _dynamic_batch() -> tuple:
    import torch

    return ({0: torch.export.Dim("batch")},)


def _write_onnx(net: Network, path: Path) -> None:
    import torch

    program = torch.onnx.export(net.module, _example(net), dynamo=True, opset_version=OPSET,
                                dynamic_shapes=_dynamic_batch(), verbose=False)
    program.save(str(path))


def _run_onnx(net: Network, path: Path, x):
    import onnxruntime

    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(y)


def _write_pt2(net: Network, path: Path) -> None:
    import torch

    program = torch.export.export(net.module, _example(net), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, path)


def _run_pt2(net: Network, path: Path, x):
    import torch

    return torch.export.load(path).module()(x)


def _write_torchscript(net: Network, path: Path) -> None:
    import torch

    with warnings.catch_warnings():   # torch.jit is deprecated upstream (docs/export.md)
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(net.module, _example(net)), str(path))


def _run_torchscript(net: Network, path: Path, x):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")(x)


def safetensors_metadata(net: Network) -> dict[str, str]:
    """The header's text: `format` as safetensors.torch writes it, the rest cnndsl's."""
    metadata = {"format": "pt", "cnndsl.name": net.name,
                "cnndsl.input_shape": json.dumps(list(net.input_shape)),
                "cnndsl.weights": net.weights, "cnndsl.spec": net.spec_text}
    if net.normalize:
        metadata["cnndsl.normalize"] = json.dumps(net.normalize)
    if net.class_names:
        metadata["cnndsl.class_names"] = json.dumps(net.class_names)
    return metadata


def _write_safetensors(net: Network, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in net.module.state_dict().items()}
    save_file(tensors, str(path), metadata=safetensors_metadata(net))


def _run_safetensors(net: Network, path: Path, x):
    from safetensors.torch import load_file

    from .torch_fx import build_module

    fresh = build_module(net.analysis.graph, net.name)   # the spec's network, its own weights...
    fresh.load_state_dict(load_file(str(path)), strict=True)   # ...all replaced by the file's
    return fresh.eval()(x)


def _write_py(net: Network, path: Path) -> None:
    from .pysource import python_source

    note = net.input_note()
    comment = "\n".join(([note, ""] if note else []) + [f"The spec {printable(net.name)}:", net.spec_text])
    source = python_source(net.module, net.analysis.graph, comment)
    path.write_text(source, encoding="utf-8")


def _run_py(net: Network, path: Path, x):
    """The written file imported (it is ours, just generated), its `build()` given the
    network's weights."""
    spec = importlib.util.spec_from_file_location(f"cnndsl_export_check_{os.getpid()}", path)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    rebuilt = code.build()
    rebuilt.load_state_dict(net.module.state_dict(), strict=True)
    return rebuilt.eval()(x)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("onnx", ".onnx", f"ONNX (opset {OPSET}), for onnxruntime, TensorRT, OpenVINO and "
           "other runtimes", _write_onnx, _run_onnx, "onnxruntime",
           needs=("onnx", "onnxscript"), check_needs=("onnxruntime",)),
    Format("pt2", ".pt2", "a torch.export program, for torch.export.load, AOTInductor, "
           "ExecuTorch", _write_pt2, _run_pt2, "torch.export.load"),
    Format("torchscript", ".torchscript", "a traced TorchScript module, for torch.jit.load "
           "and LibTorch (C++)", _write_torchscript, _run_torchscript, "torch.jit.load"),
    Format("safetensors", ".safetensors", "the weights (the state_dict), with the spec in the "
           "file's metadata", _write_safetensors, _run_safetensors,
           "safetensors.torch.load_file into a freshly compiled network",
           needs=("safetensors",), exact=True),
    Format("py", ".py", "one standalone PyTorch source file: an nn.Module class and build(); "
           "no cnndsl needed", _write_py, _run_py, "importing it, its build() given the "
           "network's weights", exact=True),
]}


def markdown_table() -> str:
    """The formats as docs/export.md lists them (tests/test_export.py checks it does)."""
    rows = ["| `--to` | suffix | what it is for | read back by the check |", "|---|---|---|---|"]
    rows += [f"| `{f.name}` | `{f.suffix}` | {f.purpose} | {f.reader} |" for f in FORMATS.values()]
    return "\n".join(rows)


def format_of_suffix(suffix: str) -> Format | None:
    """The format whose files end in `suffix` (any case), if any."""
    return next((f for f in FORMATS.values() if f.suffix == suffix.lower()), None)


def require(packages: tuple[str, ...], purpose: str, hint: str = "") -> None:
    """Each package importable, or the one-line message that says which extra installs it."""
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            raise CnnDslError(f"{purpose} needs the Python package {package}: {INSTALL}{hint}") from None


# --- writing and checking ----------------------------------------------------------------

@dataclass
class Check:
    reader: str
    batch: int
    max_abs: float
    scale: float                      # the largest |output| of the compiled network
    equal: bool                       # bit for bit

    exact: bool                       # the format must give the same tensor

    @property
    def tolerance(self) -> float:
        return 0.0 if self.exact else TOLERANCE * max(self.scale, TINY)

    @property
    def passed(self) -> bool:
        return self.equal or self.max_abs <= self.tolerance

    @property
    def words(self) -> str:
        done = f"read back by {self.reader}, on a random batch of {self.batch}"
        if self.equal:
            return f"{done}: the compiled network's outputs, bit for bit"
        return (f"{done}: max abs difference {self.max_abs:.3g} from the compiled network's "
                f"outputs (largest |output| {self.scale:.3g}; tolerance {self.tolerance:.3g})")


def write(net: Network, fmt: Format, out: Path) -> float:
    """Writes `out` (atomically: a crash leaves no half-written file); returns the seconds."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        _atomically(out, lambda path: _guarded(f"writing {fmt.name}", fmt.write, net, path))
    return time.perf_counter() - start


def check(net: Network, fmt: Format, out: Path, seed: int = 0) -> Check:
    """`out` read back and run on a random batch, compared with the compiled network;
    a `CnnDslError` when they disagree (more than the tolerance, or at all for exact ones)."""
    import torch

    x = net.batch(CHECK_BATCH, seed)
    with torch.no_grad():
        expected = net.module(x)
        got = _guarded(f"reading {out} back with {fmt.reader}", fmt.run, net, out, x)
    if got.shape != expected.shape:
        raise CnnDslError(f"check failed: {out} gives outputs of shape {shape_text(tuple(got.shape))} "
                          f"for a batch of {CHECK_BATCH}, the network {shape_text(tuple(expected.shape))}")
    result = Check(fmt.reader, CHECK_BATCH, (got.double() - expected.double()).abs().max().item(),
                   expected.abs().max().item(), torch.equal(got, expected), fmt.exact)
    if not result.passed:   # NaN differences fail too
        raise CnnDslError(f"check failed: {out}, {result.words}; the file is kept for inspection")
    return result


def _guarded(doing: str, function: Callable, *args):
    """`function(*args)`; whatever a library raises becomes a one-line CnnDslError."""
    try:
        return function(*args)
    except CnnDslError:
        raise
    except Exception as e:   # exporters raise many kinds (unsupported op, protobuf limits, ...)
        lines = str(e).strip().splitlines()
        raise CnnDslError(f"{doing} failed: {type(e).__name__}: "
                          f"{clip(lines[0] if lines else '', 300)}") from None


def _atomically(out: Path, write_to: Callable[[Path], None]) -> None:
    """`write_to(path)` in a new folder beside `out`, then each file it wrote moved into
    place (the file itself; ONNX's external data beside it for a model beyond 2 GiB)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_to(folder / out.name)
        for written in sorted(folder.iterdir()):
            with open(written, "rb") as f:
                os.fsync(f.fileno())
            os.replace(written, out.parent / written.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def describe(net: Network) -> str:
    """`resnet18: 11,689,512 params, input N×3×224×224`."""
    params = sum(p.numel() for p in net.module.parameters())
    return f"{clip(printable(net.name))}: {params:,} params, input N×{shape_text(net.input_shape)}"


def printable(text: str) -> str:
    """`text` with each character that is not printable written as its escape (`\\n`,
    `\\x00`, `\\u2028`): a spec's name or text, which anyone may have written, for a
    terminal or a comment line, which no character can then end."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
