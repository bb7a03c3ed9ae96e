"""The model zoo (`specs/`): every spec parses, analyses cleanly, compiles to a torch
module with the analyser's parameter count and output shape, and matches the published
figures of its source; every torchvision twin (tests/torchvision_twins.py) equals
torchvision's own model in parameters and MACs. Each golden number names where it comes
from."""
import contextlib
import functools
import json
import re
from pathlib import Path

import pytest

import cnndsl
from helpers import SPECS_DIR, run_main
from torchvision_twins import TWINS, torchvision_function

SPECS = sorted(p for p in SPECS_DIR.iterdir() if p.suffix in (".yaml", ".yml", ".cnn"))
TRAIN_KEYS = {"epochs", "batch_size", "optimizer", "schedule", "augment", "label_smoothing",
              "init", "data", "val_fraction", "seed"}

# Above either bound a spec's module is built on PyTorch's "meta" device (parameters
# with shapes but no storage) and run there as a shape-only forward: the parameter
# count is still checked exactly, but no 500 MB of weights is allocated and no
# 15-GMAC forward pass is computed, which keeps this file well under a minute.
BIG_PARAMS, BIG_MACS = 50_000_000, 2_000_000_000


def ids(paths):
    return [p.stem for p in paths]


_analyses = {}


def analyze(path: Path):
    if path not in _analyses:
        _analyses[path] = cnndsl.load(path).analyze()
    return _analyses[path]


def totals(name: str) -> dict:
    return analyze(SPECS_DIR / f"{name}.yaml").totals()


def shapes(name: str) -> dict:
    return {layer["name"]: tuple(layer["output"]) for layer in analyze(SPECS_DIR / f"{name}.yaml").layers()}


# --- every spec ---------------------------------------------------------------------------

def test_the_zoo_is_complete():
    # Issue 3: every network of the lecture notes.
    expected = {"cifar10_notes", "lenet5", "alexnet", "alexnet_torchvision", "zfnet",
                "vgg11", "vgg11_lrn", "vgg13", "vgg16_conv1", "vgg16", "vgg19", "vgg16_bn",
                "googlenet", "googlenet_torchvision", "resnet18", "resnet34", "resnet50",
                "resnet101", "resnet152", "resnet_block_naive", "resnet_block_bottleneck",
                "allconv", "vgg16_fc_as_conv"}
    assert expected <= set(ids(SPECS))
    # Issue 9: torchvision's convolutional classification families, each a twin of
    # torchvision's model (vit, swin, maxvit need attention: not yet).
    families = {"vgg11_bn", "vgg13_bn", "vgg19_bn", "resnext50_32x4d", "resnext101_32x8d",
                "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "densenet121",
                "densenet161", "densenet169", "densenet201", "squeezenet1_0", "squeezenet1_1",
                "inception_v3", "mobilenet_v2", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0",
                "mnasnet1_3", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf",
                "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf", "regnet_x_32gf",
                "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s",
                "regnet_y_400mf", "convnext_tiny", "shufflenet_v2_x1_0"}
    assert families <= set(TWINS)


@pytest.mark.parametrize("path", SPECS, ids=ids(SPECS))
def test_spec_analyses(path):
    spec = cnndsl.load(path)
    assert spec.name == path.stem
    assert spec.description.strip(), "a zoo spec says what it is"
    assert re.search(r"\b(19|20)\d\d\b|notes", spec.description), "and cites its source"
    assert spec.input is not None
    analysis = analyze(path)
    assert analysis.ok, [d.format() for d in analysis.diagnostics]
    assert all(d.severity == "warning" for d in analysis.diagnostics)
    assert analysis.totals()["params"] > 0


@pytest.mark.parametrize("path", SPECS, ids=ids(SPECS))
def test_spec_train_section(path):
    train = cnndsl.load(path).train
    assert train, "every zoo spec says how to train it"
    assert set(train) <= TRAIN_KEYS, set(train) - TRAIN_KEYS
    assert isinstance(train["epochs"], int) and isinstance(train["batch_size"], int)
    assert train["optimizer"]["name"] in ("sgd", "adam", "adamw")
    assert train["optimizer"]["lr"] > 0


@pytest.mark.parametrize("path", SPECS, ids=ids(SPECS))
def test_spec_train_section_is_accepted_by_cnndsl_train(path):
    pytest.importorskip("torch")
    train = pytest.importorskip("cnndsl.training.settings")
    config = train.make_config(cnndsl.load(path))  # raises CnnDslError on a bad setting
    assert config.epochs == cnndsl.load(path).train["epochs"]
    # No zoo spec falls back to the digits by accident: it names its data set.
    assert config.data == cnndsl.load(path).train["data"]


def _compile_works() -> bool:
    if not hasattr(cnndsl.Spec, "compile"):
        return False
    try:
        cnndsl.parse("INPUT(1, 4, 4) -> CONV3-2 -> FC-3").compile()
    except (ImportError, NotImplementedError):
        return False
    return True


def _is_big(path) -> bool:
    t = analyze(path).totals()
    return t["params"] > BIG_PARAMS or t["macs"] > BIG_MACS


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if _is_big(p) else p
                                  for p in SPECS], ids=ids(SPECS))
def test_spec_compiles(path):
    torch = pytest.importorskip("torch")
    if not _compile_works():
        pytest.skip("spec.compile() is not available yet")
    spec, analysis = cnndsl.load(path), analyze(path)
    big = _is_big(path)
    # Big nets: built and run on the meta device (see BIG_PARAMS): exact parameter
    # count and a shape-only forward pass, without weights or arithmetic.
    device = torch.device("meta" if big else "cpu")
    with device:
        model = spec.compile()
    assert sum(p.numel() for p in model.parameters()) == analysis.totals()["params"]
    model.eval()
    with torch.no_grad():
        y = model(torch.zeros((1,) + spec.input.shape, device=device))
    assert tuple(y.shape) == (1,) + analysis.output_shape


# --- torchvision's own models ---------------------------------------------------------------

def test_every_twin_is_a_zoo_spec():
    # The README's ✓: each name in TWINS is a spec here, named after torchvision's function.
    assert set(TWINS) <= set(ids(SPECS))
    assert len(set(map(torchvision_function, TWINS))) == len(TWINS)


# GoogLeNet's aux1, aux2 and Inception-v3's AuxLogits are classifiers that run only in
# training mode; the specs are the eval-mode networks, so their parameters are left out
# (they never run in the eval-mode forward pass that counts the MACs).
AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


@contextlib.contextmanager
def parameters_on_meta(torch):
    """Every parameter and buffer a module registers goes to the meta device (a shape, no
    storage), as it is registered: a 100-million-parameter model costs no memory, and its
    initialisation no time. Not `with torch.device("meta")`: torchvision's RegNet works out
    its stage widths with tensors and reads them back (`.tolist()`), which meta tensors cannot."""
    module = torch.nn.Module
    register_parameter, register_buffer = module.register_parameter, module.register_buffer

    def parameter_on_meta(self, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer_on_meta(self, name, tensor, persistent=True):
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    module.register_parameter, module.register_buffer = parameter_on_meta, buffer_on_meta
    try:
        yield
    finally:
        module.register_parameter, module.register_buffer = register_parameter, register_buffer


def conv_linear_macs(torch, module, output) -> int:
    """torchvision's "GFLOPS" convention: output elements × (in channels / groups) × kh × kw
    for a conv, in × out features for a linear layer (per image)."""
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * module.in_channels // module.groups * kh * kw
    return output.numel() * module.in_features   # at every position (ConvNeXt); in×out on a vector


@functools.cache
def torchvision_counts(function: str, input_shape: tuple) -> tuple[int, int]:
    """(parameters, conv+linear MACs) of `torchvision.models.<function>(weights=None,
    num_classes=1000)`, built on the meta device and run once in eval mode on a
    1×C×H×W input, the MACs summed by forward hooks."""
    torchvision = pytest.importorskip(
        "torchvision", reason="torchvision is not installed: each torchvision twin of the zoo "
                              "is compared with torchvision's own model")
    import torch

    aux = AUX_HEADS.get(function, ())
    # init_weights=False: GoogLeNet's and Inception's truncated-normal init is slow, and
    # leaving the argument out warns that its default will change.
    extra = {"init_weights": False} if aux else {}
    with parameters_on_meta(torch):
        model = getattr(torchvision.models, function)(weights=None, num_classes=1000, **extra)
    params = sum(p.numel() for name, p in model.named_parameters() if name.split(".")[0] not in aux)
    macs = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(lambda m, i, out: macs.append(conv_linear_macs(torch, m, out)))
    model.eval()
    with torch.no_grad():
        model(torch.empty((1,) + input_shape, device="meta"))
    return params, sum(macs)


@pytest.mark.parametrize("name", TWINS, ids=[f"torchvision-{n}" for n in TWINS])
def test_twin_equals_torchvision(name):
    spec = cnndsl.load(SPECS_DIR / f"{name}.yaml")
    params, macs = torchvision_counts(torchvision_function(name), tuple(spec.input.shape))
    assert totals(name)["params"] == params
    assert totals(name)["macs"] == macs


def test_inception_v3_less_its_aux_head():
    # torchvision's published count, Inception_V3_Weights' num_params, includes AuxLogits:
    # 27,161,264 = the eval network + the aux head (1×1 conv to 128, 5×5 conv to 768, each
    # with BN, and an FC-1000 on 768: 98,304 + 256 + 2,457,600 + 1,536 + 769,000).
    assert totals("inception_v3")["params"] + 3_326_696 == 27_161_264


@pytest.mark.parametrize("name", TWINS, ids=[f"gflops-{n}" for n in TWINS])
def test_torchvision_gflops_column(name):
    # torchvision's "GFLOPS" (multiply-accumulates) as its DEFAULT weights' metadata
    # publishes them (`_ops`, 3 decimals), each on its weights' own input size.
    torchvision = pytest.importorskip(
        "torchvision", reason="torchvision is not installed: its published GFLOPS are read from it")
    meta = torchvision.models.get_model_weights(torchvision_function(name)).DEFAULT.meta
    assert round(totals(name)["macs"] / 1e9, 3) == meta["_ops"]


# --- published figures: the papers and the notes --------------------------------------------

@pytest.mark.parametrize("name, millions", [("vgg11", 133), ("vgg11_lrn", 133), ("vgg13", 133),
                                            ("vgg16_conv1", 134), ("vgg16", 138), ("vgg19", 144)])
def test_vgg_paper_table2(name, millions):
    # Simonyan & Zisserman 2015, Table 2: "Number of parameters (in millions)" of
    # configurations A, A-LRN, B, C, D, E (also in the lecture notes).
    assert round(totals(name)["params"] / 1e6) == millions


def test_alexnet_paper():
    # Krizhevsky et al. 2012 with the two-GPU split as groups=2: 60,965,224 parameters
    # ("60 million parameters", the paper's abstract); the notes' conv1 is 55×55×96.
    assert totals("alexnet")["params"] == 60_965_224
    s = shapes("alexnet")
    assert s["conv1"] == (96, 55, 55)
    assert s["pool1"] == (96, 27, 27) and s["pool2"] == (256, 13, 13) and s["pool3"] == (256, 6, 6)


def test_lenet5_paper():
    # LeCun et al. 1998, Figure 2: C1 6@28×28, S2 6@14×14, C3 16@10×10, S4 16@5×5,
    # C5 120, F6 84; with full C3 connections and an FC-10 output, the classic 61,706.
    s = shapes("lenet5")
    assert [s[k] for k in ("c1", "s2", "c3", "s4", "c5", "f6", "output")] == [
        (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120, 1, 1), (84,), (10,)]
    assert totals("lenet5")["params"] == 61_706


def test_cifar10_notes_volumes():
    # The notes' "Example Architecture for CIFAR-10": [32x32x3] -> [32x32x12] ->
    # [16x16x12] -> [1x1x10].
    s = shapes("cifar10_notes")
    assert [s[k] for k in ("input", "conv1", "relu1", "pool1", "fc1")] == [
        (3, 32, 32), (12, 32, 32), (12, 32, 32), (12, 16, 16), (10,)]


def test_zfnet_paper_sizes():
    # Zeiler & Fergus 2013, Figure 3: 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6;
    # the notes' variant has 512, 1024, 512 filters in conv3-5.
    s = shapes("zfnet")
    assert [s[k] for k in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool3")] == [
        (96, 110, 110), (96, 55, 55), (256, 26, 26), (256, 13, 13),
        (512, 13, 13), (1024, 13, 13), (512, 13, 13), (512, 6, 6)]


def test_googlenet_paper_table1():
    # Szegedy et al. 2015, Table 1, "output size" of each inception module.
    s = shapes("googlenet")
    assert [s[f"inception{m}.concat1"] for m in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")] == [
        (256, 28, 28), (480, 28, 28), (512, 14, 14), (512, 14, 14), (512, 14, 14),
        (528, 14, 14), (832, 14, 14), (832, 7, 7), (1024, 7, 7)]
    assert s["avgpool1"] == (1024, 1, 1)
    # Its parameters are about 7 million (the paper: 12× fewer than AlexNet's 60M).
    assert 6.5e6 < totals("googlenet")["params"] < 7.5e6


def test_allconv_paper():
    # Springenberg et al. 2015: All-CNN-C has "≈ 1.3 M" parameters (Table 3) and ends
    # with global averaging over 6×6 maps of 10 class scores.
    assert 1.3e6 <= totals("allconv")["params"] < 1.4e6
    s = shapes("allconv")
    assert s["conv7"] == (192, 6, 6) and s["conv9"] == (10, 6, 6)
    assert analyze(SPECS_DIR / "allconv.yaml").output_shape == (10,)


def test_vgg16_fc_as_conv():
    # The notes' "Converting FC layers to CONV layers": the same parameters as VGG-16,
    # and on a 384×384 image a 6×6 map of class scores.
    assert totals("vgg16_fc_as_conv")["params"] == totals("vgg16")["params"] == 138_357_544
    assert analyze(SPECS_DIR / "vgg16_fc_as_conv.yaml").output_shape == (1000, 6, 6)


def test_resnet_blocks_notes():
    # He et al. 2016, Figure 5 (the notes' naive and bottleneck blocks): a bottleneck on
    # 256-d costs about what two 3×3 convs cost on 64-d.
    def block(name, scope):
        return sum(l["params"] for l in analyze(SPECS_DIR / f"{name}.yaml").layers()
                   if l["name"].startswith(scope))
    naive, bottleneck = block("resnet_block_naive", "naive1."), block("resnet_block_bottleneck", "bottleneck1.")
    assert naive == 2 * (3 * 3 * 64 * 64 + 2 * 64)
    assert bottleneck == 256 * 64 + 3 * 3 * 64 * 64 + 64 * 256 + 2 * (64 + 64 + 256)
    assert 0.9 < bottleneck / naive < 1.0


def test_resnet152_cheaper_than_vgg():
    # The notes (after He et al.): "ResNet-152 (11.3 billion FLOPs) has lower complexity
    # than VGG-16/19 nets (15.3/19.6 billion FLOPs)".
    assert totals("resnet152")["macs"] < totals("vgg16")["macs"] < totals("vgg19")["macs"]


# --- the command line -----------------------------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str]:
    status, out, _ = run_main(capsys, *argv)
    return status, out


def test_cnndsl_zoo_lists_every_spec(capsys):
    status, out = run_cli(capsys, "zoo", "--json")
    assert status == 0
    listed = {row["name"]: row for row in map(json.loads, out.splitlines())}
    assert set(listed) == set(ids(SPECS))
    for path in SPECS:
        assert listed[path.stem]["params"] == analyze(path).totals()["params"]
        assert listed[path.stem]["macs"] == analyze(path).totals()["macs"]
    assert listed["resnet50"]["input"] == "3×224×224"


def test_analyze_resolves_a_zoo_name(capsys):
    status, out = run_cli(capsys, "analyze", "vgg16", "--json")
    assert status == 0
    result = json.loads(out)
    assert result["name"] == "vgg16"
    assert result["totals"]["params"] == 138_357_544
    assert result["output"] == [1000]


# --- the zoo's documentation -------------------------------------------------------------

def zoo_table() -> dict:
    """docs/zoo.md's table: spec name → (input, params, MACs, twin?)."""
    text = (SPECS_DIR.parent / "docs" / "zoo.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| (\d+)×(\d+)×(\d+) \| ([\d,]+) \| ([\d,]+) \| (.*) \|$",
                      text, re.M)
    return {name: ((int(c), int(h), int(w)), int(p.replace(",", "")), int(m.replace(",", "")),
                   "✓" in source)
            for name, c, h, w, p, m, source in rows}


def test_zoo_doc_lists_every_spec_as_analysed():
    # docs/zoo.md is written by hand: each row must say what the analysis says, and its ✓
    # exactly the twins that test_twin_equals_torchvision and test_weights.py check.
    table = zoo_table()
    assert sorted(table) == ids(SPECS)
    for name, (shape, params, macs, twin) in table.items():
        got = totals(name)
        assert (shape, params, macs) == (analyze(SPECS_DIR / f"{name}.yaml").input_shape,
                                         got["params"], got["macs"]), name
        assert twin == (name in TWINS), name
