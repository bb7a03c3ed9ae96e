"""Weights from torchvision (and any other layout) into compiled specs, by graph order
(cnndsl/backends/weights.py): `cnndsl train --init-from torchvision:NAME`,
`Spec.compile(weights=...)`, `cnndsl features SPEC --weights ...`.

The proof is torchvision itself: for every zoo twin (tests/torchvision_twins.py), the
spec compiled with torchvision's weights computes torchvision's logits. torchvision's
weights are its own randomly initialised models (`weights=None`: nothing is downloaded),
saved where and as torchvision caches its downloads, with random batch-norm statistics so
that eval mode uses them.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import cnndsl
from cnndsl.backends import weights
from cnndsl.errors import CnnDslError
from cnndsl.training import checkpoint
from helpers import ROOT, run_main
from torchvision_twins import TWINS, torchvision_function

RESNET18_FILE = "resnet18-f37072fd.pth"   # torchvision's ResNet18_Weights.DEFAULT, as cached


def randomize_constants(model: nn.Module) -> None:
    """Fresh models hold constants that would hide a wrong mapping: batch norms are the
    identity in eval mode (mean 0, var 1, weight 1, bias 0), layer norms and zero biases
    too, and ConvNeXt's layer scale of 1e-6 all but removes its blocks. Give each constant
    tensor random values, so that copying it is tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
        for p in model.parameters():
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                value = p.flatten()[0].item()
                if value == 1:
                    p.uniform_(0.5, 1.5)
                elif value == 0:
                    p.normal_(0, 0.1)
                else:                    # a layer scale: large enough that its block counts
                    p.uniform_(0.05, 0.15)


def logits_and_unused(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """The model's eval-mode output, and the state_dict names of the modules it did not
    call (the training-only auxiliary classifiers)."""
    called = set()
    hooks = [m.register_forward_hook(lambda m, i, o: called.add(m)) for m in model.modules()]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    ran = {name for name, m in model.named_modules() if m in called}
    return y, {k for k in model.state_dict() if k.rpartition(".")[0] not in ran}


def cache_file(torch_home, name: str) -> os.PathLike:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


# --- every zoo twin computes torchvision's logits -------------------------------------


# Too big for a 2-core CI machine: 645 M parameters, about 8 GB and minutes at any input.
# Its params and MACs are still compared with torchvision's in test_zoo.py.
HEAVY = {"regnet_y_128gf"}


@pytest.mark.parametrize("spec_name", TWINS)
def test_twin_with_torchvision_weights_computes_torchvision_logits(spec_name, tmp_path, monkeypatch, caplog):
    tv_models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    if spec_name in HEAVY and not os.environ.get("CNNDSL_HEAVY_TESTS"):
        pytest.skip(f"{spec_name} needs about 8 GB and minutes on a CPU: set CNNDSL_HEAVY_TESTS=1")
    fn = torchvision_function(spec_name)
    torch.manual_seed(0)
    extra = {"aux_logits": True, "init_weights": True} if fn in ("googlenet", "inception_v3") else {}
    reference = getattr(tv_models, fn)(weights=None, **extra).eval()
    randomize_constants(reference)
    # Where and as torchvision caches its DEFAULT weights' download.
    file_name = tv_models.get_model_weights(fn).DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(reference.state_dict(), cache_file(tmp_path, file_name))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    spec = cnndsl.resolve(spec_name)
    with caplog.at_level(logging.INFO, logger="cnndsl"):
        model = spec.compile(weights=f"torchvision:{fn}").eval()
    x = torch.randn(2, *spec.analyze().input_shape)
    expected, unused = logits_and_unused(reference, x)
    with torch.no_grad():
        got = model(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4

    total = len(model.state_dict())
    line = caplog.records[-1].getMessage()
    assert f"mapped {total} of {total} tensors by graph order" in line, line
    assert f"; {len(unused)} left unused" in line, line
    assert weights.map_by_graph_order(reference.state_dict(), model).unused == \
        [k for k in reference.state_dict() if k in unused]
    assert bool(unused) == ("aux_logits" in extra)   # only auxiliary classifiers are extra


# --- a torchvision-like net in miniature: the CLI, end to end -------------------------


class Block(nn.Module):
    """torchvision's BasicBlock, one size."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """torchvision's ResNet layout shrunk to the digits' 1×8×8, with an auxiliary head that
    eval mode never calls, registered before `fc` and of the same shape as it (as
    GoogLeNet's `aux1.fc2` is)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8))
        self.aux = nn.Linear(8, 10)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


TINY_RESNET = """\
basic(c) = RES(CONV3-c -> BN -> RELU -> CONV3-c -> BN) -> RELU
INPUT(1, 8, 8) -> CONV3-8 -> BN -> RELU -> layer1: basic(8) -> GAP -> FC-10
"""


@pytest.fixture()
def tiny(tmp_path):
    """A TinyResNet with random batch norms, its state_dict in tiny.pth, and its spec."""
    torch.manual_seed(1)
    net = TinyResNet().eval()
    randomize_constants(net)
    torch.save(net.state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "tiny.cnn").write_text(TINY_RESNET)
    return net, tmp_path / "tiny.pth", tmp_path / "tiny.cnn"


def test_a_foreign_state_dict_is_mapped_by_graph_order(tiny):
    net, pth, spec = tiny
    model = cnndsl.load(spec).compile(weights=str(pth)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert (model(x) - net(x)).abs().max().item() <= 1e-5
    line = weights.load(model, str(pth))
    assert line == (f"{pth}: mapped 20 of 20 tensors by graph order (e.g. layer1.0.conv1.weight → "
                    "layer1.res1.conv1.weight); 2 left unused (aux.weight, aux.bias)")


def test_a_new_head_keeps_its_initial_weights(tiny):
    """The notes' transfer learning: the pretrained layers, and a new classifier for 4
    classes where the file's has 10; nothing else may be left out."""
    net, pth, _ = tiny
    spec = cnndsl.parse(TINY_RESNET.replace("FC-10", "FC-4"))
    model = spec.compile()
    initial = model.fc1.weight.clone()
    line = weights.load(model, str(pth))
    assert line.endswith("; fc1 keeps its initial weights: a new head of 4 outputs where the "
                         "file's fc has 10; 4 left unused (aux.weight, aux.bias, fc.weight, … 1 more)")
    assert "mapped 18 of 20 tensors" in line
    assert torch.equal(model.fc1.weight, initial)
    assert torch.equal(model.get_submodule("layer1.res1.conv2").weight, net.layer1[0].conv2.weight)
    other_stem = spec.text.replace("-> CONV3-8 -> BN", "-> CONV5-8 -> BN")
    with pytest.raises(CnnDslError, match=r"3 of the spec's 20 tensors have no match by graph "
                                          r"order \(first: conv1.weight \(8, 1, 5, 5\), fc1.weight"):
        weights.load(cnndsl.parse(other_stem).compile(), str(pth))


def test_train_init_from_torchvision_name_and_freeze(tiny, tmp_path, monkeypatch, capsys):
    """`--init-from torchvision:resnet18` reads torchvision's cache (here: the tiny net's
    weights under resnet18's file name); the frozen layers keep the file's weights."""
    net, pth, spec = tiny
    cache_file(tmp_path / "home", RESNET18_FILE).write_bytes(pth.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    status, out, err = run_main(capsys, "train", spec, "--init-from", "torchvision:resnet18",
                                "--freeze", "layer1", "--epochs", 1, "--limit", 200,
                                "--out", tmp_path / "run")
    assert status == 0, err
    assert re.search(r"init-from torchvision:resnet18 \(.*resnet18-f37072fd\.pth\): mapped 20 of 20 "
                     r"tensors by graph order .*; 2 left unused \(aux\.weight, aux\.bias\)", out), out
    trained = checkpoint.load(tmp_path / "run" / "last.pt")["model"]
    assert torch.equal(trained["layer1.res1.conv2.weight"], net.layer1[0].conv2.weight)
    assert torch.equal(trained["conv1.weight"], net.conv1.weight)
    assert not torch.equal(trained["fc1.weight"], net.fc.weight)


def test_features_of_a_spec_with_foreign_weights(tiny, tmp_path, capsys):
    """The notes' pretrained net as a fixed feature extractor: `features SPEC --weights W`
    maps W as --init-from does and writes GAP's activations for every split."""
    net, pth, spec = tiny
    out = tmp_path / "f.pt"
    status, text, err = run_main(capsys, "features", spec, "--weights", pth, "--layer", "gap1",
                                 "--data", "synthetic:60", "--out", out)
    assert status == 0, err
    assert "mapped 20 of 20 tensors by graph order" in text and f"wrote {out}: layer gap1" in text
    f = torch.load(out, weights_only=True)
    assert f["train_x"].shape[1:] == (8, 1, 1) and len(f["train_x"]) + len(f["val_x"]) + len(f["test_x"]) == 60


def test_our_checkpoints_still_load_by_name_and_partly(tiny, tmp_path):
    """A state_dict with the spec's own names loads by name, and partly if need be: the
    --init-from of cnndsl's own checkpoints."""
    _, _, spec = tiny
    model = cnndsl.load(spec).compile()
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc1.")}
    torch.save(own, tmp_path / "own.pt")
    line = weights.load(cnndsl.load(spec).compile(), str(tmp_path / "own.pt"))
    assert line == f"{tmp_path / 'own.pt'}: loaded 18 of 20 tensors (0 in the file did not match by name and shape)"


def test_a_linear_fits_a_one_by_one_conv_and_counters_are_optional():
    """Trailing 1-dims may differ (a Linear's (out, in) onto a 1×1 conv's (out, in, 1, 1),
    as ConvNeXt's channel-wise Linear layers are 1×1 convs); a file without BatchNorm's
    num_batches_tracked (torchvision's older files) maps."""
    conv, bn, linear = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Linear(4, 6)
    net = nn.ModuleDict({"conv": conv, "bn": bn, "pointwise": linear}).eval()
    randomize_constants(net)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = cnndsl.parse("INPUT(3, 5, 5) -> CONV3-4 -> BN -> CONV1-6(bias=true)").compile().eval()
    mapping = weights.map_by_graph_order(state, model)
    assert mapping.missing == [] and mapping.unused == [] and mapping.counters_kept == 1
    assert mapping.reshaped == [("pointwise.weight", (6, 4), (6, 4, 1, 1))]
    assert "1 reshaped, differing only in trailing 1-dims (e.g. pointwise.weight (6, 4) → " \
        "(6, 4, 1, 1))" in mapping.summary()
    weights._copy(model, state, mapping.pairs)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():   # the Linear applied at every pixel: channels last, and back
        expected = linear(bn(conv(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert (model(x) - expected).abs().max().item() <= 1e-5


def test_torchvision_cache_follows_torch_home(tmp_path, monkeypatch):
    """torch.hub's rule: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache_file(tmp_path / "xdg" / "torch", RESNET18_FILE).write_bytes(b"")
    assert weights.torchvision_file("resnet18") == tmp_path / "xdg/torch/hub/checkpoints" / RESNET18_FILE


# --- bad input: one line, no traceback, under a memory limit --------------------------

MARGIN = 1 << 30   # address space allowed beyond what the imports map

# In a fresh Python: import torch and cnndsl (0.7 GiB of address space with a CPU torch,
# 3 GiB with a CUDA one), then limit the address space to MARGIN more, then run
# `cnndsl ARGV` for each ARGV as the command line does; one JSON line per run: its exit
# status and stderr ("Traceback" if an exception escaped).
CHILD = """\
import contextlib, io, json, os, resource, sys, traceback
sys.path.insert(0, ROOT)
import torch, torch.fx, cnndsl.cli, cnndsl.backends.weights
try:
    import torchvision.models
except Exception:
    pass
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + MARGIN, size + MARGIN))
for argv, env in RUNS:
    os.environ.update(env)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cnndsl.cli.main(argv)
    except BaseException:
        status, err = -1, io.StringIO("Traceback " + traceback.format_exc())
    print(json.dumps([status, err.getvalue()]), flush=True)
"""


def limited_cli(*runs) -> list[tuple[int, str]]:
    """(exit status, stderr) of each `(argv, env)` run, in one child under the limit."""
    plain = [([str(a) for a in argv], env) for argv, env in runs]
    code = f"ROOT, MARGIN, RUNS = {str(ROOT)!r}, {MARGIN}, {plain!r}\n" + CHILD
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return [tuple(json.loads(line)) for line in r.stdout.splitlines()]


def one_line_error(result: tuple[int, str], *words: str) -> str:
    status, err = result
    assert "Traceback" not in err and "MemoryError" not in err, err[-2000:]
    assert status == 2, (status, err[-2000:])
    assert err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def test_bad_weights_are_one_line_errors(tiny, tmp_path):
    """A file that is no state_dict, a pickled module (never unpickled), a torchvision
    name that is not cached or is no name at all, and (with torchvision) a misspelt one."""
    _, _, spec = tiny
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")

    def train(source, env=None):
        return (["train", spec, "--init-from", source, "--epochs", 1, "--limit", 100,
                 "--out", tmp_path / "run"], env or {})

    runs = [train(tmp_path / "list.pth"), train(tmp_path / "module.pth"),
            train("torchvision:resnet50", {"TORCH_HOME": str(tmp_path / "empty")}),
            train("torchvision:../x")]
    has_torchvision = importlib.util.find_spec("torchvision") is not None
    if has_torchvision:   # without it, names are not checked: the cache is searched
        runs.append(train("torchvision:resnet5o"))
    results = limited_cli(*runs)
    one_line_error(results[0], "list.pth: holds no weights", "it holds a list")
    one_line_error(results[1], "module.pth: not a readable checkpoint")
    err = one_line_error(results[2], "torchvision:resnet50: no cached weights in",
                         str(tmp_path / "empty" / "hub" / "checkpoints"),
                         "torchvision.models.resnet50(weights='DEFAULT')", "give the path of a .pth file")
    assert len(err) < 600
    one_line_error(results[3], "torchvision:NAME takes the name of a torchvision model, such as "
                               "resnet50; '../x' is not one")
    if has_torchvision:
        one_line_error(results[4], "torchvision has no model 'resnet5o' — did you mean 'resnet50'?")


def test_resnet18_weights_do_not_fit_resnet50(tmp_path, monkeypatch):
    tv_models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.save(tv_models.resnet18(weights=None).state_dict(), cache_file(tmp_path, "resnet50-11ad3fa6.pth"))
    model = cnndsl.resolve("resnet50").compile()
    with pytest.raises(CnnDslError) as e:
        weights.load(model, "torchvision:resnet50")
    message = e.value.message
    # 320: the tensors of torchvision's resnet50; resnet18 has no 1×1 conv in layer1.
    assert re.match(r"torchvision:resnet50 \(.*resnet50-11ad3fa6\.pth\): \d+ of the spec's 320 "
                    r"tensors have no match by graph order", message), message
    assert "(first: layer1.bottle1.add1.b1.conv1.weight (64, 64, 1, 1)," in message, message
    assert "these are not this network's weights" in message
    [result] = limited_cli((["train", "resnet50", "--init-from", "torchvision:resnet50", "--data",
                             "synthetic:20", "--epochs", 1, "--out", tmp_path / "run"],
                            {"TORCH_HOME": str(tmp_path)}))
    one_line_error(result, "error: torchvision:resnet50 (", "of the spec's 320 tensors have no match")
