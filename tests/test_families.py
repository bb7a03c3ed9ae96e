"""Families of networks: `x*N` with a free N, `x?`, `x*0`, `x*M as i`, and `cnndsl analyze`
of a family (docs/language.md §8; lang/family.py, analysis/family.py).

The expected member counts are derived by hand in each test from the values declared
(the product of the numbers of values) and from which members build the same network;
parameters and MACs of a member are checked against the notes' formulas written out.
"""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

import cnndsl
from cnndsl import CnnDslError
from cnndsl.analysis.family import Member, analyze_family, Limits, mark_pareto
from cnndsl.cli import main
from cnndsl.lang import family
from cnndsl.lang.expand import expand, variables_read
from cnndsl.lang.spec import load, resolve

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "specs" / "families" / "notes.yaml"

# The docs' small family: the notes' pattern with K = 0 and 16 filters.
SMALL = """\
input: [3, 32, 32]
family:
  N: 0..3
  M: 0..2
net: INPUT -> [(CONV3-16 -> RELU)*N -> POOL?]*M -> FC-10
"""


def spec_file(tmp_path: Path, text: str, name: str = "fam.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def family_of(tmp_path: Path, text: str, **options):
    return analyze_family(load(spec_file(tmp_path, text)), **options)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """`cnndsl ARGV...` in this process, argparse's usage errors included."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def layers(text: str, **values) -> list[tuple[str, dict]]:
    """(name, options) of every layer of `text` expanded with `values`."""
    graph = expand(cnndsl.parse(text).program, values=values)
    return [(name, dict(graph.nodes[name]["opts"])) for name in graph]


def kinds(text: str, **values) -> list[str]:
    graph = expand(cnndsl.parse(text).program, values=values)
    return [graph.nodes[n]["kind"].name for n in graph]


# --- the grammar ---------------------------------------------------------------------

def test_a_free_repeat_count_takes_the_members_value():
    text = "INPUT(3, 8, 8) -> (CONV3-8 -> RELU)*N -> FC-2"
    assert kinds(text, N=2) == ["INPUT", "CONV", "RELU", "CONV", "RELU", "FC"]
    assert kinds(text, N=0) == ["INPUT", "FC"]


def test_variables_stand_in_layer_numbers_and_kernel_braces():
    opts = dict(layers("INPUT(3, 16, 16) -> CONV{k}-c/s -> FC-{2*c}", k=5, c=8, s=2))
    assert (opts["conv1"]["kernel"], opts["conv1"]["filters"], opts["conv1"]["stride"]) == (5, 8, 2)
    assert opts["fc1"]["out"] == 16


def test_x_times_zero_is_absent_outside_families():
    with_zero = cnndsl.parse("INPUT(3, 32, 32) -> CONV3-16 -> (CONV3-16 -> RELU)*0 -> POOL").analyze()
    without = cnndsl.parse("INPUT(3, 32, 32) -> CONV3-16 -> POOL").analyze()
    assert [r["name"] for r in with_zero.layers()] == [r["name"] for r in without.layers()]
    assert with_zero.totals()["params"] == without.totals()["params"] == 3 * 3 * 3 * 16 + 16
    # a whole net of nothing: the output is the input (the identity)
    alone = cnndsl.parse("INPUT(3, 8, 8) -> CONV3-8*0").analyze()
    assert alone.ok and alone.output_shape == (3, 8, 8) and alone.totals()["layers"] == 0


def test_an_empty_chain_in_a_join_is_an_id_branch():
    analysis = cnndsl.parse("INPUT(16, 8, 8) -> RES((CONV3-16 -> RELU)*0)").analyze()
    assert analysis.ok
    assert [(r["name"], r["kind"], r["inputs"]) for r in analysis.layers()] == [
        ("input", "INPUT", []), ("res1.id1", "ID", ["input"]), ("res1", "ADD", ["res1.id1", "input"])]
    graph = expand(cnndsl.parse("INPUT(16, 8, 8) -> CONCAT(CONV1-8, POOL(stride=1, pad=0)?)").program,
                   values={"pool?": False})
    assert "concat1.b2.id1" in graph and analysis.output_shape == (16, 8, 8)


def test_a_negative_count_is_an_error_at_the_count():
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse("INPUT(3, 8, 8) -> CONV3-8*{0-1}").analyze()
    assert caught.value.message == "a repeat count must be at least 0, got -1"
    assert (caught.value.line, caught.value.col) == (1, 28)


def test_an_empty_body_repeated_a_trillion_times_costs_nothing():
    start = time.perf_counter()
    analysis = cnndsl.parse("INPUT(3, 8, 8) -> ((CONV3-8)*0)*1000000000000 -> FC-2").analyze()
    assert analysis.ok and time.perf_counter() - start < 5


def test_a_choice_is_one_value_in_every_repetition():
    text = "INPUT(3, 32, 32) -> [(CONV3-16 -> RELU)*2 -> POOL?]*3 -> FC-10"
    assert kinds(text, **{"pool?": True}).count("MAXPOOL") + kinds(text, **{"pool?": True}).count("POOL") == 3
    assert "POOL" not in kinds(text, **{"pool?": False}) and "MAXPOOL" not in kinds(text, **{"pool?": False})
    spec = cnndsl.parse(text)
    assert spec.program.choices == ("pool?",)
    # one choice, not one per copy: 2 members
    assert family.member_count(family.variables(spec.program, {}).values()) == 2


def test_a_choice_in_a_block_is_one_value_in_every_call():
    text = "stage(c) = CONV3-c -> POOL?\nINPUT(3, 32, 32) -> stage(8) -> stage(16) -> FC-10"
    names = [n for n, _ in layers(text, **{"pool?": True})]
    assert {"stage1.pool1", "stage2.pool1"} <= set(names)
    assert not any("pool" in n for n, _ in layers(text, **{"pool?": False}))


def test_choices_are_named_after_what_they_make_optional():
    spec = cnndsl.parse("INPUT(3, 32, 32) -> CONV3-8 -> POOL? -> RES(CONV3-8?) -> POOL? "
                        "-> (FC-64 -> RELU)? -> fc6: FC-10?")
    # two POOL? share a name, so both are numbered in the order written
    assert spec.program.choices == ("pool?1", "conv3?", "pool?2", "fc?", "fc6?")
    names = [n for n, _ in layers(spec.text, **{"pool?1": False, "pool?2": True, "conv3?": True,
                                                "fc?": False, "fc6?": True})]
    assert names == ["input", "conv1", "res1.conv1", "res1", "pool1", "fc6"]


def test_the_index_of_a_repetition_counts_its_copies_from_zero():
    text = "INPUT(3, 32, 32) -> [CONV3-{16 * 2**i} -> POOL]*3 as i -> FC-10"
    assert [o["filters"] for n, o in layers(text) if n.startswith("conv")] == [16, 32, 64]
    # nested: each repetition binds its own index; the inner one hides nothing here
    nested = "INPUT(3, 8, 8) -> [[CONV1-{10 * j + i + 1}]*2 as i]*2 as j"
    assert [o["filters"] for _, o in layers(nested)[1:]] == [1, 2, 11, 12]
    # a variable of the same name is hidden inside the repetition, as a block parameter is
    hidden = "INPUT(3, 8, 8) -> CONV1-{i + 1} -> CONV1-{i + 1}*2 as i"
    assert [o["filters"] for _, o in layers(hidden, i=7)[1:]] == [8, 1, 2]


def test_a_family_variable_is_seen_in_blocks_unless_a_parameter_hides_it():
    text = "b(c) = CONV3-c -> CONV3-w\nINPUT(3, 8, 8) -> b(4)"
    assert [o["filters"] for _, o in layers(text, c=99, w=6)[1:]] == [4, 6]


@pytest.mark.parametrize("expression, value", [
    ("-2**2 + 8", 4),          # ** binds tighter than unary minus, as in Python
    ("2**3**2 // 64", 8),      # and to the right: 2**9 = 512
    ("(1 + 1)**4", 16),
    ("3 * 2**0", 3),
])
def test_power_in_expressions(expression, value):
    assert layers(f"INPUT(3, 8, 8) -> FC-{{{expression}}}")[1][1]["out"] == value


def test_as_is_a_reserved_word():
    with pytest.raises(CnnDslError, match="unexpected 'as'"):
        cnndsl.parse("as(c) = CONV3-c\nINPUT(3, 8, 8) -> as(4)")


def test_an_undeclared_variable_is_an_error_at_its_use():
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse("INPUT(3, 8, 8) -> (CONV3-8 -> RELU)*N -> FC-2").analyze()
    assert caught.value.message.startswith("'N' is not defined; a family's variable is declared")
    assert (caught.value.line, caught.value.col) == (1, 37)


# --- declaring values ------------------------------------------------------------------

@pytest.mark.parametrize("flag, name, values", [
    ("N=1..3", "N", range(1, 4)),
    ("N = -1..1", "N", range(-1, 2)),
    ("c=16,32", "c", (16, 32)),
    ("c=16", "c", (16,)),
    ("pool?=yes", "pool?", (True,)),
    ("pool?2=no,yes", "pool?2", (False, True)),
    ("fc?=true,0", "fc?", (True, False)),
])
def test_set_flags_are_read(flag, name, values):
    got_name, variable = family.parse_set(flag)
    assert (got_name, tuple(variable.values)) == (name, tuple(values))


@pytest.mark.parametrize("flag, message", [
    ("N", "write --set NAME=VALUES"),
    ("N=", "the values of 'N' are written a..b"),
    ("N=3..1", "the range 3..1 of 'N' is empty"),
    ("N=a..b", "the values of 'N' are written a..b"),
    ("N=1.5", "the values of 'N' are written a..b"),
    ("N=2,2", "2 is listed twice in the values of 'N'"),
    ("N=" + "9" * 60, "a number with 60 digits is too large"),
    ("N=" + "9" * 20, "is larger than a variable may be"),
    ("2N=1", "is not a variable's name"),
    ("true=1", "'true' is a reserved word"),
    ("pool?=maybe", "a choice's values are yes and no"),
])
def test_bad_set_flags_are_one_line_errors(flag, message, capsys):
    with pytest.raises(CnnDslError) as caught:
        family.parse_set(flag)
    assert message in caught.value.message and caught.value.span is None
    status, out, err = cli(capsys, "analyze", "INPUT(3, 8, 8) -> CONV3-8*N -> FC-2", "--set", flag)
    assert status == 2 and out == ""
    assert f"argument --set: {caught.value.message.removeprefix(f'--set {flag}: ')}" in err


def test_set_of_a_name_the_net_does_not_use_is_an_error(capsys):
    status, _, err = cli(capsys, "analyze", "INPUT(3, 8, 8) -> CONV3-8*N -> FC-2", "--set", "n=1")
    assert status == 2
    assert err.strip() == ("error: --set n: the net has no variable 'n' — did you mean 'N'? "
                           "(its variables: N)")


def test_set_replaces_the_declared_values_and_adds_new_ones(tmp_path):
    spec = load(spec_file(tmp_path, SMALL))
    assert [v.count for v in family.variables(spec.program, spec.declared).values()] == [4, 3, 2]
    narrowed = spec.with_values([family.parse_set("N=1..2"), family.parse_set("pool?=yes")])
    variables = family.variables(narrowed.program, narrowed.declared)
    assert {n: tuple(v.values) for n, v in variables.items()} == {
        "N": (1, 2), "M": (0, 1, 2), "pool?": (True,)}
    assert variables["N"].span.line == 3   # still the declaration's place, for diagnostics


def yaml_error(tmp_path, text: str) -> CnnDslError:
    with pytest.raises(CnnDslError) as caught:
        spec = load(spec_file(tmp_path, text))
        analyze_family(spec, max_members=100_000)
    return caught.value


@pytest.mark.parametrize("text, message, line, col", [
    # an undeclared variable: at its use
    ("input: [3, 8, 8]\nfamily:\n  N: 0..2\nnet: CONV3-8*N -> FC-{w}\n", "'w' is not defined", 4, 23),
    # an empty range, an empty list, a bad value: at the values
    ("input: [3, 8, 8]\nfamily:\n  N: 2..0\nnet: CONV3-8*N -> FC-2\n",
     "the range 2..0 of 'N' is empty: write it low..high", 3, 6),
    ("input: [3, 8, 8]\nfamily:\n  N: []\nnet: CONV3-8*N -> FC-2\n", "'N' has no values", 3, 6),
    ("input: [3, 8, 8]\nfamily:\n  N: [1, x]\nnet: CONV3-8*N -> FC-2\n",
     "the values of 'N' are written a..b", 3, 6),
    ("input: [3, 8, 8]\nfamily:\n  N: {a: 1}\nnet: CONV3-8*N -> FC-2\n",
     "the values of 'N' are written a..b", 3, 6),
    ("input: [3, 8, 8]\nfamily:\n  pool?: [1, 2]\nnet: CONV3-8 -> POOL? -> FC-2\n",
     "a choice's values are yes and no", 3, 10),
    # declared but never used, a choice no `?` makes: at the declaration
    ("input: [3, 8, 8]\nfamily:\n  N: 0..2\n  c: 1\nnet: CONV3-8*N -> FC-2\n",
     "variable 'c' is declared, but the net never uses it", 4, 3),
    ("input: [3, 8, 8]\nfamily:\n  pol?: yes\nnet: CONV3-8 -> POOL? -> FC-2\n",
     "no '?' in the net makes a choice named 'pol?' — did you mean 'pool?'?", 3, 3),
    # the mapping itself, its names
    ("input: [3, 8, 8]\nfamily: [N]\nnet: CONV3-8 -> FC-2\n", "`family:` is a mapping", 2, 9),
    ("input: [3, 8, 8]\nfamily:\n  2x: 1\nnet: CONV3-8 -> FC-2\n", "is not a variable's name", 3, 3),
    ("input: [3, 8, 8]\nfamily:\n  N: 1\n  N: 2\nnet: CONV3-8*N -> FC-2\n",
     "variable 'N' is declared twice", 4, 3),
    # larger than --max-members: refused before any member is expanded, at the first declaration
    ("input: [3, 8, 8]\nfamily:\n  a: 0..99999999999999\n  b: 0..999999999999999\n"
     "net: CONV3-8*a -> FC-2*b\n",
     "this family has 100,000,000,000,000,000,000,000,000,000 members", 3, 3),
])
def test_bad_families_are_diagnostics_at_their_place(tmp_path, text, message, line, col):
    error = yaml_error(tmp_path, text)
    assert message in error.message
    assert (error.span.source.path, error.line, error.col) == (str(tmp_path / "fam.yaml"), line, col)
    assert str(error).startswith(f"{tmp_path / 'fam.yaml'}:{line}:{col}: error: ")


def test_a_question_mark_on_nothing_is_an_error_at_it():
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse("INPUT(3, 8, 8) -> (? -> RELU)")
    assert "'?' makes the layer or group just before it optional" in caught.value.message
    assert (caught.value.line, caught.value.col) == (1, 20)


def test_a_kernel_variable_that_fails_every_member_is_an_error_at_its_use(tmp_path, capsys):
    path = spec_file(tmp_path, "input: [3, 8, 8]\nfamily:\n  k: [0, -1]\n  n: 1..2\n"
                               "net: CONV{k}-8 -> RELU -> FC-10*n\n")
    status, out, err = cli(capsys, "analyze", path)
    assert status == 1
    assert err.splitlines()[0] == f"{path}:5:11: error: CONV's kernel must be at least 1, got 0"
    assert err.splitlines()[1:3] == ["    net: CONV{k}-8 -> RELU -> FC-10*n", " " * 14 + "^"]
    assert "note: in the member k=0, n=1, and 3 other members like it" in err
    assert "surviving: 0" in out


# --- members: counts, merging, pruning -----------------------------------------------------

def test_the_small_family_counted_by_hand(tmp_path):
    """N ∈ 0..3, M ∈ 0..2, one pool choice: 4·3·2 = 24 members. The same network:
    * every member with M = 0 (4·2 = 8), and those with N = 0 and no pool (M = 1, 2: 2) are
      INPUT -> FC-10: 10 members, 1 network;
    * N = 1, M = 2 without the pool is N = 2, M = 1 without it (two CONV -> RELU): 1 more.
    The rest are distinct: M ∈ {1, 2} × (N, pool) ∈ 4·2 − 1 = 7 each, 14, less the one
    pair: 13, and the plain FC-10: 14 distinct, 24 − 14 = 10 merged. At 32×32 two pools
    fit, so all survive."""
    result = family_of(tmp_path, SMALL)
    assert (result.total, result.analysed, len(result.members), result.duplicates) == (24, 24, 14, 10)
    assert len(result.survivors()) == 14 and not result.pruned()
    plain = next(m for m in result.members if m.layers == 1)
    assert plain.params == 3 * 32 * 32 * 10 + 10 and len(plain.duplicates) == 9


def test_the_notes_family_counted_by_hand():
    """specs/families/notes.yaml: N 0..3 (4), M 0..6 (7), K 0..2 (3), c (3), h (2), pool?
    (2): 4·7·3·3·2·2 = 1,008 members. A member is a body (the stages) and a head (the
    FC layers); bodies and heads that differ make different networks.
    * heads: K = 0 (h unused): 1; K = 1, 2 with h ∈ {128, 512}: 4. 5 heads.
    * bodies: empty (M = 0, or N = 0 without the pool): 1; pools only (N = 0 with the pool,
      M = 1..6, c unused): 6; convolutions (N = 1..3, M = 1..6, c, pool?): 3·6·3·2 = 108;
      a conv body's widths c, 2c, … and run length N tell N, M and c apart. 115 bodies.
    * 115 · 5 = 575 distinct networks; 1,008 − 575 = 433 merged.
    At 32×32, the six pools of M = 6 leave nothing: bodies with M = 6 and the pool, 1 of
    pools only and 3·3 with convolutions, 10 bodies · 5 heads = 50 pruned networks,
    525 surviving. At 224×224 all 575 survive, but the sixth pool of the 50 meets a 7×7
    input, (7 − 2)/2 + 1 = 3.5: they do not fit, and --strict prunes them."""
    spec = resolve("families/notes")
    small = analyze_family(spec)
    assert (small.total, len(small.members), small.duplicates) == (1008, 575, 433)
    assert {k: len(v) for k, v in small.pruned().items()} == {"vanishes": 50}
    assert len(small.survivors()) == 525
    large = analyze_family(spec, input=(3, 224, 224))
    assert len(large.survivors()) == 575 and sum(bool(m.misfits) for m in large.survivors()) == 50
    strict = analyze_family(spec, input=(3, 224, 224), strict=True)
    assert {k: len(v) for k, v in strict.pruned().items()} == {"misfit": 50}


def test_a_notes_member_equals_the_network_written_out():
    """N = 2, M = 3, K = 1, c = 32, h = 128, with the pool: the notes' formulas, per layer
    3·3·C_in·K + K params and H·W·K·3·3·C_in MACs for a size-keeping CONV3, in·out + out
    and in·out for FC."""
    spec = resolve("families/notes").with_values(
        [family.parse_set(s) for s in ("N=2", "M=3", "K=1", "c=32", "h=128", "pool?=yes")])
    assert spec.name == "notes_family[N=2,M=3,K=1,c=32,h=128,pool?=yes]"
    member = spec.analyze().totals()
    by_hand = cnndsl.parse(
        "INPUT(3, 32, 32) -> CONV3-32 -> RELU -> CONV3-32 -> RELU -> POOL"
        " -> CONV3-64 -> RELU -> CONV3-64 -> RELU -> POOL"
        " -> CONV3-128 -> RELU -> CONV3-128 -> RELU -> POOL -> FC-128 -> RELU -> FC-10").analyze().totals()
    convs = [(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (64, 128, 8), (128, 128, 8)]
    params = sum(9 * cin * k + k for cin, k, _ in convs) + (128 * 4 * 4 * 128 + 128) + (128 * 10 + 10)
    macs = sum(side * side * k * 9 * cin for cin, k, side in convs) + 128 * 4 * 4 * 128 + 128 * 10
    assert (member["params"], member["macs"]) == (by_hand["params"], by_hand["macs"]) == (params, macs)
    row = next(m for m in analyze_family(resolve("families/notes")).members
               if m.values == {"N": 2, "M": 3, "K": 1, "c": 32, "h": 128, "pool?": True})
    assert (row.params, row.macs) == (params, macs)


def test_members_that_read_the_same_values_are_one_network():
    program = resolve("families/notes").program
    values = {"N": 3, "M": 0, "K": 0, "c": 64, "h": 512, "pool?": True}
    assert variables_read(program, values) == {"M", "K"}
    assert variables_read(program, {**values, "M": 2, "K": 1}) == {"N", "M", "K", "c", "h", "pool?"}
    assert variables_read(program, {**values, "M": 2, "N": 0, "pool?": False}) == {"N", "M", "K", "pool?"}


PRUNING = {
    "invalid": ("input: [3, 8, 8]\nfamily:\n  k: [0, 3]\nnet: CONV{k}-8 -> FC-2\n", {}),
    "vanishes": ("input: [3, 8, 8]\nfamily:\n  M: 3..4\nnet: POOL*M -> FC-2\n", {}),
    "misfit": ("input: [3, 7, 7]\nfamily:\n  s: [1, 3]\nnet: CONV3-8/s(pad=0) -> FC-2\n",
               {"strict": True}),
    "shape": ("input: [3, 8, 8]\nfamily:\n  c: [3, 8]\nnet: RES(CONV3-c) -> FC-2\n", {}),
    "not_vector": ("input: [3, 8, 8]\nfamily:\n  K: 0..1\nnet: CONV3-8 -> FC-2*K\n", {}),
    "params": ("input: [3, 8, 8]\nfamily:\n  c: [4, 400]\nnet: CONV3-c -> FC-2\n",
               {"limits": Limits(params=1000)}),
    "macs": ("input: [3, 8, 8]\nfamily:\n  c: [4, 400]\nnet: CONV3-c -> FC-2\n",
             {"limits": Limits(macs=10_000)}),
    "memory": ("input: [3, 8, 8]\nfamily:\n  c: [4, 400]\nnet: CONV3-c -> FC-2\n",
               {"limits": Limits(memory=100_000)}),
}


@pytest.mark.parametrize("reason", sorted(PRUNING))
def test_every_pruning_reason(tmp_path, reason):
    """Each family has two members, and one value of its variable fails for `reason`:
    k = 0 is no kernel; four 2×2 pools leave nothing of 8×8; (7 − 3)/3 + 1 = 2.33 under
    strict; RES adds 8 channels to 3; K = 0 ends in a volume; with 400 filters,
    3·3·3·400 + 400 + 400·8·8·2 + 2 > 1,000 params, 8·8·400·27 > 10,000 MACs, and the
    conv's 400·8·8 fp32 activations alone are 102,400 bytes > 100,000."""
    text, options = PRUNING[reason]
    result = family_of(tmp_path, text, **options)
    [pruned] = [m for m in result.members if m.pruned]
    [kept] = result.survivors()
    assert pruned.pruned == reason and kept.pruned is None
    assert pruned.to_dict()["pruned"] and pruned.diagnostic.message


def test_pruned_counts_and_examples_are_listed_below_the_table(capsys):
    status, out, err = cli(capsys, "analyze", "families/notes")
    assert status == 0 and err == ""
    assert "pruned: 50 distinct members:" in out
    assert re.search(r"\n\s+50  a layer leaves no output; e\.g\. N=0, M=6, K=0, c=16, h=128, "
                     r"pool\?=yes at \S+notes\.yaml:\d+:\d+: POOL leaves no output", out)
    assert "the same network as another (merged): 433; distinct: 575" in out
    assert "surviving: 525" in out


# --- the Pareto front --------------------------------------------------------------------

def brute_force_front(members) -> set[int]:
    """The definition: no other member has params ≤ and MACs ≤, with one of them <."""
    return {id(p) for p in members
            if not any(q.params <= p.params and q.macs <= p.macs
                       and (q.params < p.params or q.macs < p.macs) for q in members)}


@pytest.mark.parametrize("seed", range(20))
def test_the_pareto_front_is_the_brute_force_one(seed):
    rng = random.Random(seed)
    members = [Member({}, params=rng.randint(1, 12), macs=rng.randint(1, 12))
               for _ in range(rng.randint(1, 40))]   # small numbers: many ties
    mark_pareto(members)
    assert {id(m) for m in members if m.pareto} == brute_force_front(members)


def test_the_pareto_front_of_the_notes_family():
    result = analyze_family(resolve("families/notes"), input=(3, 224, 224))
    survivors = result.survivors()
    assert {id(m) for m in survivors if m.pareto} == brute_force_front(survivors)
    capped = analyze_family(resolve("families/notes"), limits=Limits(params=10**6))
    front = [m for m in capped.survivors() if m.pareto]
    assert {id(m) for m in front} == brute_force_front(capped.survivors()) and front


# --- the command line --------------------------------------------------------------------

def test_json_lines(tmp_path, capsys):
    path = spec_file(tmp_path, SMALL.replace("M: 0..2", "M: 0..6"))
    status, out, err = cli(capsys, "analyze", path, "--json", "--max-params", "20k")
    lines = [json.loads(line) for line in out.splitlines()]
    *members, summary = lines
    assert status == 0 and err == ""
    for line in members:
        assert {"vars", "params", "macs", "pruned", "duplicates", "pareto"} <= set(line)
        assert set(line["vars"]) == {"N", "M", "pool?"}
    kept = [m for m in members if m["pruned"] is None]
    assert [m["macs"] for m in kept] == sorted(m["macs"] for m in kept)
    assert all(m["params"] <= 20_000 for m in kept)
    assert {m["pruned"] for m in members} == {None, "a layer leaves no output",
                                              "more params than --max-params"}
    assert summary["members"] == 4 * 7 * 2 == sum(1 + len(m["duplicates"]) for m in members)
    assert summary["distinct"] == len(members)


def test_a_sample_is_reproducible(capsys):
    def sample(seed):
        status, out, _ = cli(capsys, "analyze", "families/notes", "--json", "--sample", "40",
                             "--seed", seed)
        *members, summary = map(json.loads, out.splitlines())
        assert status == 0 and summary["analysed"] == 40 and summary["sampled"]
        return sorted(json.dumps(v, sort_keys=True) for m in members
                      for v in [m["vars"], *m["duplicates"]])
    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert len(sample(7)) == 40


def test_a_family_larger_than_max_members_may_be_sampled(tmp_path, capsys):
    path = spec_file(tmp_path, "input: [3, 8, 8]\nfamily:\n  a: 1..1000\n  b: 1..1000\n"
                               "net: CONV1-a -> FC-b\n")
    status, _, err = cli(capsys, "analyze", path)
    assert status == 1 and f"{path}:3:3: error: this family has 1,000,000 members" in err
    status, out, _ = cli(capsys, "analyze", path, "--sample", "5", "--json")
    assert status == 0 and json.loads(out.splitlines()[-1])["analysed"] == 5


def test_the_table(capsys):
    status, out, _ = cli(capsys, "analyze", "families/notes", "--input", "3,224,224")
    header = next(line for line in out.splitlines() if line.startswith("N "))
    assert header.split() == ["N", "M", "K", "c", "h", "pool?", "params", "MACs", "act.",
                              "memory", "RF", "covers", "Pareto"]
    assert "notes_family: a family of 1,008 networks, 3×224×224 input" in out
    assert "pruned: 0 distinct members" in out and "surviving: 575" in out
    assert "50 surviving members have layers that do not fit" in out


def test_a_family_of_one_member_is_a_network(tmp_path, capsys):
    path = spec_file(tmp_path, "input: [3, 8, 8]\nfamily:\n  N: 2\nnet: CONV3-8*N -> FC-2\n")
    assert [r["name"] for r in load(path).analyze().layers()] == ["input", "conv1", "conv2", "fc1"]
    status, out, _ = cli(capsys, "analyze", path)
    assert status == 0 and "params (trainable)" in out
    status, out, _ = cli(capsys, "analyze", "INPUT(3, 8, 8) -> CONV3-8*N -> POOL? -> FC-2",
                         "--set", "N=1", "--set", "pool?=no", "--json")
    assert status == 0 and json.loads(out)["name"] == "inline[N=1,pool?=no]"


def test_without_a_family_analyze_is_unchanged(capsys):
    status, out, _ = cli(capsys, "analyze", "INPUT(3, 8, 8) -> CONV3-8 -> FC-2", "--json")
    assert status == 0 and set(json.loads(out)) == {"name", "input", "output", "totals",
                                                    "layers", "diagnostics"}


def test_a_family_is_not_one_network_for_the_python_api():
    spec = cnndsl.parse("INPUT(3, 32, 32) -> CONV3-16 -> POOL? -> FC-10")
    with pytest.raises(CnnDslError) as caught:
        spec.analyze()
    assert caught.value.message.startswith("this spec is a family of 2 networks (pool?: no, yes)")
    assert "--set pool?=no" in caught.value.message and caught.value.col == 33


def test_train_refuses_a_family_and_says_how_to_pick_a_member(capsys):
    status, out, err = cli(capsys, "train", "families/notes")
    assert status == 2 and out == ""
    assert err.strip() == (
        "error: families/notes is a family of 1,008 networks (N: 0..3; M: 0..6; K: 0..2; "
        "c: 16, 32, 64; h: 128, 512; pool?: no, yes); train one of them by giving every "
        "variable one value, e.g. --set N=0 --set M=0 --set K=0 --set c=16 --set h=128 "
        "--set pool?=no (`cnndsl analyze families/notes` lists them)")


def test_a_member_compiles_to_the_counted_network():
    torch = pytest.importorskip("torch", reason="compiling a member needs torch")
    spec = resolve("families/notes").with_values(
        [family.parse_set(s) for s in ("N=1", "M=2", "K=1", "c=16", "h=128", "pool?=yes")])
    module = spec.compile()
    assert sum(p.numel() for p in module.parameters()) == spec.analyze().totals()["params"]
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_bundled_family_is_found_by_its_path_and_stays_out_of_the_zoo(capsys):
    assert resolve("families/notes").path == str(NOTES)
    status, out, _ = cli(capsys, "zoo")
    assert status == 0 and "notes_family" not in out and "families" not in out


def test_a_bare_input_in_a_family_notes_the_default_once(capsys):
    status, out, err = cli(capsys, "analyze", "INPUT -> CONV3-8*N -> FC-2", "--set", "N=1..3")
    assert status == 0 and err.count("note: a bare INPUT") == 1
    assert "3×224×224 input" in out
