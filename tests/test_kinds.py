"""The modern layer kinds: MUL and GATE, SILU/SWISH, HSWISH, HSIGMOID, LN, SCALE, DROPPATH,
SPLIT and SHUFFLE (docs/language.md, 2.3 and 3).

Each kind is checked four ways: its shape rule and its diagnostics, its parameter count
against the compiled module's, a gradient check of the compiled module, and its values
against an independent source — the formula (stated in each test), or, where torchvision
is installed (/work/venv-tv), torchvision's own module with the same weights:

    /work/venv-tv/bin/python -m pytest -q tests/test_kinds.py
"""
from __future__ import annotations

import operator

import pytest
import torch
from torch.nn import functional as F

import cnndsl
from cnndsl import CnnDslError
from cnndsl.layers import KINDS

NEEDS_TORCHVISION = "torchvision is not installed here; run this file with /work/venv-tv/bin/python"


def analysed(text: str):
    analysis = cnndsl.parse(text).analyze()
    assert analysis.ok, [d.message for d in analysis.diagnostics]
    return analysis


def rows(text: str) -> dict:
    return {row["name"]: row for row in analysed(text).layers()}


def error_of(text: str) -> str:
    """The one error of a spec that parses but does not analyse."""
    [error] = cnndsl.parse(text).analyze().errors
    return error.message


def compiled(text: str):
    return cnndsl.parse(text).compile()


# --- the table --------------------------------------------------------------------------

NEW_KINDS = ["MUL", "SILU", "SWISH", "HSWISH", "HSIGMOID", "LN", "SCALE", "DROPPATH", "SPLIT", "SHUFFLE"]


def test_each_new_kind_is_one_table_entry_with_a_module():
    for name in NEW_KINDS:
        kind = KINDS[name]
        assert kind.doc and (kind.build is not None or kind.emit is not None), name
    assert [s.name for s in KINDS["MUL"].shorthands] == ["GATE"]
    # SWISH is SILU under another name: the same module, the same costs.
    silu, swish = KINDS["SILU"], KINDS["SWISH"]
    assert silu.flops(None, (4,), (4,)) == swish.flops(None, (4,), (4,)) == 2 * 4
    assert type(compiled("INPUT(3, 4, 4) -> SWISH").swish1) is torch.nn.SiLU


# --- shapes, parameters and the compiled module -----------------------------------------

# One net per kind, with its expected output shape; every one has parameters to count
# where the kind has any, on a volume and (where it takes one) on a flat vector.
NETS = {
    "MUL": ("INPUT(4, 6, 6) -> MUL(CONV1-4, ID, GAP -> CONV1-4 -> SIGMOID)", (4, 6, 6)),
    "GATE": ("INPUT(32, 6, 6) -> GATE(GAP -> CONV1-8 -> RELU -> CONV1-32 -> SIGMOID)", (32, 6, 6)),
    "MUL-flat": ("INPUT(4, 6, 6) -> FC-10 -> MUL(ID, TANH, FC-10)", (10,)),
    "SILU": ("INPUT(3, 6, 6) -> SILU", (3, 6, 6)),
    "SWISH": ("INPUT(3, 6, 6) -> SWISH", (3, 6, 6)),
    "HSWISH": ("INPUT(3, 6, 6) -> HSWISH", (3, 6, 6)),
    "HSIGMOID": ("INPUT(3, 6, 6) -> HSIGMOID", (3, 6, 6)),
    "LN": ("INPUT(6, 5, 5) -> LN(1e-6)", (6, 5, 5)),
    "LN-flat": ("INPUT(6, 5, 5) -> FC-7 -> LN", (7,)),
    "SCALE": ("INPUT(6, 5, 5) -> SCALE(1e-6)", (6, 5, 5)),
    "SCALE-flat": ("INPUT(6, 5, 5) -> FC-7 -> SCALE", (7,)),
    "DROPPATH": ("INPUT(4, 5, 5) -> RES(CONV3-4 -> BN -> DROPPATH(0.25))", (4, 5, 5)),
    "SPLIT": ("INPUT(6, 5, 5) -> SPLIT(2, 3)", (2, 5, 5)),
    "SPLIT-flat": ("INPUT(6, 5, 5) -> FC-8 -> SPLIT(1, 4)", (2,)),
    "SHUFFLE": ("INPUT(6, 5, 5) -> SHUFFLE(3)", (6, 5, 5)),
    "SHUFFLE-flat": ("INPUT(6, 5, 5) -> FC-8 -> SHUFFLE(2)", (8,)),
    "shufflenet-unit": ("INPUT(8, 5, 5) -> CONCAT(SPLIT(1, 2), SPLIT(2, 2) -> CONV1-4 -> BN -> RELU) "
                        "-> SHUFFLE(2)", (8, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_shape_and_params_equal_the_compiled_module(name):
    text, shape = NETS[name]
    analysis = analysed(text)
    assert analysis.output_shape == shape
    model = compiled(text).eval()
    out = model(torch.randn(2, *analysis.input_shape))
    assert tuple(out.shape[1:]) == shape
    assert sum(p.numel() for p in model.parameters()) == analysis.totals()["params"]
    assert sum(b.numel() for b in model.buffers()) == analysis.totals()["buffers"]


def test_parameter_counts_by_formula():
    # LN: a weight and a bias per channel, 2·C; SCALE: one factor per channel, C.
    net = rows("INPUT(6, 5, 5) -> LN -> SCALE -> FC-7 -> LN -> SCALE")
    assert (net["ln1"]["params"], net["scale1"]["params"]) == (2 * 6, 6)
    assert (net["ln2"]["params"], net["scale2"]["params"]) == (2 * 7, 7)
    # SE on 32 channels squeezed to 8: 32·8 + 8 and 8·32 + 32 (both convs keep their bias).
    se = rows(NETS["GATE"][0])
    assert se["gate1.conv1"]["params"] == 32 * 8 + 8 and se["gate1.conv2"]["params"] == 8 * 32 + 32
    assert all(r["params"] == 0 for n, r in rows(NETS["shufflenet-unit"][0]).items()
               if r["kind"] in ("SPLIT", "SHUFFLE", "CONCAT"))


def test_module_parameters_have_torchvisions_shapes():
    model = compiled("INPUT(6, 5, 5) -> LN(1e-6) -> SCALE(1e-6) -> FC-7 -> LN -> SCALE(0.5)")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # convnext.LayerNorm2d(C) and nn.LayerNorm(N): weight and bias of shape (C,);
    # CNBlock.layer_scale: (C, 1, 1) on a volume.
    assert shapes == {"ln1.weight": (6,), "ln1.bias": (6,), "scale1.weight": (6, 1, 1),
                      "fc1.weight": (7, 150), "fc1.bias": (7,),
                      "ln2.weight": (7,), "ln2.bias": (7,), "scale2.weight": (7,)}
    assert model.ln1.eps == 1e-6 and model.ln2.eps == 1e-5   # PyTorch's default
    assert torch.all(model.scale1.weight == 1e-6) and torch.all(model.scale2.weight == 0.5)
    assert type(model.ln2) is torch.nn.LayerNorm


def test_how_the_new_kinds_are_written_back():
    net = rows("INPUT(8, 4, 4) -> LN(eps=1e-6) -> SCALE(0.5) -> DROPPATH(0.1) -> SPLIT(1, 2) "
               "-> SHUFFLE(2) -> GATE(GAP -> SIGMOID) -> MUL(ID, ID)")
    assert [net[n]["layer"] for n in ("ln1", "scale1", "droppath1", "split1", "shuffle1", "gate1", "mul1")] \
        == ["LN(1e-06)", "SCALE(0.5)", "DROPPATH(0.1)", "SPLIT(1, 2)", "SHUFFLE(2)", "GATE", "MUL"]
    assert net["gate1"]["kind"] == "MUL" and net["gate1"]["inputs"] == ["gate1.sigmoid1", "shuffle1"]


# --- gradient checks ------------------------------------------------------------------------

GRADCHECK = {
    "MUL": "INPUT(4, 3, 3) -> MUL(CONV1-4, ID, GAP -> CONV1-4 -> SIGMOID) "
           "-> GATE(GAP -> CONV1-2 -> RELU -> CONV1-4 -> HSIGMOID)",
    "SILU": "INPUT(3, 3, 3) -> SILU -> SWISH",
    "HSWISH": "INPUT(3, 3, 3) -> HSWISH",
    "HSIGMOID": "INPUT(3, 3, 3) -> HSIGMOID",
    "LN": "INPUT(4, 3, 3) -> CONV1-4 -> LN -> FC-5 -> LN(1e-6)",
    "SCALE": "INPUT(4, 3, 3) -> SCALE(0.7) -> FC-5 -> SCALE(-2.0)",
    "DROPPATH": "INPUT(4, 3, 3) -> RES(CONV3-4 -> DROPPATH(0.5))",
    "SPLIT": "INPUT(4, 3, 3) -> CONCAT(SPLIT(2, 2) -> TANH, SPLIT(1, 2) -> CONV1-3)",
    "SHUFFLE": "INPUT(6, 3, 3) -> CONV1-6 -> SHUFFLE(3) -> CONV1-2",
}


@pytest.mark.parametrize("name", sorted(GRADCHECK))
def test_gradcheck(name):
    # The notes: "use gradient checks". Double precision, tiny inputs, fixed draws.
    torch.manual_seed(0)
    model = compiled(GRADCHECK[name]).double().train()
    shape = cnndsl.parse(GRADCHECK[name]).analyze().input_shape
    # Away from the kinks of the hard activations (x = ±3) and of RELU (0).
    x = (torch.rand(2, *shape, dtype=torch.double) * 5 - 2.5).requires_grad_()

    def forward(x):
        torch.manual_seed(4)  # DROPPATH: the same samples dropped at every evaluation
        return model(x)

    assert torch.autograd.gradcheck(forward, (x,), eps=1e-6, atol=1e-5)


def test_gradcheck_of_droppath_drops_some_samples_and_keeps_others():
    # So that the check above covers both a dropped and a kept sample.
    model = compiled(GRADCHECK["DROPPATH"]).double().train()
    torch.manual_seed(4)
    keep = model.get_submodule("res1.droppath1")(torch.ones(2, 1, dtype=torch.double))
    assert set(keep.flatten().tolist()) == {0.0, 2.0}


# --- MUL and GATE ---------------------------------------------------------------------------

def test_gate_is_squeeze_and_excitation():
    # Hu et al. 2018, eq. 2-4: s = σ(W2 δ(W1 z)), z the channel means; the output s_c · u_c.
    model = compiled(NETS["GATE"][0]).eval()
    x = torch.randn(3, 32, 6, 6)
    c1, c2 = model.get_submodule("gate1.conv1"), model.get_submodule("gate1.conv2")
    z = x.mean((2, 3))
    s = torch.sigmoid(F.relu(z @ c1.weight.flatten(1).T + c1.bias) @ c2.weight.flatten(1).T + c2.bias)
    torch.testing.assert_close(model(x), s[:, :, None, None] * x)


def test_mul_is_emitted_as_operator_mul_and_its_flops_count_the_products():
    text = "INPUT(4, 6, 6) -> MUL(ID, TANH, GAP -> SIGMOID)"
    model = compiled(text)
    products = [n for n in model.graph.nodes if n.target is operator.mul]
    assert len(products) == 2   # three branches: two multiplications
    # One FLOP per output element per branch after the first: 2 · 4·6·6.
    assert rows(text)["mul1"]["flops"] == 2 * 4 * 6 * 6
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(model(x), x * torch.tanh(x) * torch.sigmoid(x.mean((2, 3), keepdim=True)))


@pytest.mark.parametrize("text", [
    "INPUT(32, 8, 8) -> MUL(ID, GAP)",           # the gate in any branch
    "INPUT(32, 8, 8) -> MUL(GAP, ID, GAP, ID)",
    "INPUT(32, 1, 1) -> MUL(ID, ID)",            # C×1×1 with C×1×1: equal shapes
])
def test_mul_broadcasts_a_channel_gate_over_a_volume(text):
    analysis = analysed(text)
    assert analysis.output_shape == analysis.input_shape


@pytest.mark.parametrize("text, words", [
    ("INPUT(32, 8, 8) -> MUL(GAP -> CONV1-16, ID)", ["16×1×1", "32×8×8", "32×1×1 (a channel gate)"]),
    ("INPUT(32, 8, 8) -> MUL(ID, CONV3-32/2)", ["32×8×8", "32×4×4"]),                  # no other broadcast
    ("INPUT(32, 8, 8) -> MUL(ID, CONV1-32 -> POOL8/8(pad=0) -> FC-32)", ["32×8×8", "gives 32;"]),
    ("INPUT(32, 8, 8) -> MUL(ID, CONV1x8-32(pad=0))", ["32×8×1"]),                    # C×H×1 is no gate
    ("INPUT(32, 8, 8) -> GATE(GAP -> CONV1-16 -> SIGMOID)", ["GATE's chain gives 16×1×1", "32×1×1"]),
])
def test_mul_refuses_any_other_mismatch_and_says_what_would_do(text, words):
    message = error_of(text)
    assert "multipl" in message
    for word in words:
        assert word in message, message


def test_a_channel_gate_keeps_the_grid_of_its_volume():
    # The gate's GAP sees the whole 8×8 input, so the RF after it is 8; but the outputs
    # are still one per input pixel (jump 1), and a 3×3 conv after it adds 2, not 2·8.
    net = rows("INPUT(32, 8, 8) -> GATE(GAP -> CONV1-32 -> SIGMOID) -> CONV3-8")
    assert (net["gate1"]["rf"], net["gate1"]["jump"]) == (8, 1)
    assert (net["conv1"]["rf"], net["conv1"]["jump"]) == (10, 1)


# --- activations ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, formula, flops", [
    # Ramachandran et al. 2017 (swish), Howard et al. 2019 (MobileNetV3, eq. 2 and h-sigmoid).
    ("SILU", lambda x: x * torch.sigmoid(x), 2),
    ("SWISH", lambda x: x * torch.sigmoid(x), 2),
    ("HSIGMOID", lambda x: torch.clamp(x + 3, 0, 6) / 6, 4),
    ("HSWISH", lambda x: x * torch.clamp(x + 3, 0, 6) / 6, 5),
])
def test_activations_compute_their_formula_and_count_their_flops(kind, formula, flops):
    text = f"INPUT(3, 4, 4) -> {kind}"
    x = torch.linspace(-5, 5, 2 * 48).reshape(2, 3, 4, 4)
    torch.testing.assert_close(compiled(text)(x), formula(x))
    assert rows(text)[f"{kind.lower()}1"]["flops"] == flops * 3 * 4 * 4


# --- LN and SCALE ---------------------------------------------------------------------------

def _normalised(x, dim, eps):
    """(x − mean) / sqrt(var + eps) over `dim`, the variance biased (Ba et al. 2016, eq. 4)."""
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def test_ln_normalises_each_position_over_its_channels():
    torch.manual_seed(0)
    model = compiled("INPUT(6, 5, 5) -> LN(1e-6) -> FC-7 -> LN")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x = torch.randn(3, 6, 5, 5) * 4 + 1
    ln1, fc1, ln2 = model.ln1, model.fc1, model.ln2
    volume = _normalised(x, 1, 1e-6) * ln1.weight[:, None, None] + ln1.bias[:, None, None]
    flat = fc1(volume)
    expected = _normalised(flat, 1, 1e-5) * ln2.weight + ln2.bias
    torch.testing.assert_close(model(x), expected)


def test_ln_keeps_the_bias_of_the_conv_before_it():
    # BN removes a per-channel bias with the batch mean; LN subtracts the mean over the
    # channels of one position, which does not remove a bias that differs per channel.
    net = rows("INPUT(3, 8, 8) -> CONV3-8 -> LN -> CONV3-8 -> BN")
    assert net["conv1"]["params"] == 3 * 9 * 8 + 8 and net["conv2"]["params"] == 8 * 9 * 8


def test_ln_and_scale_flops():
    net = rows("INPUT(6, 5, 5) -> LN -> SCALE")
    assert net["ln1"]["flops"] == 7 * 6 * 5 * 5 and net["scale1"]["flops"] == 6 * 5 * 5


def test_scale_multiplies_each_channel_by_its_factor():
    model = compiled("INPUT(3, 2, 2) -> SCALE(1e-6)")
    with torch.no_grad():
        model.scale1.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1))
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(model(x), x * torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1))


# --- SPLIT and SHUFFLE ----------------------------------------------------------------------

def test_split_keeps_one_of_equal_channel_groups():
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.float).reshape(2, 6, 2, 2)
    for part in (1, 2, 3):
        out = compiled(f"INPUT(6, 2, 2) -> SPLIT({part}, 3)")(x)
        torch.testing.assert_close(out, x[:, 2 * (part - 1): 2 * part])
    # A view, as in ShuffleNet (x.chunk): no activation memory of its own.
    assert rows("INPUT(6, 2, 2) -> SPLIT(1, 2)")["split1"]["activations"] == 0


def test_shuffle_moves_channel_i_of_group_k_to_i_times_g_plus_k():
    # Zhang et al. 2018 (ShuffleNet), Fig. 1(c): with g groups of n = C/g channels,
    # channel k·n + i goes to i·g + k.
    g, n = 3, 4
    x = torch.arange(g * n, dtype=torch.float).view(1, g * n, 1, 1).repeat(2, 1, 3, 3)
    out = compiled(f"INPUT({g * n}, 3, 3) -> SHUFFLE({g})")(x)
    for k in range(g):
        for i in range(n):
            assert torch.all(out[:, i * g + k] == k * n + i)


def test_shufflenet_unit_is_half_passed_through_and_interleaved():
    model = compiled(NETS["shufflenet-unit"][0]).eval()
    x = torch.randn(2, 8, 5, 5)
    out = model(x)
    # After SHUFFLE(2) the even channels are the first half of the input, untouched.
    torch.testing.assert_close(out[:, 0::2], x[:, :4])


@pytest.mark.parametrize("text, message", [
    ("INPUT(32, 8, 8) -> SPLIT(1, 3)",
     "SPLIT(1, 3): the 32 channels do not split into 3 equal parts; the number of parts must divide the channels"),
    ("INPUT(32, 8, 8) -> SPLIT(3, 2)", "SPLIT(3, 2): there is no part 3 of 2: the parts are numbered 1 to 2"),
    ("INPUT(30, 8, 8) -> SHUFFLE(4)", "SHUFFLE(4): groups=4 must divide the 30 channels"),
    ("INPUT(30, 8, 8) -> FC-10 -> SHUFFLE(3)", "SHUFFLE(3): groups=3 must divide the 10 channels"),
])
def test_split_and_shuffle_diagnostics(text, message):
    assert error_of(text) == message


@pytest.mark.parametrize("text, message", [
    ("INPUT(8, 4, 4) -> SPLIT(0, 2)", "SPLIT's part must be at least 1, got 0"),
    ("INPUT(8, 4, 4) -> SPLIT(1)", "SPLIT needs its of"),
    ("INPUT(8, 4, 4) -> SHUFFLE", "SHUFFLE needs its groups"),
    ("INPUT(8, 4, 4) -> DROPPATH", "DROPPATH needs its p"),
    ("INPUT(8, 4, 4) -> DROPPATH(1.5)", "DROPPATH's p must be at most 1, got 1.5"),
    ("INPUT(8, 4, 4) -> LN(-1e-5)", "LN's eps must be at least 0"),
    ("INPUT(8, 4, 4) -> SCALE(init=true)", "SCALE's init must be a number"),
    ("INPUT(8, 4, 4) -> SILU(2)", "SILU takes no more arguments"),
])
def test_option_diagnostics(text, message):
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse(text).analyze()
    assert message in caught.value.message
    # At the layer or at its argument, with the caret under it.
    head, source, caret = str(caught.value).splitlines()
    assert head.startswith("<inline>:1:") and caught.value.col >= 19
    assert caret.index("^") == 4 + caught.value.col - 1


# --- DROPPATH -------------------------------------------------------------------------------

def test_droppath_statistics_follow_the_formula():
    # Huang et al. 2016: each sample survives with probability 1 − p, and is then scaled
    # by 1/(1 − p) so that its expectation is unchanged. 40,000 samples: the fraction
    # dropped is within 5 standard deviations, 5·sqrt(p(1 − p)/N) ≈ 0.011, of p.
    p, n = 0.3, 40_000
    module = compiled(f"INPUT(2, 3, 3) -> DROPPATH({p})").droppath1.train()
    torch.manual_seed(0)
    out = module(torch.ones(n, 2, 3, 3))
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])    # a sample is dropped whole
    survivor = torch.tensor(1 / (1 - p))    # float32, as the module computes it
    assert torch.all((per_sample[:, 0] == 0) | (per_sample[:, 0] == survivor))
    dropped = (per_sample[:, 0] == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert abs(out.mean().item() - 1.0) < 5 * (p / (1 - p) / n) ** 0.5


def test_droppath_is_the_identity_in_eval_and_at_p_0_and_drops_all_at_p_1():
    x = torch.randn(8, 3, 2, 2)
    model = compiled("INPUT(3, 2, 2) -> DROPPATH(0.9)")
    assert model.eval()(x) is x or torch.equal(model.eval()(x), x)
    assert torch.equal(compiled("INPUT(3, 2, 2) -> DROPPATH(0.0)").train()(x), x)
    assert torch.equal(compiled("INPUT(3, 2, 2) -> DROPPATH(1.0)").train()(x), torch.zeros_like(x))
    assert rows("INPUT(3, 2, 2) -> DROPPATH(0.5)")["droppath1"]["flops"] == 0


# --- against torchvision (its own modules, with the same weights) ---------------------------

def _copy_in_order(ours, theirs, pairs=None):
    """Loads `theirs`' tensors into `ours` in state_dict order (or by the (ours, theirs)
    name pairs given), reshaping a Linear's (out, in) weight to a 1×1 conv's (out, in, 1, 1)."""
    mine, other = ours.state_dict(), theirs.state_dict()
    pairs = pairs or list(zip(mine, other))
    assert len(pairs) == len(mine) == len(other)
    ours.load_state_dict({a: other[b].reshape(mine[a].shape) for a, b in pairs})


def _randomise(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if t.ndim == 1 else torch.randn_like(t) * 0.2)


def test_droppath_equals_torchvisions_stochastic_depth_under_the_same_seed():
    ops = pytest.importorskip("torchvision.ops", reason=NEEDS_TORCHVISION)
    x = torch.randn(64, 5, 3, 3)
    for p in (0.0, 0.1, 0.5, 0.9, 1.0):
        module = compiled(f"INPUT(5, 3, 3) -> DROPPATH({p})").train()
        torch.manual_seed(7)
        ours = module(x)
        torch.manual_seed(7)
        theirs = ops.stochastic_depth(x, p, "row", True)
        assert torch.equal(ours, theirs), p
        torch.manual_seed(7)
        assert torch.equal(ours, ops.StochasticDepth(p, "row").train()(x)), p


def test_shuffle_and_split_equal_torchvisions_shufflenet_unit():
    shufflenetv2 = pytest.importorskip("torchvision.models.shufflenetv2", reason=NEEDS_TORCHVISION)
    x = torch.randn(2, 24, 7, 7)
    theirs = shufflenetv2.channel_shuffle(x, 3)
    assert torch.equal(compiled("INPUT(24, 7, 7) -> SHUFFLE(3)")(x), theirs)
    # InvertedResidual(116, 116, stride 1): x1, x2 = x.chunk(2); cat(x1, branch2(x2)); shuffle.
    unit = shufflenetv2.InvertedResidual(116, 116, 1)
    _randomise(unit)
    model = compiled("INPUT(116, 14, 14) -> CONCAT(SPLIT(1, 2), SPLIT(2, 2) -> CONV1-58 -> BN -> RELU "
                     "-> CONV3-58(groups=58) -> BN -> CONV1-58 -> BN -> RELU) -> SHUFFLE(2)")
    _copy_in_order(model, unit)
    x = torch.randn(2, 116, 14, 14)
    torch.testing.assert_close(model.eval()(x), unit.eval()(x))


def test_ln_equals_torchvisions_layernorm2d():
    convnext = pytest.importorskip("torchvision.models.convnext", reason=NEEDS_TORCHVISION)
    theirs = convnext.LayerNorm2d(16, eps=1e-6)
    _randomise(theirs)
    ours = compiled("INPUT(16, 5, 5) -> LN(1e-6)")
    _copy_in_order(ours, theirs)
    x = torch.randn(3, 16, 5, 5)
    assert torch.equal(ours(x), theirs(x))


def test_convnext_block_equals_torchvisions_cnblock_in_eval_and_in_training():
    convnext = pytest.importorskip("torchvision.models.convnext", reason=NEEDS_TORCHVISION)
    block = convnext.CNBlock(32, layer_scale=1e-6, stochastic_depth_prob=0.5)
    _randomise(block)   # layer_scale too, so that the branch counts
    model = compiled("INPUT(32, 7, 7) -> RES(CONV7-32(groups=32, bias=true) -> LN(1e-6) -> CONV1-128 "
                     "-> GELU -> CONV1-32 -> SCALE(1e-6) -> DROPPATH(0.5))")
    names = dict(zip(["res1.conv1.weight", "res1.conv1.bias", "res1.ln1.weight", "res1.ln1.bias",
                      "res1.conv2.weight", "res1.conv2.bias", "res1.conv3.weight", "res1.conv3.bias",
                      "res1.scale1.weight"],
                     ["block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias",
                      "block.3.weight", "block.3.bias", "block.5.weight", "block.5.bias", "layer_scale"]))
    _copy_in_order(model, block, list(names.items()))
    x = torch.randn(8, 32, 7, 7)
    torch.testing.assert_close(model.eval()(x), block.eval()(x))
    torch.manual_seed(5)
    ours = model.train()(x)
    torch.manual_seed(5)
    torch.testing.assert_close(ours, block.train()(x))    # the same samples dropped


@pytest.mark.parametrize("activation, scale, gate", [
    ("ReLU", "Sigmoid", "RELU -> CONV1-32 -> SIGMOID"),       # EfficientNet (SiLU there), RegNet
    ("ReLU", "Hardsigmoid", "RELU -> CONV1-32 -> HSIGMOID"),  # MobileNetV3
    ("SiLU", "Sigmoid", "SILU -> CONV1-32 -> SIGMOID"),       # EfficientNet's MBConv
])
def test_gate_equals_torchvisions_squeeze_excitation(activation, scale, gate):
    ops = pytest.importorskip("torchvision.ops", reason=NEEDS_TORCHVISION)
    se = ops.SqueezeExcitation(32, 8, getattr(torch.nn, activation), getattr(torch.nn, scale))
    _randomise(se)
    model = compiled(f"INPUT(32, 6, 6) -> GATE(GAP -> CONV1-8 -> {gate})")
    _copy_in_order(model, se)
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(model(x), se(x))


def test_activations_are_torchvisions():
    pytest.importorskip("torchvision", reason=NEEDS_TORCHVISION)
    for kind, cls in (("SILU", torch.nn.SiLU), ("HSWISH", torch.nn.Hardswish), ("HSIGMOID", torch.nn.Hardsigmoid)):
        assert type(compiled(f"INPUT(3, 2, 2) -> {kind}").get_submodule(f"{kind.lower()}1")) is cls


# --- the compiled module is plain torch ---------------------------------------------------

def test_export_and_torch_compile_accept_the_new_kinds():
    text = ("INPUT(8, 8, 8) -> CONV3-8 -> BN -> SILU -> GATE(GAP -> CONV1-2 -> RELU -> CONV1-8 -> HSIGMOID) "
            "-> CONCAT(SPLIT(1, 2), SPLIT(2, 2) -> CONV1-4 -> HSWISH) -> SHUFFLE(2) "
            "-> RES(CONV3-8 -> LN(1e-6) -> SCALE(1e-6) -> DROPPATH(0.1)) -> GAP -> FC-10")
    model = compiled(text).eval()
    x = torch.randn(2, 8, 8, 8)
    expected = model(x)
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    torch.testing.assert_close(torch.compile(model, backend="aot_eager")(x), expected)
