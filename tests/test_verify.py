"""`cnndsl analyze --verify` and the training FLOPs, against torch's own count:
`torch.utils.flop_counter.FlopCounterMode` run over a forward and a backward pass.

FlopCounterMode counts only convolutions and matrix products (2 per multiply-accumulate,
their biases left out); the rest of the analysis' FLOPs (activations, BN, pools, joins,
biases) it does not count, and these tests do not compare (docs/analyze.md says so).
The zoo nets run at small inputs to stay fast; the meta device does no arithmetic.
"""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

import cnndsl  # noqa: E402
from cnndsl.analysis import passes  # noqa: E402
from helpers import run_main as run, run_without_torch  # noqa: E402

ZOO = [("resnet18", (3, 64, 64)), ("mobilenet_v2", (3, 64, 64)),
       ("googlenet_torchvision", (3, 64, 64)), ("inception_v3", (3, 96, 96)),
       ("densenet121", (3, 64, 64)), ("efficientnet_b0", (3, 64, 64)),
       ("convnext_tiny", (3, 64, 64)), ("shufflenet_v2_x0_5", (3, 64, 64))]   # LN, SCALE; SPLIT, SHUFFLE


@pytest.mark.parametrize("name, shape", ZOO, ids=[name for name, _ in ZOO])
def test_verify_agrees_on_the_zoo(name, shape):
    from cnndsl.analysis.verify import verify

    analysis = cnndsl.load(name).analyze(input=shape)
    result = verify(analysis)
    assert result.agrees, result.summary_lines()
    assert result.device == "meta" and result.outside == 0
    kinds = result.by_kind()
    assert set(kinds) == {"CONV", "FC"}
    assert kinds["CONV"].counted_forward == 2 * sum(
        r["macs"] for r in analysis.layers() if r["kind"] == "CONV")


def _counted_by_torch(analysis) -> tuple[int, int]:
    """FlopCounterMode's forward and backward totals for one image, on the CPU, from
    the compiled network (not verify.py's meta-device run)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cnndsl.backends.torch_fx import build_module

    torch.manual_seed(0)
    model = build_module(analysis.graph, analysis.name).eval()   # eval: BN on one image
    x = torch.randn(1, *analysis.input_shape)
    with FlopCounterMode(display=False) as counter:
        y = model(x)
        forward = counter.get_total_flops()
        y.sum().backward()
    return forward, counter.get_total_flops() - forward


@pytest.mark.parametrize("name, shape", [("resnet18", (3, 32, 32)), ("vgg11_bn", (3, 32, 32))])
def test_training_flops_against_flop_counter_mode(name, shape):
    """The convention, stated for nets whose first layer is a CONV fed by the image and
    whose convolutions have no groups: FlopCounterMode's forward is 2·MACs, its backward
    2·MACs (weights) + 2·MACs (inputs) for every CONV and FC but the first, which has no
    input gradient; and training FLOPs = counted + twice the FLOPs it does not count."""
    analysis = cnndsl.load(name).analyze(input=shape)
    layers, totals = analysis.layers(), analysis.totals()
    first = layers[1]
    assert first["kind"] == "CONV" and first["inputs"] == ["input"]
    forward, backward = _counted_by_torch(analysis)
    assert forward == 2 * totals["macs"]
    assert backward == 4 * totals["macs"] - 2 * first["macs"]
    not_counted = totals["flops"] - 2 * totals["macs"]   # every layer but INPUT has a backward
    assert totals["training_flops"] == forward + backward + 2 * not_counted


def test_a_wrong_static_count_is_reported():
    from cnndsl.analysis.verify import verify

    analysis = cnndsl.load("resnet18").analyze(input=(3, 32, 32))
    analysis.graph.nodes["layer2.down1.add1.b2.conv1"]["macs"] += 5   # the projection shortcut
    result = verify(analysis)
    assert not result.agrees
    [wrong] = result.differences
    assert wrong.name == "layer2.down1.add1.b2.conv1"
    # 2·MACs is 10 too many forward; backward, the FLOPs other than 2·MACs read 10 fewer.
    assert wrong.static_forward - wrong.counted_forward == 10
    assert wrong.static_backward - wrong.counted_backward == 10
    assert result.by_kind()["CONV"].difference == -20
    assert result.summary_lines()[-1] == "verify: 1 layer differs from FlopCounterMode"


def test_verify_exit_status_and_report_when_the_analysis_is_wrong(capsys, monkeypatch):
    count_costs = passes.count_costs

    def miscounted(graph):   # the backward of one FC forgets its input's gradient
        count_costs(graph)
        graph.nodes["fc1"]["training_flops"] -= 2 * graph.nodes["fc1"]["macs"]

    monkeypatch.setattr(passes, "count_costs", miscounted)
    status, out, _ = run(capsys, "analyze", "INPUT(3, 8, 8) -> CONV3-4 -> RELU -> FC-10 -> FC-2",
                         "--verify")
    assert status == 1
    assert "differs: fc1 (FC): forward 5,120 static, 5,120 counted; backward 5,120 static, " \
           "10,240 counted" in out
    assert out.rstrip().endswith("verify: 1 layer differs from FlopCounterMode")


def test_verify_as_json_and_beside_a_document(capsys):
    net = "INPUT(3, 8, 8) -> CONV3-4 -> BN -> RELU -> FC-10"
    status, out, _ = run(capsys, "analyze", net, "--verify", "--json")
    data = json.loads(out)
    assert status == 0 and data["verify"]["agrees"] and data["verify"]["differences"] == []
    assert data["verify"]["kinds"]["FC"] == {
        "static_forward": 2 * 256 * 10, "counted_forward": 2 * 256 * 10,
        "static_backward": 4 * 256 * 10, "counted_backward": 4 * 256 * 10,
        "known_excess": 0, "layers": 1, "difference": 0}
    status, out, err = run(capsys, "analyze", net, "--verify", "--format", "csv")
    assert status == 0 and out.startswith("layer,") and "verify: the static FLOPs agree" in err


def test_grouped_convolutions_known_excess():
    """A depthwise CONV's weight gradient, which FlopCounterMode counts `groups` times
    in the torch versions that have that bug: shown as a known excess, not a difference."""
    from cnndsl.analysis.verify import groups_weight_gradient_overcounted, verify

    analysis = cnndsl.parse("INPUT(8, 6, 6) -> CONV1-8 -> CONV3-8(groups=8, bias=false)").analyze()
    result = verify(analysis)
    depthwise = result.layers[-1]
    weight_gradient = depthwise.static_forward   # 2·MACs, as the forward
    expected = 7 * weight_gradient if groups_weight_gradient_overcounted() else 0
    assert result.agrees and depthwise.known_excess == expected


def test_a_net_without_parameters_has_no_backward(capsys):
    status, out, _ = run(capsys, "analyze", "INPUT(1, 8, 8) -> POOL -> RELU", "--verify")
    assert status == 0 and "verify: the static FLOPs agree" in out


def test_verify_without_torch_says_what_to_install():
    result = run_without_torch("analyze", "lenet5", "--verify")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --verify needs torch: pip install 'cnndsl[train]'"
