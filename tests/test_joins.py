"""Joins (CONCAT, ADD, RES, MUL, GATE) are entries of the layer table, like layers: their shape rule,
cost, mismatch message, arity, fx emit and shorthands are declared there, and a new join
(or a new norm) is one `layers.register(Kind(...))`, with no other file touched."""
from __future__ import annotations

import copy
import dataclasses
import operator
import pickle

import pytest
import torch
from torch import fx

import cnndsl
from cnndsl import CnnDslError
from cnndsl.layers import KINDS, Kind, Opt, Opts, ShapeMismatch, Shorthand, join_words, numel, register


# --- the table's joins ------------------------------------------------------------------

def test_joins_are_table_entries_and_res_and_gate_are_shorthands():
    words = join_words()
    assert list(words) == ["CONCAT", "ADD", "RES", "MUL", "GATE"]
    assert all(words[name].kind is KINDS[name] for name in ("CONCAT", "ADD", "MUL"))
    for short, join in (("RES", "ADD"), ("GATE", "MUL")):
        word = words[short]
        assert word.kind is KINDS[join] and word.identity_branch and word.arity == (1, 1)
        assert [s.name for s in KINDS[join].shorthands] == [short]
    assert words["CONCAT"].arity == words["ADD"].arity == words["MUL"].arity == (1, None)


def test_res_is_an_add_node_written_res():
    analysis = cnndsl.parse("INPUT(8, 4, 4) -> RES(CONV3-8 -> BN)").analyze()
    row = {r["name"]: r for r in analysis.layers()}["res1"]
    assert row["kind"] == "ADD" and row["layer"] == "RES"
    assert row["inputs"] == ["res1.bn1", "input"]  # the identity branch comes last


def test_arity_comes_from_the_table():
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse("INPUT(3, 8, 8) -> RES(ID, ID)")
    assert caught.value.message == "RES takes one chain: RES(a) means ADD(a, ID)"
    assert cnndsl.parse("INPUT(3, 8, 8) -> ADD(ID) -> CONCAT(ID)").analyze().output_shape == (3, 8, 8)


def test_bn_absorbs_the_bias_by_its_entry():
    assert KINDS["BN"].absorbs_bias
    assert not any(k.absorbs_bias for name, k in KINDS.items() if name != "BN")


# --- each join against torch -------------------------------------------------------------

ELEMENTWISE = {operator.add, operator.mul, torch.add, torch.mul, torch.maximum}


class _CountElementwise(fx.Interpreter):
    """FLOPs of the joins as torch runs them: one per output element of each +, ×, max."""

    def __init__(self, module):
        super().__init__(module)
        self.flops = 0

    def call_function(self, target, args, kwargs):
        out = super().call_function(target, args, kwargs)
        if target in ELEMENTWISE:
            self.flops += out[0].numel()  # per image
        return out


JOIN_NETS = {
    "CONCAT": "INPUT(3, 9, 9) -> CONCAT(CONV1-2, ID, POOL3/1(pad=1) -> CONV3-5)",
    "ADD": "INPUT(3, 9, 9) -> ADD(CONV3-3, ID, TANH, CONV1-3 -> BN)",
    "RES": "INPUT(3, 9, 9) -> RES(CONV3-3 -> RELU -> CONV1-3)",
    "MUL": "INPUT(3, 9, 9) -> MUL(CONV3-3, ID, GAP -> CONV1-3 -> SIGMOID, TANH)",
    "GATE": "INPUT(3, 9, 9) -> GATE(GAP -> CONV1-2 -> RELU -> CONV1-3 -> HSIGMOID)",
}


@pytest.mark.parametrize("word", sorted(JOIN_NETS))
def test_join_shape_params_and_flops_agree_with_torch(word):
    assert set(JOIN_NETS) == set(join_words())
    spec = cnndsl.parse(JOIN_NETS[word])
    analysis = spec.analyze()
    model = spec.compile().eval()
    counter = _CountElementwise(model)
    out = counter.run(torch.randn(1, *analysis.input_shape))
    assert tuple(out.shape[1:]) == analysis.output_shape
    assert sum(p.numel() for p in model.parameters()) == analysis.totals()["params"]
    joins = [r for r in analysis.layers() if KINDS[r["kind"]].merge]
    assert counter.flops == sum(r["flops"] for r in joins)


@pytest.mark.parametrize("text, message", [
    ("INPUT(3, 8, 8) -> CONCAT(CONV3-4, POOL)",
     "CONCAT branches disagree in their heights and widths: branch 1 gives 4×8×8, branch 2 gives 3×4×4"),
    ("INPUT(3, 8, 8) -> ADD(CONV3-4, ID, CONV3-5)",
     "ADD branches disagree in their shapes: branch 1 gives 4×8×8, branch 2 gives 3×8×8; "
     "add a projection shortcut to branch 2: CONV1-4 -> BN"),
    ("INPUT(64, 56, 56) -> RES(CONV3-128/2 -> BN)",
     "RES's chain changes the shape 64×56×56 → 128×28×28, so its input cannot be added back; "
     "use a projection shortcut: ADD(..., CONV1-128/2 -> BN)"),
    # A squeeze-and-excitation written with ADD or RES: the hint is GATE / MUL, not a projection.
    ("INPUT(32, 8, 8) -> ADD(GAP -> CONV1-32 -> SIGMOID, ID)",
     "ADD branches disagree in their shapes: branch 1 gives 32×1×1, branch 2 gives 32×8×8; "
     "to multiply by a C×1×1 channel gate (squeeze-and-excitation) instead, write MUL(...), "
     "or GATE(a) for MUL(a, ID)"),
    ("INPUT(32, 8, 8) -> RES(GAP -> CONV1-32 -> SIGMOID)",
     "RES's chain changes the shape 32×8×8 → 32×1×1, so its input cannot be added back; "
     "to multiply it by the chain's 32×1×1 output (a channel gate, squeeze-and-excitation) "
     "instead, write GATE(...)"),
    ("INPUT(32, 8, 8) -> MUL(GAP -> CONV1-16, ID)",
     "MUL branches disagree in their shapes: branch 1 gives 16×1×1, branch 2 gives 32×8×8; "
     "MUL multiplies equal shapes, or a C×1×1 channel gate by a C×H×W volume: "
     "32×8×8 multiplies only 32×8×8 or 32×1×1 (a channel gate)"),
    # Branch 3 disagrees with the volume of branch 2 (branch 1 is its gate): the message says so.
    ("INPUT(32, 8, 8) -> MUL(GAP, ID, CONV3-32/2)",
     "MUL branches disagree in their shapes: branch 2 gives 32×8×8, branch 3 gives 32×4×4; "
     "MUL multiplies equal shapes, or a C×1×1 channel gate by a C×H×W volume: "
     "32×8×8 multiplies only 32×8×8 or 32×1×1 (a channel gate)"),
    ("INPUT(32, 8, 8) -> GATE(GAP -> FC-32)",
     "GATE's chain gives 32, which cannot multiply its input 32×8×8: "
     "GATE(a) needs a to give 32×8×8 or 32×1×1 (a channel gate)"),
])
def test_mismatch_names_both_shapes(text, message):
    [error] = cnndsl.parse(text).analyze().errors
    assert error.message == message


# --- a new join, registered in a scratch copy of the table --------------------------------

def _broadcast_shape(o, xs):
    out = xs[0]
    for i, x in enumerate(xs[1:], 2):
        if len(x) != len(out) or any(a != b and 1 not in (a, b) for a, b in zip(out, x)):
            raise ShapeMismatch("shapes", i)
        out = tuple(max(a, b) for a, b in zip(out, x))
    return out


def _emit_fold(fn_name):
    def emit(graph, xs, torch):
        out = xs[0]
        for x in xs[1:]:
            out = graph.call_function(getattr(torch, fn_name), (out, x))
        return out
    return emit


def _per_output(o, xs, y):
    return (len(xs) - 1) * numel(y)


# Not the table's MUL: this one broadcasts as torch does, any size-1 axis over any other.
PRODUCT = Kind("PRODUCT", "multiplies its branches, broadcasting as torch does", merge=True,
               shape=_broadcast_shape, flops=_per_output, emit=_emit_fold("mul"),
               shorthands=(Shorthand("WEIGH", "WEIGH(a) means PRODUCT(a, ID)", arity=(1, 1),
                                     identity_branch=True),))
MAX = Kind("MAX", "the element-wise maximum of its branches", merge=True, arity=(2, None),
           shape=_broadcast_shape, flops=_per_output, emit=_emit_fold("maximum"))
GN = Kind("GN", "group normalisation: GN(groups)", options=(Opt("groups", int, 1, low=1),),
          params=lambda o, x: 2 * x[0], flops=lambda o, x, y: 4 * numel(y), absorbs_bias=True,
          build=lambda o, x, m: m.nn.GroupNorm(o.groups, x[0]))


@pytest.fixture
def scratch_table():
    """`register` into the table for one test; the table is as it was afterwards."""
    saved = dict(KINDS)
    try:
        yield register
    finally:
        KINDS.clear()
        KINDS.update(saved)


def _module(model, name):
    return model.get_submodule(name)


def test_a_registered_join_parses_analyses_and_compiles(scratch_table):
    scratch_table(PRODUCT)
    spec = cnndsl.parse("INPUT(3,8,8) -> PRODUCT(CONV1-3, ID)")
    analysis = spec.analyze()
    assert analysis.ok and analysis.output_shape == (3, 8, 8)
    mul = {r["name"]: r for r in analysis.layers()}["product1"]
    assert mul["kind"] == "PRODUCT" and mul["inputs"] == ["product1.b1.conv1", "product1.b2.id1"]
    assert mul["flops"] == 3 * 8 * 8
    model = spec.compile().eval()
    x = torch.randn(2, 3, 8, 8)
    conv = _module(model, "product1.b1.conv1")
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias) * x
    torch.testing.assert_close(model(x), expected)
    counter = _CountElementwise(model)
    counter.run(x[:1])
    assert counter.flops == mul["flops"]


def test_a_registered_join_broadcasts_and_its_shorthand_adds_the_identity(scratch_table):
    scratch_table(PRODUCT)
    # Squeeze-and-excitation style: a C×1×1 gate times the C×H×W volume.
    spec = cnndsl.parse("INPUT(4, 6, 6) -> weigh(GAP -> CONV1-4 -> SIGMOID) -> "
                        "Product(ID, GAP -> CONV1-4, ID)")
    analysis = spec.analyze()
    assert analysis.ok and analysis.output_shape == (4, 6, 6)
    rows = {r["name"]: r for r in analysis.layers()}
    assert rows["weigh1"]["kind"] == "PRODUCT" and rows["weigh1"]["layer"] == "WEIGH"
    assert rows["weigh1"]["inputs"] == ["weigh1.sigmoid1", "input"]
    assert rows["product1"]["inputs"] == ["product1.b1.id1", "product1.b2.conv1", "product1.b3.id1"]
    assert rows["weigh1"]["flops"] == 4 * 6 * 6 and rows["product1"]["flops"] == 2 * 4 * 6 * 6
    model = spec.compile().eval()
    x = torch.randn(2, 4, 6, 6)
    gate = torch.sigmoid(_module(model, "weigh1.conv1")(x.mean((2, 3), keepdim=True))) * x
    scale = _module(model, "product1.b2.conv1")(gate.mean((2, 3), keepdim=True))
    torch.testing.assert_close(model(x), gate * scale * gate)


def test_a_registered_join_mismatch_names_both_shapes(scratch_table):
    scratch_table(PRODUCT)
    [error] = cnndsl.parse("INPUT(3, 8, 8) -> PRODUCT(CONV1-4, ID)").analyze().errors
    assert error.message == ("PRODUCT branches disagree in their shapes: branch 1 gives 4×8×8, "
                             "branch 2 gives 3×8×8")


def test_a_registered_join_is_reserved_and_has_its_arity(scratch_table):
    scratch_table(PRODUCT)
    scratch_table(MAX)
    with pytest.raises(CnnDslError, match=r"'product' is a reserved word: PRODUCT\(\.\.\.\) is a branch"):
        cnndsl.parse("product(c) = CONV3-c\nINPUT(3, 8, 8) -> product(3)")
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse("INPUT(3, 8, 8) -> MAX(ID)")
    assert caught.value.message == "MAX takes at least 2 chains: the element-wise maximum of its branches"
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse("INPUT(3, 8, 8) -> weigh(ID, ID)")
    assert caught.value.message == "WEIGH takes one chain: WEIGH(a) means PRODUCT(a, ID)"
    with pytest.raises(CnnDslError) as caught:   # the table's own GATE, likewise
        cnndsl.parse("INPUT(3, 8, 8) -> gate(ID, ID)")
    assert caught.value.message == "GATE takes one chain: GATE(a) means MUL(a, ID)"
    with pytest.raises(CnnDslError, match="CONCAT/ADD/RES/MUL/GATE/PRODUCT/WEIGH/MAX"):
        cnndsl.parse("INPUT(3, 8, 8) -> ")
    spec = cnndsl.parse("INPUT(3, 8, 8) -> MAX(CONV1-3, ID, RELU)")
    x = torch.randn(2, 3, 8, 8)
    model = spec.compile().eval()
    conv = _module(model, "max1.b1.conv1")
    torch.testing.assert_close(model(x), torch.maximum(torch.maximum(conv(x), x), torch.relu(x)))


def test_unregistering_frees_the_name():
    saved = dict(KINDS)
    try:
        register(PRODUCT)
        assert "PRODUCT" in join_words()
        with pytest.raises(CnnDslError, match="reserved word"):
            cnndsl.parse("product = ID\nINPUT(3, 8, 8) -> product")
    finally:
        KINDS.clear()
        KINDS.update(saved)
    assert cnndsl.parse("product = ID\nINPUT(3, 8, 8) -> product").analyze().ok  # a block name again


def test_a_registered_norm_absorbs_the_bias(scratch_table):
    scratch_table(GN)
    spec = cnndsl.parse("INPUT(3, 8, 8) -> CONV3-4 -> GN(2) -> CONV3-4 -> RELU")
    rows = {r["name"]: r for r in spec.analyze().layers()}
    assert rows["conv1"]["params"] == 3 * 9 * 4      # no bias: GN follows
    assert rows["conv2"]["params"] == 4 * 9 * 4 + 4
    model = spec.compile()
    assert model.conv1.bias is None and model.conv2.bias is not None
    assert sum(p.numel() for p in model.parameters()) == spec.analyze().totals()["params"]


def test_register_refuses_a_taken_name_and_a_join_without_emit(scratch_table):
    with pytest.raises(ValueError, match="already"):
        scratch_table(Kind("ADD", "again", merge=True, emit=_emit_fold("add")))
    with pytest.raises(ValueError, match="already"):   # the table's MUL and GATE are taken
        scratch_table(dataclasses.replace(PRODUCT, name="MUL", shorthands=()))
    with pytest.raises(ValueError, match="already"):
        scratch_table(Kind("TIMES", "times", merge=True, emit=_emit_fold("mul"),
                           shorthands=(Shorthand("GATE", "taken"),)))
    with pytest.raises(ValueError, match="already"):
        scratch_table(Kind("SUM", "sum", merge=True, emit=_emit_fold("add"),
                           shorthands=(Shorthand("RES", "taken"),)))
    with pytest.raises(ValueError, match="emit"):
        scratch_table(Kind("PROD", "no emit", merge=True))
    with pytest.raises(ValueError, match="upper-case"):
        scratch_table(Kind("prod", "lower case", merge=True, emit=_emit_fold("mul")))


# --- Opts ----------------------------------------------------------------------------------

def test_opts_missing_attribute_is_an_attribute_error():
    opts = Opts(stride=2, pad=None)
    assert opts.stride == 2 and opts.pad is None
    assert not hasattr(opts, "nope") and getattr(opts, "nope", 7) == 7
    with pytest.raises(AttributeError):
        opts.nope
    clone = copy.deepcopy(opts)
    assert clone == opts and type(clone) is Opts and clone.stride == 2
    assert pickle.loads(pickle.dumps(opts)) == opts
