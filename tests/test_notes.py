"""The lecture notes' worked examples, each
checked against the number the notes print. Line numbers cite the notes."""
import pytest

import cnndsl


def analyze(text, **kw):
    analysis = cnndsl.parse(text).analyze(**kw)
    assert analysis.ok, [d.format() for d in analysis.diagnostics]
    return analysis


def last(analysis):
    return analysis.layers()[-1]


def test_ten_5x5_filters_on_32x32x3():
    # Notes: "Input volume: 32x32x3, 10 5x5 filters with stride 1, pad 2 ... 32x32x10",
    # "each filter has 5*5*3 + 1 = 76 params => 76*10 = 760".
    conv = last(analyze("INPUT[32x32x3] -> CONV5-10(stride=1, pad=2)"))
    assert conv["output"] == [10, 32, 32]
    assert conv["params"] == 760
    # The default pad is the notes' size-preserving (F-1)/2 = 2.
    assert last(analyze("INPUT[32x32x3] -> CONV5-10"))["params"] == 760


def test_alexnet_conv1_and_parameter_sharing():
    # Notes: "(227 - 11)/4 + 1 = 55 ... output volume had size [55x55x96]",
    # "290400 * 364 = 105,705,600 parameters", "34,944 parameters (+96 biases)".
    conv = last(analyze("INPUT[227x227x3] -> CONV11-96/4(pad=0)"))
    assert conv["output"] == [96, 55, 55]
    assert conv["params"] == 34_944
    assert conv["unshared_params"] == 105_705_600
    assert conv["rf"] == 11


@pytest.mark.parametrize("stride, side", [(1, 5), (2, 3)])
def test_7x7_input_3x3_filter(stride, side):
    # Notes: "7x7 input, assume 3x3 filter => 5x5 output"; "with stride 2 => 3x3 output".
    analysis = analyze(f"INPUT(1, 7, 7) -> CONV3-1/{stride}(pad=0)")
    assert last(analysis)["output"] == [1, side, side]
    assert analysis.diagnostics == []


def test_7x7_input_stride_3_does_not_fit():
    # Notes: "stride 3 => (7 - 3)/3 + 1 = 2.33 :\ doesn't fit!"
    analysis = cnndsl.parse("INPUT(1, 7, 7) -> CONV3-1/3(pad=0)").analyze()
    [warning] = analysis.diagnostics
    assert warning.severity == "warning"
    assert "(7 - 3 + 2·0)/3 + 1 = 2.33" in warning.message
    assert "the last row/column of the input is never read" in warning.message
    assert last(analysis)["output"] == [1, 2, 2]  # floored, as PyTorch does
    [error] = cnndsl.parse("INPUT(1, 7, 7) -> CONV3-1/3(pad=0)").analyze(strict=True).diagnostics
    assert error.severity == "error"


def test_pad_1_keeps_7x7():
    # Notes: "input 7x7, 3x3 filter, applied with stride 1, pad with 1 pixel border => 7x7 output!"
    assert last(analyze("INPUT(1, 7, 7) -> CONV3-1(pad=1)"))["output"] == [1, 7, 7]


def test_three_stacked_3x3_against_one_7x7():
    # Notes: "three stacked 3x3 have a 7x7 receptive field"; "C×(7×7×C) = 49C² parameters,
    # while the three 3x3 CONV layers would contain 3×(C×(3×3×C)) = 27C²"; "81% more".
    c = 64
    stacked = analyze(f"INPUT({c}, 32, 32) -> CONV3-{c}(bias=false)*3")
    single = analyze(f"INPUT({c}, 32, 32) -> CONV7-{c}(bias=false)")
    assert last(stacked)["rf"] == last(single)["rf"] == 7
    assert stacked.totals()["params"] == 27 * c * c
    assert single.totals()["params"] == 49 * c * c
    assert round(single.totals()["params"] / stacked.totals()["params"] - 1, 2) == 0.81


def test_fc_on_7x7x512_equals_conv7():
    # Notes: "an FC layer with K=4096 that is looking at some input volume of size 7×7×512
    # can be equivalently expressed as a CONV layer with F=7, P=0, S=1, K=4096".
    fc = analyze("INPUT(512, 7, 7) -> FC-4096")
    conv = analyze("INPUT(512, 7, 7) -> CONV7-4096(pad=0)")
    assert fc.totals()["params"] == conv.totals()["params"] == 7 * 7 * 512 * 4096 + 4096
    assert fc.totals()["macs"] == conv.totals()["macs"]
    assert last(conv)["output"] == [4096, 1, 1]


def test_cifar10_example_volumes():
    # Notes: "[INPUT - CONV - RELU - POOL - FC] ... With 12 filters, the output volume is
    # [32x32x12] ... POOL ... [16x16x12] ... FC ... [1x1x10]".
    layers = analyze("INPUT[32x32x3] -> CONV3-12 -> RELU -> POOL -> FC-10").layers()
    assert [l["output"] for l in layers[1:]] == [[12, 32, 32], [12, 32, 32], [12, 16, 16], [10]]


def test_six_5x5_filters_give_28x28x6():
    # Notes: "if we had 6 5x5 filters, we'll get 6 separate activation maps ... 28x28x6".
    assert last(analyze("INPUT[32x32x3] -> CONV5-6(pad=0)"))["output"] == [6, 28, 28]


def test_pool_2x2_stride_2_halves():
    # Notes: "filters of size 2×2 applied with a stride of 2 -- downsamples every depth slice by 2".
    assert last(analyze("INPUT(5, 224, 224) -> POOL"))["output"] == [5, 112, 112]
