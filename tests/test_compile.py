"""Compilation to torch.fx: shapes and parameter counts equal the analyser's, the
compiled blocks compute what hand-written PyTorch computes, gradients check."""
import pytest
import torch
from torch import nn

import cnndsl
from cnndsl.layers import KINDS

# One small network per layer kind (every entry of the table must appear here).
KIND_NETS = {
    "INPUT": "INPUT(3, 9, 9)",
    "CONV": "INPUT(4, 9, 9) -> CONV3x2-6/2(dilation=2, groups=2)",
    "POOL": "INPUT(3, 9, 9) -> POOL3/2(pad=1, ceil=true)",
    "MAXPOOL": "INPUT(3, 9, 9) -> MAXPOOL2",
    "AVGPOOL": "INPUT(3, 9, 9) -> AVGPOOL3/2(pad=1)",
    "GAP": "INPUT(3, 9, 9) -> GAP",
    "FC": "INPUT(3, 9, 9) -> FC-7",
    "RELU": "INPUT(3, 9, 9) -> RELU", "RELU6": "INPUT(3, 9, 9) -> RELU6",
    "TANH": "INPUT(3, 9, 9) -> TANH", "SIGMOID": "INPUT(3, 9, 9) -> SIGMOID",
    "ELU": "INPUT(3, 9, 9) -> ELU(0.5)", "GELU": "INPUT(3, 9, 9) -> GELU",
    "LRELU": "INPUT(3, 9, 9) -> LRELU(0.2)", "SOFTMAX": "INPUT(3, 9, 9) -> SOFTMAX",
    "DROPOUT": "INPUT(3, 9, 9) -> DROPOUT(0.3)",
    "BN": "INPUT(3, 9, 9) -> BN -> FC-5 -> BN(eps=0.001)",
    "LRN": "INPUT(6, 9, 9) -> LRN(size=3)",
    "FLATTEN": "INPUT(3, 9, 9) -> FLATTEN",
    "ID": "INPUT(3, 9, 9) -> ID",
    "CONCAT": "INPUT(3, 9, 9) -> CONCAT(CONV1-2, ID, POOL3/1(pad=1))",
    "ADD": "INPUT(3, 9, 9) -> ADD(CONV3-3, ID, TANH) -> RES(CONV1-3)",
    "MUL": "INPUT(4, 9, 9) -> MUL(CONV1-4, ID, GAP -> CONV1-4 -> SIGMOID) "
           "-> GATE(GAP -> CONV1-2 -> RELU -> CONV1-4 -> HSIGMOID)",
    "SILU": "INPUT(3, 9, 9) -> SILU", "SWISH": "INPUT(3, 9, 9) -> SWISH",
    "HSWISH": "INPUT(3, 9, 9) -> HSWISH", "HSIGMOID": "INPUT(3, 9, 9) -> HSIGMOID",
    "LN": "INPUT(3, 9, 9) -> LN -> FC-5 -> LN(eps=1e-6)",
    "SCALE": "INPUT(3, 9, 9) -> SCALE(0.5) -> FC-5 -> SCALE(2.0)",
    "DROPPATH": "INPUT(3, 9, 9) -> RES(CONV3-3 -> DROPPATH(0.2))",
    "SPLIT": "INPUT(4, 9, 9) -> CONCAT(SPLIT(1, 2), SPLIT(2, 2) -> CONV1-2)",
    "SHUFFLE": "INPUT(6, 9, 9) -> SHUFFLE(3)",
}


def test_every_layer_kind_has_a_network():
    assert set(KIND_NETS) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KIND_NETS))
def test_compiled_shapes_and_params_equal_the_analysis(kind):
    spec = cnndsl.parse(KIND_NETS[kind])
    analysis = spec.analyze()
    model = spec.compile().eval()
    out = model(torch.randn(2, *analysis.input_shape))
    assert tuple(out.shape[1:]) == analysis.output_shape
    assert sum(p.numel() for p in model.parameters()) == analysis.totals()["params"]
    assert sum(b.numel() for b in model.buffers()) == analysis.totals()["buffers"]


@pytest.mark.parametrize("kind", sorted(set(KIND_NETS) - {"DROPOUT", "DROPPATH"}))  # random in training
def test_gradcheck(kind):
    # The notes: "use gradient checks". Double precision, a tiny input.
    spec = cnndsl.parse(KIND_NETS[kind].replace("9, 9", "5, 5"))
    model = spec.compile().double()
    model.train(kind != "BN")  # BN in training mode mixes the batch; eval is a clean function
    x = torch.randn(2, *spec.analyze().input_shape, dtype=torch.double, requires_grad=True)
    if kind in ("POOL", "MAXPOOL"):
        x = (x + torch.arange(x.numel(), dtype=torch.double).reshape(x.shape) * 0.1).detach().requires_grad_()
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-5)


def _copy_weights(compiled, reference):
    """Loads the reference's weights into the compiled net, matching in order (the graph's
    order: main branch, then shortcut, as the hand-written modules declare them)."""
    ours, theirs = list(compiled.state_dict().items()), list(reference.state_dict().items())
    assert [v.shape for _, v in ours] == [v.shape for _, v in theirs]
    compiled.load_state_dict({k: v for (k, _), (_, v) in zip(ours, theirs)})


class BasicBlock(nn.Module):
    """torchvision's resnet.BasicBlock with a projection shortcut, written by hand."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.down(x))


class Inception(nn.Module):
    """GoogLeNet's inception module (3a), by hand."""

    def __init__(self):
        super().__init__()
        self.b1 = nn.Conv2d(192, 64, 1)
        self.b2 = nn.Sequential(nn.Conv2d(192, 96, 1), nn.ReLU(), nn.Conv2d(96, 128, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(192, 16, 1), nn.ReLU(), nn.Conv2d(16, 32, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(192, 32, 1))

    def forward(self, x):
        return torch.cat([torch.relu(self.b1(x)), torch.relu(self.b2(x)),
                          torch.relu(self.b3(x)), torch.relu(self.b4(x))], 1)


def vgg_stage():
    return nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2))


@pytest.mark.parametrize("text, reference, input_shape", [
    ("INPUT(64, 16, 16) -> ADD(CONV3-128/2 -> BN -> RELU -> CONV3-128 -> BN, CONV1-128/2 -> BN) -> RELU",
     lambda: BasicBlock(64, 128, 2), (64, 16, 16)),
    ("INPUT(192, 14, 14) -> CONCAT(CONV1-64 -> RELU, CONV1-96 -> RELU -> CONV3-128 -> RELU, "
     "CONV1-16 -> RELU -> CONV5-32 -> RELU, POOL3/1(pad=1) -> CONV1-32 -> RELU)",
     Inception, (192, 14, 14)),
    ("INPUT(64, 16, 16) -> (CONV3-128 -> RELU)*2 -> POOL", vgg_stage, (64, 16, 16)),
], ids=["resnet-block", "inception", "vgg-stage"])
def test_compiled_blocks_compute_what_pytorch_computes(text, reference, input_shape):
    torch.manual_seed(0)
    ref = reference().eval()
    model = cnndsl.parse(text).compile().eval()
    _copy_weights(model, ref)
    x = torch.randn(3, *input_shape)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_submodules_are_named_hierarchically_and_code_is_readable():
    text = "basic(c) = RES(CONV3-c -> BN -> RELU -> CONV3-c -> BN) -> RELU\nINPUT(8, 8, 8) -> basic(8)*2 -> fc6: FC-10"
    model = cnndsl.parse(text).compile()
    names = dict(model.named_modules())
    assert "basic2.res1.conv2" in names and "fc6" in names
    assert "self.basic2.res1.conv2(" in model.code
    assert "fc6.weight" in model.state_dict()


def test_init_schemes():
    # Xavier as the notes give it: Var(W) = 1/n_in; Kaiming: 2/n_in.
    text = "INPUT(256, 8, 8) -> CONV3-256 -> FC-512"
    for scheme, gain in (("xavier", 1.0), ("kaiming", 2.0)):
        torch.manual_seed(0)
        model = cnndsl.parse(text).compile(init=scheme)
        conv = model.get_submodule("conv1")
        assert conv.weight.var().item() == pytest.approx(gain / (256 * 9), rel=0.05)
        assert torch.all(conv.bias == 0)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # deprecated in torch 2.13, still asked for
def test_jit_trace_torch_compile_and_export_accept_the_module():
    spec = cnndsl.parse("INPUT(3, 16, 16) -> CONV3-8 -> BN -> RELU -> RES(CONV3-8 -> BN) -> "
                        "CONCAT(ID, POOL3/1(pad=1)) -> GAP -> FC-10")
    model = spec.compile().eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), expected)
    # aot_eager runs dynamo and AOTAutograd without generating C++ (inductor is exercised by
    # benchmarks/gpu_check.sh on a GPU machine).
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), expected)


def test_compile_refuses_a_spec_with_errors():
    with pytest.raises(cnndsl.CnnDslError) as caught:
        cnndsl.parse("INPUT(3, 8, 8) -> ADD(CONV3-4, CONV3-5)").compile()
    assert "ADD branches disagree" in caught.value.message
