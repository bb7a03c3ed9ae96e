"""`cnndsl export`: every format written by the command, then read back here as its
users read it (onnxruntime, torch.export.load, torch.jit.load, safetensors, and the py
file imported in a fresh Python that cannot import cnndsl), and compared with the
network compiled here by `Spec.compile` under the same seed: the expected outputs are
torch's own, from the GraphModule, never from the exporter under test.

Small inputs (`--input 3,32,32`) keep the zoo networks quick; the exporters' cost is the
graph's size, so the ONNX/pt2/TorchScript exports of the two largest graphs are `slow`.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import json
import subprocess
import sys
import textwrap
import tokenize
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from cnndsl.backends import export as backend
from cnndsl.backends import pysource
from cnndsl.cli import main
from cnndsl.layers import KINDS
from cnndsl.lang.spec import resolve
from cnndsl.training import checkpoint
from helpers import run_main, tiny_spec

# Every layer kind that builds a module, and every join: one network exports them all.
EVERY_KIND = """\
INPUT(3, 16, 16)
-> CONV3-8(bias=true) -> BN -> RELU6
-> RES(CONV3-8(groups=2, dilation=2) -> LN -> SCALE(0.5) -> DROPPATH(0.1))
-> GATE(GAP -> CONV1-8 -> HSIGMOID)
-> CONCAT(SPLIT(1, 2) -> TANH, SPLIT(2, 2) -> SIGMOID, ID -> ELU, MAXPOOL3/1(pad=1) -> GELU)
-> SHUFFLE(4) -> SILU -> SWISH -> HSWISH -> LRELU(0.1) -> LRN
-> ADD(AVGPOOL3/2(ceil=true), POOL3/2(ceil=true)) -> MUL(ID, RELU)
-> FLATTEN -> FC-32 -> BN -> LN -> SCALE(2.0) -> DROPOUT(0.2) -> FC-10 -> SOFTMAX
"""
# (source, --input): LeNet-5; residual joins; squeeze-and-excitation (GATE) with
# hard-swish; Inception's CONCAT; DenseNet's CONCAT chains; every kind at once.
NETS = [("lenet5", None), ("resnet18", "3,32,32"), ("mobilenet_v3_small", "3,32,32"),
        ("googlenet_torchvision", "3,32,32"), ("densenet121", "3,32,32"), (EVERY_KIND, None)]
BIG = {"googlenet_torchvision", "densenet121"}   # graphs of 200-400 nodes: 10-60 s to trace
READBACK_BATCH = 5     # neither the exporters' traced batch (2) nor the command's check (3)
SEED = 0
ONNX_TOLERANCE = 1e-4  # relative to the largest |output|, as the command checks


def net_id(source: str) -> str:
    return "every_kind" if source == EVERY_KIND else source


@lru_cache(maxsize=None)
def reference(source: str, shape: str | None):
    """The network compiled here, as `cnndsl export --seed 0` compiles it: the same seed
    before the same compiler, so the same weights (test_safetensors checks they are)."""
    torch.manual_seed(SEED)
    input = tuple(int(v) for v in shape.split(",")) if shape else None
    return resolve(source).compile(input=input).eval()


def export(capsys, tmp_path, source, shape, suffix, *flags) -> Path:
    out = tmp_path / f"net{suffix}"
    argv = ["export", source, "-o", out, "--seed", SEED, *flags]
    if shape:
        argv += ["--input", shape]
    status, stdout, err = run_main(capsys, *argv)
    assert status == 0, err
    assert f"wrote {out}" in stdout
    return out


def traced(formats):
    """NETS × formats that trace the network (onnx, pt2, torchscript): slow on BIG graphs."""
    return [pytest.param(src, shape, fmt, id=f"{net_id(src)}-{fmt}",
                         marks=[pytest.mark.slow] if net_id(src) in BIG else [])
            for src, shape in NETS for fmt in formats]


@lru_cache(maxsize=None)
def input_batch(source: str, shape: str | None) -> torch.Tensor:
    analysis = resolve(source).analyze(input=tuple(int(v) for v in shape.split(",")) if shape else None)
    generator = torch.Generator().manual_seed(123)
    return torch.randn(READBACK_BATCH, *analysis.input_shape, generator=generator)


# --- each format, read back as its users read it ------------------------------------------

@pytest.mark.parametrize("source, shape, fmt", traced(["onnx"]))
def test_onnx_runs_in_onnxruntime_like_torch(capsys, tmp_path, source, shape, fmt):
    """onnxruntime's outputs on a batch of 5 (the batch dimension is free) equal torch's
    within 1e-4 of the largest output."""
    for package in ("onnx", "onnxscript"):
        pytest.importorskip(package)
    ort = pytest.importorskip("onnxruntime")
    out = export(capsys, tmp_path, source, shape, ".onnx", "--no-check")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (first,) = session.get_inputs()
    assert isinstance(first.shape[0], str)   # a named, free batch dimension
    x = input_batch(source, shape)
    (got,) = session.run(None, {first.name: x.numpy()})
    with torch.no_grad():
        expected = reference(source, shape)(x)
    difference = (torch.from_numpy(got) - expected).abs().max().item()
    assert difference <= ONNX_TOLERANCE * expected.abs().max().item(), difference


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")   # LRN's numel() == 0 test
@pytest.mark.parametrize("source, shape, fmt", traced(["pt2", "torchscript"]))
def test_pt2_and_torchscript_load_back_like_torch(capsys, tmp_path, source, shape, fmt):
    """torch.export.load / torch.jit.load: the same outputs as the compiled network (the
    same kernels run; measured bit for bit, asserted within float32 rounding)."""
    suffix = backend.FORMATS[fmt].suffix
    out = export(capsys, tmp_path, source, shape, suffix, "--no-check")
    x = input_batch(source, shape)
    with torch.no_grad():
        loaded = torch.export.load(out).module() if fmt == "pt2" else torch.jit.load(str(out))
        got, expected = loaded(x), reference(source, shape)(x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("source, shape", [pytest.param(s, i, id=net_id(s)) for s, i in NETS])
def test_safetensors_holds_the_state_dict_and_the_spec(capsys, tmp_path, source, shape):
    pytest.importorskip("safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = export(capsys, tmp_path, source, shape, ".safetensors")
    expected = reference(source, shape).state_dict()
    tensors = load_file(str(out))
    assert sorted(tensors) == sorted(expected)     # the file keeps its keys sorted
    assert all(torch.equal(tensors[k], v) for k, v in expected.items())
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    spec = resolve(source)
    assert meta["cnndsl.spec"] == spec.text and meta["cnndsl.name"] == spec.name
    wanted = [int(v) for v in shape.split(",")] if shape else list(spec.analyze().input_shape)
    assert json.loads(meta["cnndsl.input_shape"]) == wanted
    assert meta["cnndsl.weights"].startswith("fresh")


# The py file and the safetensors weights, run by a Python that cannot import cnndsl.
STANDALONE = textwrap.dedent("""\
    import importlib.util, json, sys
    sys.modules["cnndsl"] = None          # any `import cnndsl` in the file fails
    import torch
    from safetensors.torch import load_file
    results = {}
    for case in json.loads(sys.argv[1]):
        spec = importlib.util.spec_from_file_location("exported", case["py"])
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
        model = code.build()
        model.load_state_dict(load_file(case["weights"]), strict=True)
        x = torch.load(case["x"], weights_only=True)
        with torch.no_grad():
            torch.save(model.eval()(x), case["y"])
        results[case["py"]] = list(model.state_dict())
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """Every net of NETS exported to .py and .safetensors, and run in one subprocess."""
    pytest.importorskip("safetensors")
    folder = tmp_path_factory.mktemp("py")
    cases = {}
    for source, shape in NETS:
        name = net_id(source)
        case = {k: str(folder / f"{name}.{k}") for k in ("py", "x", "y")}
        case["weights"] = str(folder / f"{name}.safetensors")
        for out in (case["py"], case["weights"]):
            argv = ["export", source, "-o", out, "--seed", str(SEED), "--no-check"]
            assert main(argv + (["--input", shape] if shape else [])) == 0
        torch.save(input_batch(source, shape), case["x"])
        cases[name] = case
    done = subprocess.run([sys.executable, "-c", STANDALONE, json.dumps(list(cases.values()))],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    keys = json.loads(done.stdout.splitlines()[-1])
    return {name: (case, keys[case["py"]]) for name, case in cases.items()}


@pytest.mark.parametrize("source, shape", [pytest.param(s, i, id=net_id(s)) for s, i in NETS])
def test_py_file_rebuilds_the_network_exactly(standalone, source, shape):
    """The generated class, given the safetensors weights, has the GraphModule's
    state_dict keys and gives the same tensor, bit for bit (eval mode, float32, CPU)."""
    case, keys = standalone[net_id(source)]
    module = reference(source, shape)
    assert sorted(keys) == sorted(module.state_dict())
    with torch.no_grad():
        expected = module(input_batch(source, shape))
    assert torch.equal(torch.load(case["y"], weights_only=True), expected)


def test_py_file_is_plain_readable_python(standalone):
    source = Path(standalone["resnet18"][0]["py"]).read_text()
    tree = ast.parse(source)
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds[0] == "Expr" and set(kinds[1:]) == {"Import", "ImportFrom", "ClassDef", "FunctionDef"}
    assert "cnndsl" not in "".join(ast.unparse(node) for node in tree.body[1:])   # comments aside
    assert "        self.layer2.down1.add1.b2.conv1 = nn.Conv2d(in_channels=64, out_channels=128, " \
           "kernel_size=(1, 1), stride=2, padding=(0, 0), bias=False)" in source
    assert "        layer1_basic1_res1 = layer1_basic1_res1_bn2 + pool1" in source
    every_kind = Path(standalone["every_kind"][0]["py"]).read_text()
    assert "concat1 = torch.cat([concat1_b1_tanh1, concat1_b2_sigmoid1, concat1_b3_elu1, " \
           "concat1_b4_gelu1], 1)" in every_kind
    assert "gate1 = gate1_hsigmoid1 * res1" in every_kind
    for cls in ("FlattenLinear", "LayerNorm2d", "LayerScale", "ChannelSplit", "ChannelShuffle", "DropPath"):
        assert f"\nclass {cls}(" in every_kind


def test_docs_list_the_formats_of_the_table():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text()
    assert backend.markdown_table() in docs


def test_files_are_moved_into_place_together(tmp_path):
    """A writer's files (ONNX's external data beside a model past 2 GiB) all land beside
    FILE, and nothing of the temporary folder is left."""
    out = tmp_path / "big.onnx"
    backend._atomically(out, lambda path: (path.write_text("model"), Path(f"{path}.data").write_text("data")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert out.read_text() == "model"


def test_every_kind_is_exported():
    """EVERY_KIND holds every kind that builds a module and every join of the table, so a
    new kind is exported (and read back) in every format."""
    graph = resolve(EVERY_KIND).analyze().graph
    used = {graph.nodes[n]["kind"].name for n in graph}
    assert {name for name, kind in KINDS.items() if kind.build or kind.merge} <= used


# --- a trained checkpoint -----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of `cnndsl train` (8×8 digits, a few seconds), and its network rebuilt
    here from the checkpoint's own spec and weights."""
    folder = tmp_path_factory.mktemp("trained")
    assert main(["train", str(tiny_spec(folder)), "--limit", "300", "--out", str(folder / "run")]) == 0
    path = folder / "run" / "best.pt"
    state = checkpoint.load(path)
    spec = checkpoint.spec_of(state)
    module = spec.compile()
    module.load_state_dict(state["model"])
    return path, state, module.eval(), spec


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", list(backend.FORMATS))
def test_checkpoint_exports_its_trained_network(capsys, tmp_path, trained, fmt):
    path, state, module, spec = trained
    for package in backend.FORMATS[fmt].needs + backend.FORMATS[fmt].check_needs:
        pytest.importorskip(package)
    out = tmp_path / f"tiny{backend.FORMATS[fmt].suffix}"
    status, stdout, err = run_main(capsys, "export", path, "-o", out)
    assert status == 0, err
    assert f"weights: checkpoint {path}, epoch {state['epoch']}" in stdout
    mean = state["normalize"]["mean"].item()
    assert "inputs: subtract the training data's per-channel mean" in stdout and f"mean {mean:.6g}" in stdout
    assert "check: read back by" in stdout     # the command's own check passed
    x = torch.randn(READBACK_BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = module(x)
        got = _run_file(fmt, out, x, module, spec)
    if backend.FORMATS[fmt].exact:
        assert torch.equal(got, expected)
    else:
        assert (got - expected).abs().max() <= ONNX_TOLERANCE * expected.abs().max()
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
        assert json.loads(meta["cnndsl.normalize"])["std"] == state["normalize"]["std"].flatten().tolist()
        assert json.loads(meta["cnndsl.class_names"]) == state["class_names"]


def _run_file(fmt: str, out: Path, x, module, spec):
    """The written file's outputs, read as its users read it (the py file in-process:
    the subprocess test above shows it needs no cnndsl)."""
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    if fmt == "pt2":
        return torch.export.load(out).module()(x)
    if fmt == "torchscript":
        return torch.jit.load(str(out))(x)
    if fmt == "safetensors":
        from safetensors.torch import load_file
        torch.manual_seed(99)             # other initial weights, all replaced by the file's
        rebuilt = spec.compile()
        rebuilt.load_state_dict(load_file(str(out)), strict=True)
        return rebuilt.eval()(x)
    import importlib.util
    found = importlib.util.spec_from_file_location("exported_tiny", out)
    code = importlib.util.module_from_spec(found)
    found.loader.exec_module(code)
    model = code.build()
    model.load_state_dict(module.state_dict())
    return model.eval()(x)


def test_weights_from_a_state_dict_file(capsys, tmp_path):
    """--weights: a spec with a state_dict's weights (by name), exported as they are."""
    pytest.importorskip("safetensors")
    torch.manual_seed(7)
    donor = resolve("lenet5").compile()
    torch.save(donor.state_dict(), tmp_path / "w.pth")
    out = export(capsys, tmp_path, "lenet5", None, ".safetensors", "--weights", tmp_path / "w.pth")
    from safetensors.torch import load_file

    tensors = load_file(str(out))
    assert all(torch.equal(tensors[k], v) for k, v in donor.state_dict().items())


# --- the command line ---------------------------------------------------------------------

def fails(capsys, *argv) -> str:
    """The command's one-line diagnostic, with exit status 2 (or 1 for a spec's errors)."""
    status, _, err = run_main(capsys, "export", *argv)
    assert status in (1, 2) and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_format_from_the_suffix_or_from_to(capsys, tmp_path):
    out = export(capsys, tmp_path, "lenet5", None, ".py", "--to", "py")
    assert out.read_text().startswith('"""The network Lenet5, as plain PyTorch')
    assert "--to FORMAT" in run_and_help(capsys)


def run_and_help(capsys) -> str:
    with pytest.raises(SystemExit):
        run_main(capsys, "export", "--help")
    text = capsys.readouterr().out
    assert all(name in text and fmt.suffix in text for name, fmt in backend.FORMATS.items())
    return text


@pytest.mark.parametrize("argv, words", [
    (["--to", "onxx", "-o", "n.onnx"], "--to onxx: no such format — did you mean 'onnx'? (the formats: "
                                       "onnx, pt2, torchscript, safetensors, py)"),
    (["--to", "pt2", "-o", "n.onnx"], "-o n.onnx: pt2 files end in .pt2, not in '.onnx' (the suffix of onnx files)"),
    (["--to", "py", "-o", "net"], "-o net: py files end in .py"),
    (["-o", "n.bin"], "-o n.bin: give --to FORMAT (onnx, pt2, torchscript, safetensors, py), or a "
                      "file name ending in one of .onnx, .pt2, .torchscript, .safetensors, .py"),
])
def test_format_errors(capsys, argv, words):
    assert words in fails(capsys, "lenet5", *argv)


def test_corrupt_and_missing_checkpoints(capsys, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not a zip at all" * 10)
    assert "not a readable cnndsl checkpoint" in fails(capsys, tmp_path / "bad.pt", "-o", tmp_path / "n.py")
    assert "no such checkpoint" in fails(capsys, tmp_path / "nope.pt", "-o", tmp_path / "n.py")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "sd.pth")
    assert "not a cnndsl checkpoint (it holds conv1.weight)" in fails(capsys, tmp_path / "sd.pth", "-o", tmp_path / "n.py")


def test_checkpoint_refuses_spec_flags_and_never_overwrites_itself(capsys, tmp_path, trained):
    path = trained[0]
    assert "--input applies to a spec" in fails(capsys, path, "-o", tmp_path / "n.py", "--input", "1,16,16")
    copy = tmp_path / "model.py"          # any file not a spec is read as a checkpoint
    copy.write_bytes(path.read_bytes())
    assert f"-o {copy} is {copy}, exported from" in fails(capsys, copy, "-o", copy, "--overwrite")


def test_existing_file_needs_overwrite(capsys, tmp_path):
    (tmp_path / "n.py").write_text("mine")
    assert "already exists: add --overwrite" in fails(capsys, "lenet5", "-o", tmp_path / "n.py")
    (tmp_path / "d.py").mkdir()
    assert "-o {} is a folder".format(tmp_path / "d.py") in fails(capsys, "lenet5", "-o", tmp_path / "d.py")
    assert "does not exist" in fails(capsys, "lenet5", "-o", tmp_path / "no" / "n.py")
    assert (tmp_path / "n.py").read_text() == "mine"


@pytest.mark.parametrize("hidden, words", [
    ("onnxscript", "exporting to onnx needs the Python package onnxscript: pip install 'cnndsl[export]'"),
    ("onnxruntime", "checking the onnx file needs the Python package onnxruntime: pip install "
                    "'cnndsl[export]' (or skip the check: --no-check)"),
])
def test_missing_extra_is_one_line(capsys, tmp_path, monkeypatch, hidden, words):
    monkeypatch.setitem(sys.modules, hidden, None)   # `import hidden` raises ImportError
    assert words in fails(capsys, "lenet5", "-o", tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()


def test_safetensors_extra_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    assert "needs the Python package safetensors" in fails(capsys, "lenet5", "-o", tmp_path / "n.safetensors")


def test_a_check_that_fails_says_so(capsys, tmp_path, monkeypatch):
    """A file that computes something else (here: outputs off by 1e-3) fails the check."""
    fmt = backend.FORMATS["pt2"]
    off = dataclasses.replace(fmt, run=lambda net, path, x: fmt.run(net, path, x) + 1e-3)
    monkeypatch.setitem(backend.FORMATS, "pt2", off)
    err = fails(capsys, "lenet5", "-o", tmp_path / "n.pt2")
    assert "check failed" in err and "max abs difference 0.001" in err and "kept for inspection" in err


@pytest.mark.parametrize("label", ["class", "eval", "training"])
def test_layer_names_torch_cannot_hold(capsys, tmp_path, label):
    """The parser refuses them at the label (lang.parser.label_problem), before any export."""
    status, _, err = run_main(capsys, "export", f"INPUT(3, 8, 8) -> {label}: CONV3-8",
                              "-o", tmp_path / "n.py")
    assert status == 1 and f"error: '{label}' cannot be a label" in err
    assert not (tmp_path / "n.py").exists()


# --- nothing the spec says becomes code ---------------------------------------------------

HOSTILE = '''\
name: "evil\\r\\nimport os\\x00\\u2028\\"\\"\\"\\u0085 # -*- coding: latin-1 -*-"
description: '""" + __import__("os").system("echo pwned") + """'
net: |
  # """; __import__("os").system("echo pwned") \\ \t tab
  INPUT(1, 8, 8) -> pwned: FC-10
'''


def test_spec_text_only_in_comments(tmp_path):
    """The spec's name and text, whatever they hold (line breaks of every kind, NUL,
    quotes, a coding line), appear in comments only: the file's code is the network."""
    (tmp_path / "evil.yaml").write_text(HOSTILE, encoding="utf-8")
    spec = resolve(str(tmp_path / "evil.yaml"))
    assert "\r" in spec.name and "\x00" in spec.name and "\u2028" in spec.name
    net = backend.from_spec(spec)
    out = tmp_path / "evil.py"
    backend.write(net, backend.FORMATS["py"], out)
    source = out.read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert [type(n).__name__ for n in tree.body] == ["Expr", "Import", "ImportFrom", "ImportFrom",
                                                     "ClassDef", "ClassDef", "FunctionDef"]
    code = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]
    assert not any("pwned\")" in t.string or "system" in t.string for t in code)
    assert '# The spec evil\\r\\nimport os\\x00\\u2028"""\\x85 # -*- coding: latin-1 -*-:\n' in source
    assert '#   # """; __import__("os").system("echo pwned") \\ \\t tab\n' in source
    assert not any(c in source for c in "\r\x00\u2028\u0085")
    assert backend.check(net, backend.FORMATS["py"], out).equal


def test_names_that_are_no_identifiers_are_written_with_getattr(tmp_path):
    """torchvision-style parts (`layer1.0.conv1`) cannot come from the DSL, but the
    writer still gives them their own key: add_module and getattr."""
    calls = {"layer1.0.conv1": pysource._Call(torch.nn.Conv2d, "nn.Conv2d", (3, 4, 1), {}),
             "layer1.0.relu1": pysource._Call(torch.nn.ReLU, "nn.ReLU", (), {})}
    lines = pysource._init_lines(calls)
    assert lines == ['self.layer1 = nn.Module()',
                     "self.layer1.add_module('0', nn.Module())",
                     "getattr(self.layer1, '0').conv1 = nn.Conv2d(in_channels=3, out_channels=4, kernel_size=1)",
                     "getattr(self.layer1, '0').relu1 = nn.ReLU()"]
    body = "\n".join("        " + line for line in lines)
    (tmp_path / "m.py").write_text("from torch import nn\n\n\nclass M(nn.Module):\n"
                                   "    def __init__(self):\n        super().__init__()\n" + body + "\n")
    import importlib.util
    spec = importlib.util.spec_from_file_location("m_written", tmp_path / "m.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    assert list(code.M().state_dict()) == ["layer1.0.conv1.weight", "layer1.0.conv1.bias"]
