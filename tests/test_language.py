"""The language reference (docs/language.md), section by section: what it says must
work exactly so."""
import textwrap

import pytest

import cnndsl
from cnndsl import CnnDslError
from helpers import VGG16_YAML


def layers(text, **kw):
    analysis = cnndsl.parse(text).analyze(**kw)
    assert analysis.ok, [d.format() for d in analysis.diagnostics]
    return {row["name"]: row for row in analysis.layers()}


def shapes(text):
    return [row["output"] for row in layers(text).values()]


# --- 1. The notation ---------------------------------------------------------------

def test_vgg_pattern_from_the_language_reference():
    net = layers("INPUT(3, 224, 224) -> [(CONV3-64 -> RELU)*2 -> POOL]*5 -> FC-4096")
    assert len(net) == 1 + 5 * 5 + 1
    assert net["pool5"]["output"] == [64, 7, 7]
    assert net["fc1"]["output"] == [4096]


def test_both_brackets_mean_the_same():
    assert shapes("INPUT(1,8,8) -> [CONV3-2 -> (RELU)]*2") == shapes("INPUT(1,8,8) -> (CONV3-2 -> [RELU])*2")


def test_layer_names_are_case_insensitive():
    assert shapes("input(3, 16, 16) -> conv3-64 -> relu -> pool") == \
        shapes("INPUT(3, 16, 16) -> CONV3-64 -> RELU -> POOL")


def test_comments_and_free_newlines_inside_a_chain():
    text = "INPUT(1, 8, 8)   # the input\n  -> (CONV3-4 ->\n RELU)*2  # twice\n  -> FC-10"
    assert shapes(text)[-1] == [10]


def test_repeat_counts_multiply():
    assert len(layers("INPUT(1, 8, 8) -> ((RELU)*3)*4")) == 13


# --- 2. Layers -----------------------------------------------------------------------

def test_input_forms_agree():
    # INPUT[WxHxD] is the notes' width×height×depth: [227x227x3] = INPUT(3, 227, 227).
    assert shapes("INPUT[40x30x3]") == [[3, 30, 40]]
    assert shapes("INPUT[227x227x3]") == shapes("INPUT(3, 227, 227)")


@pytest.mark.parametrize("text, output", [
    ("CONV7-64/2", [64, 16, 16]),               # stride shorthand, pad (7-1)//2 = 3
    ("CONV11-96(stride=4, pad=0)", [96, 6, 6]),  # (32 - 11)/4 + 1 = 6.25 → 6
    ("CONV1x7-8", [8, 32, 32]),                 # non-square: pad 0 and 3
    ("CONV3x5-8(pad=0)", [8, 30, 28]),
    ("CONV3-8(dilation=2)", [8, 32, 32]),       # size-preserving pad d·(F-1)//2
    ("CONV3-8(groups=3, bias=false)", None),    # 3 input channels, 8 filters: groups must divide both
    ("POOL", [3, 16, 16]), ("POOL3", [3, 10, 10]), ("POOL3/2", [3, 15, 15]),
    ("POOL3/2(pad=1)", [3, 16, 16]), ("POOL3/2(ceil=true)", [3, 16, 16]),
    ("MAXPOOL2", [3, 16, 16]), ("AVGPOOL4/4", [3, 8, 8]), ("GAP", [3, 1, 1]),
    ("FC-10", [10]), ("FLATTEN", [3072]), ("ID", [3, 32, 32]), ("SOFTMAX", [3, 32, 32]),
    ("LRN", [3, 32, 32]), ("BN", [3, 32, 32]), ("DROPOUT(0.3)", [3, 32, 32]),
    ("LRELU(0.2)", [3, 32, 32]), ("RELU6", [3, 32, 32]), ("ELU", [3, 32, 32]),
    ("GELU", [3, 32, 32]), ("TANH", [3, 32, 32]), ("SIGMOID", [3, 32, 32]),
])
def test_layer_shapes(text, output):
    analysis = cnndsl.parse(f"INPUT(3, 32, 32) -> {text}").analyze()
    if output is None:
        assert "groups=3 must divide" in analysis.errors[0].message
    else:
        assert analysis.layers()[-1]["output"] == output


def test_options_defaults_and_positional_argument():
    net = layers("INPUT(3, 8, 8) -> DROPOUT -> DROPOUT(0.3) -> LRELU -> LRELU(0.2) -> BN -> LRN")
    assert net["dropout1"]["layer"] == "DROPOUT"
    assert net["dropout2"]["layer"] == "DROPOUT(0.3)"
    assert net["lrelu2"]["layer"] == "LRELU(0.2)"
    graph = cnndsl.parse("INPUT(3, 8, 8) -> LRELU -> LRN -> BN -> CONV3-4(2)").graph()
    assert graph.nodes["lrelu1"]["opts"]["slope"] == 0.01
    assert dict(graph.nodes["lrn1"]["opts"]) == {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}
    assert dict(graph.nodes["bn1"]["opts"]) == {"eps": 1e-5, "momentum": 0.1}
    # A positional argument fills the first option the head did not give: the stride.
    assert graph.nodes["conv1"]["opts"]["stride"] == 2


def test_bias_before_batch_norm():
    # docs/language.md 2.1: a CONV or FC going straight into BN has no bias; bias=true keeps it.
    net = layers("INPUT(3, 8, 8) -> CONV3-4 -> BN -> CONV3-4(bias=true) -> BN -> CONV3-4 -> FC-5 -> BN")
    assert net["conv1"]["params"] == 3 * 9 * 4
    assert net["conv2"]["params"] == 4 * 9 * 4 + 4
    assert net["conv3"]["params"] == 4 * 9 * 4 + 4
    assert net["fc1"]["params"] == 4 * 8 * 8 * 5
    # Feeding BN *and* something else keeps the bias (its output is used without the shift).
    branch = layers("INPUT(3, 8, 8) -> CONV3-4 -> ADD(BN, ID)")
    assert branch["conv1"]["params"] == 3 * 9 * 4 + 4


def test_fc_flattens_and_bn_follows_its_input():
    net = layers("INPUT(2, 4, 4) -> FC-6 -> BN -> FC-3")
    assert net["fc1"]["params"] == 32 * 6          # no bias: BN follows
    assert net["bn1"]["params"] == 12 and net["bn1"]["buffers"] == 13


def test_pool_ceil_rounds_up_like_caffe():
    # GoogLeNet's torchvision pools: 112 → (112 - 3)/2 + 1 = 55.5 → 56 with ceil_mode.
    assert shapes("INPUT(1, 112, 112) -> POOL3/2(ceil=true)")[-1] == [1, 56, 56]
    assert shapes("INPUT(1, 112, 112) -> POOL3/2")[-1] == [1, 55, 55]


def test_output_below_one_is_always_an_error():
    analysis = cnndsl.parse("INPUT(1, 4, 4) -> POOL -> POOL -> POOL -> POOL").analyze()
    assert analysis.errors and "larger than its padded input" in analysis.errors[0].message


# --- 3. Branches ----------------------------------------------------------------------

INCEPTION = """CONCAT(CONV1-64 -> RELU,
       CONV1-96 -> RELU -> CONV3-128 -> RELU,
       CONV1-16 -> RELU -> CONV5-32 -> RELU,
       POOL3/1(pad=1) -> CONV1-32 -> RELU)"""


def test_inception_module_from_the_reference():
    # GoogLeNet inception (3a): 64 + 128 + 32 + 32 = 256 channels on 28×28 (Szegedy et al. 2014, Table 1).
    net = layers(f"INPUT(192, 28, 28) -> {INCEPTION}")
    assert net["concat1"]["output"] == [256, 28, 28]
    # Weights per Table 1's columns (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj),
    # plus one bias per filter. (Table 1's own "159K" for 3a is not this sum, 163,328.)
    weights = 192 * 64 + 192 * 96 + 96 * 9 * 128 + 192 * 16 + 16 * 25 * 32 + 192 * 32
    assert sum(r["params"] for r in net.values()) == weights + 64 + 96 + 128 + 16 + 32 + 32


def test_residual_block_with_projection_from_the_reference():
    text = """INPUT(64, 56, 56) -> ADD(CONV3-128/2 -> BN -> RELU -> CONV3-128 -> BN,
                                CONV1-128/2 -> BN) -> RELU"""
    net = layers(text)
    assert net["add1"]["output"] == [128, 28, 28]
    assert net["add1.b2.conv1"]["params"] == 64 * 128  # projection, no bias before BN


def test_res_is_add_with_identity():
    a = layers("INPUT(8, 4, 4) -> RES(CONV3-8 -> BN)")
    b = layers("INPUT(8, 4, 4) -> ADD(CONV3-8 -> BN, ID)")
    assert a["res1"]["output"] == b["add1"]["output"] == [8, 4, 4]
    assert sum(r["params"] for r in a.values()) == sum(r["params"] for r in b.values())


def test_receptive_field_through_branches_is_the_largest():
    net = layers("INPUT(1, 32, 32) -> CONCAT(CONV3-1, CONV5-1, CONV1-1)")
    assert net["concat1"]["rf"] == 5


@pytest.mark.parametrize("text, words", [
    ("INPUT(3, 8, 8) -> CONCAT(CONV3-4, POOL)", ["CONCAT", "4×8×8", "3×4×4"]),
    ("INPUT(3, 8, 8) -> ADD(CONV3-4, CONV3-5)", ["4×8×8", "5×8×8", "CONV1-4 -> BN"]),
    ("INPUT(64, 56, 56) -> RES(CONV3-128/2 -> BN)", ["64×56×56", "128×28×28", "CONV1-128/2 -> BN"]),
])
def test_branch_mismatch_names_both_shapes(text, words):
    [error] = cnndsl.parse(text).analyze().errors
    for word in words:
        assert word in error.message


# --- 4. Blocks ----------------------------------------------------------------------

def test_blocks_with_parameters_expressions_and_nesting():
    text = textwrap.dedent("""\
        basic(c) = RES(CONV3-c -> BN -> RELU -> CONV3-c -> BN) -> RELU
        bottle(m, c, s) = ADD(CONV1-m -> BN -> RELU -> CONV3-m/s -> BN -> RELU -> CONV1-c -> BN,
                              CONV1-c/s -> BN) -> RELU
        stage(m, n) = bottle(m, {4*m}, 2) -> bottle(m, {4*m}, 1)*{n-1}
        INPUT(64, 56, 56) -> basic(64)*2 -> stage(64, 3)
        """)
    net = layers(text)
    assert "stage1.bottle3.add1.b1.conv2" in net
    assert net["stage1.bottle3.relu1"]["output"] == [256, 28, 28]
    assert net["basic2.res1.conv2"]["params"] == 64 * 64 * 9


def test_block_parameters_in_options_and_repeat_counts():
    net = layers("p(k, n, q) = (CONV{k}-4(pad=q))*n\nINPUT(1, 9, 9) -> p(3, 2, 0)")
    assert net["p1.conv2"]["output"] == [4, 5, 5]


def test_zero_parameter_block():
    net = layers("dense = CONCAT(ID, BN -> RELU -> CONV3-32)\nINPUT(64, 8, 8) -> dense*6")
    assert net["dense6.concat1"]["output"] == [64 + 6 * 32, 8, 8]


def test_labels_name_layers():
    net = layers("INPUT(512, 7, 7) -> fc6: FC-4096 -> RELU -> fc7: FC-4096 -> fc8: FC-1000")
    assert list(net)[1:] == ["fc6", "relu1", "fc7", "fc8"]


def test_keyword_block_arguments():
    assert shapes("b(c, s) = CONV3-c/s\nINPUT(1, 8, 8) -> b(s=2, c=5)")[-1] == [5, 4, 4]


@pytest.mark.parametrize("text, message", [
    ("INPUT(1,8,8) -> CONVV3-4", "unknown layer 'CONVV3' — did you mean 'CONV'?"),
    ("INPUT(1,8,8) -> CONV3-4(strid=2)", "did you mean 'stride'?"),
    ("INPUT(1,8,8) -> (CONV3-4", "'(' is never closed"),
    ("INPUT(1,8,8) -> blk(3)", "unknown layer 'blk'"),
    ("b(c) = CONV3-c\nINPUT(1,8,8) -> b(3, 4)", "block 'b' takes 1 argument (c), got 2"),
    ("a = b\nb = a\nINPUT(1,8,8) -> a", "block 'a' calls itself: a → b → a"),
    ("INPUT(1,8,8) -> CONV3-4*{0-1}", "a repeat count must be at least 0, got -1"),
    ("INPUT(1,8,8) -> CONV3-4?? -> FC-2", "one '?' is enough"),
    ("INPUT(1,8,8) -> ? -> FC-2", "'?' makes the layer or group just before it optional"),
    ("INPUT(1,8,8) -> CONV3-{2**-1}", "it must be 0 or more"),
    ("INPUT(1,8,8) -> CONV3-{2**51}", "is larger than 1,000,000,000,000,000"),
    ("INPUT(1,8,8) -> CONV3-8*2 as as", "unexpected 'as'"),
    ("INPUT(1,8,8) -> (((CONV3-8)*1000)*1000)*1000", "more than the limit of 100,000"),
    ("b(c) = CONV3-{c//0}\nINPUT(1,8,8) -> b(1)", "division by zero"),
    ("INPUT(1,8,8) -> CONV3-c", "'c' is not defined"),
    ("INPUT(1,8,8) -> CONV3-4 -> INPUT(1,8,8)", "INPUT can only start the network"),
    ("CONV3-4", "the network has no input"),
    ("INPUT(1,8,8) -> a: RELU -> a: RELU", "'a' names two layers"),
    ("INPUT(1,8,8) -> DROPOUT(1.5)", "DROPOUT's p must be at most 1"),
    ("INPUT(1,8,8) -> CONV3-4(stride=0)", "CONV's stride must be at least 1"),
    ("INPUT(1,8,8) -> CONV3-4(stride=1.5)", "must be a whole number"),
    ("INPUT(1,8,8) -> RELU-4", "RELU takes no such number here"),
    ("INPUT(1,8,8) -> CONV-4", "CONV needs its kernel"),
])
def test_errors_are_diagnostics(text, message):
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse(text).analyze()
    assert message in caught.value.message
    assert caught.value.line is not None
    assert str(caught.value).startswith("<inline>:")


def test_the_layer_limit_is_a_parameter():
    text = "INPUT(1, 8, 8) -> (RELU)*200"
    with pytest.raises(CnnDslError):
        cnndsl.parse(text).analyze(max_layers=100)
    assert cnndsl.parse(text).analyze(max_layers=300).totals()["layers"] == 200


# --- 5. Files -----------------------------------------------------------------------

CNN_FILE = """\
# a small CIFAR-10 net
unit(c) = (CONV3-c -> BN -> RELU)*2 -> POOL
INPUT(3, 32, 32) -> unit(32) -> unit(64)
  -> unit(128) -> FC-256 -> RELU -> DROPOUT -> FC-10
"""


def test_cnn_file_from_the_reference(tmp_path):
    path = tmp_path / "small.cnn"
    path.write_text(CNN_FILE)
    spec = cnndsl.load(path)
    assert spec.name == "small"
    analysis = spec.analyze()
    assert analysis.output_shape == (10,)
    assert analysis.layers()[-1]["name"] == "fc2"


def test_cnn_line_break_ends_a_definition(tmp_path):
    path = tmp_path / "bad.cnn"
    path.write_text("unit(c) = CONV3-c\nINPUT(3, 8, 8) -> unit(4)\nRELU\n")
    with pytest.raises(CnnDslError) as caught:
        cnndsl.load(path)
    assert caught.value.line == 2 and "line break ends the chain" in caught.value.message


YAML_SPEC = VGG16_YAML


def test_yaml_spec_from_the_reference(vgg16_yaml):
    spec = cnndsl.load(vgg16_yaml)
    assert (spec.name, spec.fit, spec.input.shape) == ("vgg16", "floor", (3, 224, 224))
    assert spec.train["optimizer"]["lr"] == 0.01
    assert spec.train_spans["optimizer.lr"].line == 13
    totals = spec.analyze().totals()
    # torchvision's VGG-16 (docs, "VGG16_Weights"): 138,357,544 params, 15.47 GFLOPS (MACs).
    assert totals["params"] == 138_357_544
    assert totals["macs"] == 15_470_264_320


def test_yaml_error_points_at_the_file_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML_SPEC.replace("-> FC-4096 -> RELU -> DROPOUT -> FC-4096", "-> FC-4096 -> RELU -> DROPUOT -> FC-4096"))
    with pytest.raises(CnnDslError) as caught:
        cnndsl.load(path).analyze()
    assert (caught.value.line, caught.value.col) == (9, 25)
    assert "DROPUOT" in str(caught.value).splitlines()[1]


def test_input_from_the_spec_or_the_command_line():
    spec = cnndsl.parse("CONV3-8 -> POOL")
    assert spec.analyze(input=(3, 16, 16)).output_shape == (8, 8, 8)
    overridden = cnndsl.parse("INPUT(3, 32, 32) -> CONV3-8").analyze(input=(3, 8, 8))
    assert overridden.output_shape == (8, 8, 8)


def test_a_bare_input_takes_the_given_input_or_the_notes_imagenet_image(tmp_path):
    # The reference's INPUT row: bare INPUT takes `input:` or --input; with neither, the
    # notes' ImageNet image (3×224×224), with a note. The mission line runs as written.
    mission = cnndsl.parse("INPUT -> [(CONV3-64 -> RELU)*2 -> POOL]*5 -> FC-4096").analyze()
    assert mission.ok and mission.input_shape == (3, 224, 224)
    assert [d.severity for d in mission.diagnostics] == ["note"]
    assert "3×224×224" in mission.diagnostics[0].message
    given = cnndsl.parse("INPUT -> CONV3-8 -> POOL").analyze(input=(1, 16, 16))
    assert given.output_shape == (8, 8, 8) and not given.diagnostics
    path = tmp_path / "bare.yaml"
    path.write_text("input: [3, 32, 32]\nnet: INPUT -> CONV3-8 -> POOL\n")
    from_spec = cnndsl.load(path).analyze()
    assert from_spec.output_shape == (8, 16, 16) and not from_spec.diagnostics


@pytest.mark.parametrize("name", ["conv3", "Pool2", "CONV1x7", "fc10"])
def test_a_block_may_not_hide_a_layer(name):
    # `conv3 = ...` would otherwise silently replace every CONV3-… in the net.
    with pytest.raises(CnnDslError, match="would hide the layer"):
        cnndsl.parse(f"{name} = RELU\nINPUT(3, 8, 8) -> {name}").analyze()


def test_a_block_named_like_a_word_with_digits_is_fine():
    assert cnndsl.parse("stage1 = CONV3-8 -> RELU\nINPUT(3, 8, 8) -> stage1").analyze().ok


def test_expressions_are_bounded():
    with pytest.raises(CnnDslError, match="is larger than"):
        cnndsl.parse("b(n) = CONV3-{n*n*n*n*n}\nINPUT(3, 8, 8) -> b(99999)").analyze()


def test_names_ending_in_a_digit_are_counted_after_an_underscore():
    # `relu61` would read as the 61st relu; the reference: `relu6_1`, `stage1_2`.
    net = layers("stage1 = CONV3-4 -> RELU6\nINPUT(3, 8, 8) -> stage1 -> stage1 -> RELU6")
    assert {"stage1_1.conv1", "stage1_2.relu6_1", "relu6_1"} <= set(net)


# --- 4.5 A label on a repetition names the group ------------------------------------------

BASIC = "basic(c) = RES(CONV3-c -> BN -> RELU -> CONV3-c -> BN) -> RELU\n"


def test_a_label_on_a_repeated_call_names_the_group():
    # As `layer1: stage(64, 3, 1)` in specs/resnet50.yaml names its layers: the copies are
    # counted inside the label, so layer1.basic2.res1.conv1 is torchvision's layer1.1.conv1.
    repeated = layers(BASIC + "INPUT(64, 8, 8) -> layer1: basic(64)*2 -> GAP")
    via_block = layers(BASIC + "stage(c) = basic(c)*2\nINPUT(64, 8, 8) -> layer1: stage(64) -> GAP")
    assert list(repeated) == list(via_block)
    assert {"layer1.basic1.res1.conv1", "layer1.basic2.res1.conv1", "layer1.basic2.relu1", "gap1"} <= set(repeated)


def test_a_label_on_a_nested_repetition_or_a_repeated_layer():
    net = layers(BASIC + "INPUT(8, 4, 4) -> layer1: basic(8)*2*2 -> head: FC-10*2 -> FC-3")
    assert [n for n in net if n.endswith("res1.conv1")] == [f"layer1.basic{i}.res1.conv1" for i in (1, 2, 3, 4)]
    assert [n for n in net if "fc" in n] == ["head.fc1", "head.fc2", "fc1"]


def test_a_labelled_repetition_inside_a_block_and_its_compiled_names():
    text = BASIC + "stage(c, n) = CONV3-c -> blocks: basic(c)*n\nINPUT(3, 8, 8) -> layer1: stage(8, 2)"
    names = set(layers(text))
    assert {"layer1.conv1", "layer1.blocks.basic1.res1.conv1", "layer1.blocks.basic2.res1.conv2"} <= names
    state = cnndsl.parse(text).compile().state_dict()
    assert "layer1.blocks.basic2.res1.conv2.weight" in state


def test_two_groups_with_one_label_still_name_two_layers():
    with pytest.raises(CnnDslError, match="'a.basic1.res1.conv1' names two layers"):
        cnndsl.parse(BASIC + "INPUT(8, 4, 4) -> a: basic(8)*2 -> a: basic(8)*2").analyze()


# --- 4.5 A label becomes a module's attribute ------------------------------------------


@pytest.mark.parametrize("label", ["class", "lambda", "train", "training", "forward", "to",
                                   "graph", "self", "torch", "_modules"])
def test_a_label_a_module_cannot_hold_is_refused_at_the_label(label):
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse(f"INPUT(3, 8, 8) -> {label}: CONV3-8 -> GAP")
    assert caught.value.span.col == len("INPUT(3, 8, 8) -> ") + 1
    assert f"'{label}'" in caught.value.message


def test_the_reserved_labels_are_the_names_torch_modules_use():
    """The list in the (torch-free) parser, checked against torch itself: every public
    attribute of nn.Module and fx.GraphModule, class or instance, is reserved."""
    torch = pytest.importorskip("torch", reason="the list is checked against torch's modules")
    from torch import fx

    from cnndsl.lang.parser import RESERVED_LABELS

    graph = fx.Graph()
    graph.output(graph.placeholder("x"))
    module = fx.GraphModule(torch.nn.Module(), graph)
    used = {n for n in set(dir(module)) | set(vars(module)) if not n.startswith("_")}
    assert used <= RESERVED_LABELS, sorted(used - RESERVED_LABELS)


def test_an_ordinary_label_still_compiles():
    pytest.importorskip("torch", reason="compiles the network")
    state = cnndsl.parse("INPUT(3, 8, 8) -> features: CONV3-8 -> head: FC-2").compile().state_dict()
    assert {"features.weight", "head.weight"} <= set(state)
