"""Fuzzing: no spec, however broken, gets anything but a `CnnDslError` out of cnndsl.

Valid DSL texts and YAML specs are mutated at random (tokens and characters deleted,
duplicated, swapped, replaced; characters of the DSL's alphabet and layer names,
block names and numbers — 0 and huge ones too — inserted) and run through
`cnndsl.parse(...).analyze()`, `cnndsl.load(...)` and `cnndsl analyze`. Whatever
happens, the only exception allowed is `cnndsl.CnnDslError`, and its `str()` — the
diagnostic with its caret — must format.

CI runs a few thousand cases per seed corpus (about half a minute in all). For a
longer hunt:

    python tests/test_fuzz.py --examples 100000
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnndsl
from cnndsl import CnnDslError
from cnndsl.cli import main
from helpers import VGG16_YAML

# Small enough that a mutation can never make CI slow, large enough for every seed.
MAX_LAYERS = 3000
EXAMPLES = int(os.environ.get("CNNDSL_FUZZ_EXAMPLES", "0")) or None  # None: each test's own

# --- seed corpora: valid specs ----------------------------------------------------

DSL_SEEDS = {
    "vgg": "INPUT(3, 224, 224) -> [(CONV3-64 -> RELU)*2 -> POOL]*5 -> FC-4096 -> RELU -> DROPOUT -> FC-10",
    "alexnet": "INPUT[227x227x3] -> CONV11-96/4(pad=0) -> RELU -> LRN -> POOL3/2 -> "
               "CONV5-256(groups=2) -> RELU -> POOL3/2 -> CONV3-384 -> FC-4096 -> DROPOUT(0.3) -> FC-1000 -> SOFTMAX",
    "inception": "INPUT(192, 28, 28) -> CONCAT(CONV1-64 -> RELU,\n"
                 "       CONV1-96 -> RELU -> CONV3-128 -> RELU,\n"
                 "       CONV1-16 -> RELU -> CONV5-32 -> RELU,\n"
                 "       POOL3/1(pad=1) -> CONV1-32 -> RELU) -> GAP -> FC-10",
    "resnet": "basic(c) = RES(CONV3-c -> BN -> RELU -> CONV3-c -> BN) -> RELU\n"
              "down(c) = ADD(CONV3-c/2 -> BN -> RELU -> CONV3-c -> BN,\n"
              "              CONV1-c/2 -> BN) -> RELU\n"
              "INPUT(3, 32, 32) -> CONV3-16 -> BN -> RELU -> basic(16)*2 -> down(32) -> basic(32)\n"
              "  -> GAP -> FC-10",
    "blocks": "# a small CIFAR-10 net\n"
              "unit(c) = (CONV3-c -> BN -> RELU)*2 -> POOL\n"
              "bottle(m, c, s) = ADD(CONV1-m -> BN -> RELU -> CONV{2+1}-m/s -> BN -> RELU -> CONV1-{4*m} -> BN,\n"
              "                      CONV1-c/s -> BN) -> RELU\n"
              "dense = CONCAT(ID, BN -> RELU -> CONV3-8)\n"
              "INPUT(3, 32, 32) -> unit(32) -> bottle(8, 32, 1) -> dense*3 -> unit({64 - 2*8})\n"
              "  -> fc6: FC-256 -> LRELU(0.1) -> DROPOUT -> FC-10",
    "misc": "input(1, 28, 28) -> conv5x3-6(stride=1, pad=2, dilation=1, bias=false) -> tanh -> "
            "avgpool2 -> maxpool3/1(ceil=true) -> CONV3-8(dilation=2) -> ELU -> GELU -> RELU6 -> "
            "SIGMOID -> FLATTEN -> BN(eps=0.001) -> FC-10(bias=true) -> ID",
    "misfit": "INPUT(3, 7, 7) -> CONV3-8/3(pad=0) -> RELU -> POOL(ceil=true)",
}

YAML_SEEDS = {
    "vgg": VGG16_YAML,
    "plain": """\
name: tiny
input: [1, 8, 8]
fit: strict
net: CONV3-4 -> BN -> RELU -> POOL -> FC-10
""",
    "quoted": """\
name: quoted
blocks:
  "resid(c)": "RES(CONV3-c -> BN -> RELU -> CONV3-c -> BN) -> RELU"
  stem: >
    CONV3-16 -> BN
    -> RELU
net: "INPUT(3, 16, 16) -> stem -> resid(16)*2 -> GAP -> FC-10"
""",
    "labels": """\
name: labels
input: [3, 32, 32]
net: |
  conv1: CONV5-6 -> RELU -> POOL   # LeNet-ish
  -> conv2: CONV5-16(pad=0) -> RELU -> POOL
  -> fc6: FC-120 -> RELU -> fc7: FC-84 -> FC-10
""",
}

BLOCK_NAMES = ["basic", "down", "unit", "bottle", "dense", "stage", "res", "stem", "c", "m", "s", "n"]
LAYER_WORDS = ["CONV", "CONV3-64", "CONV1x7-32", "CONV3-8/2", "POOL", "POOL3/2", "MAXPOOL", "AVGPOOL",
               "GAP", "FC", "FC-10", "FC-0", "RES", "CONCAT", "ADD", "INPUT", "INPUT(3,8,8)",
               "INPUT[8x8x3]", "BN", "RELU", "LRELU", "DROPOUT", "LRN", "FLATTEN", "ID", "SOFTMAX",
               "true", "false", "pad", "stride", "dilation", "groups", "bias", "ceil", "p", "eps"]
NUMBERS = ["0", "1", "2", "3", "7", "-1", "0.5", "1e9", "1000", "65536", "4294967297",
           "99999999999999999999", "1" + "0" * 40]
DSL_ALPHABET = "()[]{}->*/,=:#0123456789xX. \n"
YAML_WORDS = ["net:", "blocks:", "input:", "fit:", "strict", "name:", "train:", "|", ">", '"', "'",
              "- ", "  ", "\t", "&a ", "*a", "!!str ", "!!python/object/apply:os.system ", "{", "}",
              "[", "]", ":", "---", "...", "\\", "%"]

TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|->|//|[ \t]+|\n|.", re.S)


def mutants(seed: str, extra_words=()):
    """Strategy: `seed` with one to eight random token or character mutations."""
    words = [*LAYER_WORDS, *BLOCK_NAMES, *NUMBERS, *extra_words]
    pieces = st.one_of(st.sampled_from(words), st.sampled_from(list(DSL_ALPHABET)),
                       st.text(alphabet=DSL_ALPHABET, min_size=1, max_size=4))

    @st.composite
    def build(draw):
        tokens = TOKEN.findall(seed)
        for _ in range(draw(st.integers(1, 8))):
            if draw(st.booleans()):  # work on characters rather than tokens
                tokens = list("".join(tokens))
            op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "replace"]))
            if not tokens:
                op = "insert"
            i = draw(st.integers(0, max(len(tokens) - 1, 0)))
            if op == "delete":
                del tokens[i]
            elif op == "duplicate":
                tokens.insert(i, tokens[i])
            elif op == "swap":
                j = draw(st.integers(0, len(tokens) - 1))
                tokens[i], tokens[j] = tokens[j], tokens[i]
            elif op == "insert":
                tokens.insert(i, draw(pieces))
            else:
                tokens[i] = draw(pieces)
        return "".join(tokens)

    return build()


# --- what must hold for every input ----------------------------------------------

def _check_error(e: CnnDslError) -> None:
    text = str(e)  # the full diagnostic with its caret: must format
    assert text and e.message
    for d in e.diagnostics:
        d.to_dict()
        if d.span is not None:
            assert text.count("\n") >= 2 and e.line >= 1 and e.col >= 1
            assert 0 <= d.span.start <= d.span.end <= len(d.span.source.text) + 1


def _check_analysis(analysis) -> None:
    for d in analysis.diagnostics:
        d.format()
    if analysis.ok:
        json.dumps(analysis.to_dict())


def check_text(text: str) -> None:
    try:
        _check_analysis(cnndsl.parse(text).analyze(max_layers=MAX_LAYERS))
    except CnnDslError as e:
        _check_error(e)


def check_yaml(text: str, path: Path) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        _check_analysis(cnndsl.load(path).analyze(max_layers=MAX_LAYERS))
    except CnnDslError as e:
        _check_error(e)


def check_cli(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["analyze", "--max-layers", str(MAX_LAYERS), *argv])
        except SystemExit as e:  # argparse: a usage error
            status = e.code
    assert status in (0, 1, 2), status
    assert "Traceback" not in err.getvalue()
    if status == 1 and "--json" in argv:
        assert any(d["severity"] == "error" for d in json.loads(out.getvalue())["diagnostics"])
    elif status == 1:
        assert ": error: " in err.getvalue()


# --- the tests ------------------------------------------------------------------

def _fuzz(strategy, examples: int):
    """A hypothesis test over `strategy` (its example count overridable from the
    command line, see the bottom of the file)."""
    def decorate(check):
        return settings(max_examples=EXAMPLES or examples, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))(given(strategy)(check))
    return decorate


@pytest.mark.parametrize("seed", sorted(DSL_SEEDS))
def test_dsl_seeds_are_valid(seed):
    analysis = cnndsl.parse(DSL_SEEDS[seed]).analyze()
    assert analysis.ok, [d.format() for d in analysis.diagnostics]


@pytest.mark.parametrize("seed", sorted(YAML_SEEDS))
def test_yaml_seeds_are_valid(seed, tmp_path):
    path = tmp_path / f"{seed}.yaml"
    path.write_text(YAML_SEEDS[seed], encoding="utf-8")
    assert cnndsl.load(path).analyze().ok


def _dsl_test(seed: str):
    @_fuzz(mutants(DSL_SEEDS[seed]), examples=700)
    def test(text):
        check_text(text)
    return test


test_fuzz_dsl_vgg = _dsl_test("vgg")
test_fuzz_dsl_alexnet = _dsl_test("alexnet")
test_fuzz_dsl_inception = _dsl_test("inception")
test_fuzz_dsl_resnet = _dsl_test("resnet")
test_fuzz_dsl_blocks = _dsl_test("blocks")
test_fuzz_dsl_misc = _dsl_test("misc")
test_fuzz_dsl_misfit = _dsl_test("misfit")


def _yaml_test(seed: str):
    @_fuzz(mutants(YAML_SEEDS[seed], YAML_WORDS), examples=400)
    def test(text):
        with tempfile.TemporaryDirectory() as folder:
            check_yaml(text, Path(folder) / "spec.yaml")
    return test


test_fuzz_yaml_vgg = _yaml_test("vgg")
test_fuzz_yaml_plain = _yaml_test("plain")
test_fuzz_yaml_quoted = _yaml_test("quoted")
test_fuzz_yaml_labels = _yaml_test("labels")


@_fuzz(st.sampled_from(sorted(DSL_SEEDS)).flatmap(lambda s: mutants(DSL_SEEDS[s])), examples=300)
def test_fuzz_cli_inline(text):
    check_cli(["--json", "--", text] if "\n" in text else ["--", text])


FLAGS = st.lists(st.sampled_from(["--strict", "--json", "--input", "3,8,8", "1,1,1", "--batch", "0",
                                  "7", "--optimizer", "adam", "nope", "--max-layers", "-x", "0,0,0"]),
                 max_size=4)


@_fuzz(st.tuples(st.sampled_from(sorted(YAML_SEEDS)).flatmap(lambda s: mutants(YAML_SEEDS[s], YAML_WORDS)),
                 FLAGS), examples=200)
def test_fuzz_cli_yaml(case):
    text, flags = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(text, encoding="utf-8")
        check_cli([str(path), *flags])


# --- bombs: refused at once, by the layer limit --------------------------------------

REPEAT_BOMB = "INPUT(3,8,8) -> (((CONV3-8)*1000)*1000)*1000"
BLOCK_BOMB = "".join(f"b{i} = b{i + 1} -> b{i + 1}\n" for i in range(40)) + "b40 = CONV3-8\nINPUT(3,8,8) -> b0"


@pytest.mark.parametrize("text", [REPEAT_BOMB, BLOCK_BOMB], ids=["repeat", "blocks"])
def test_bombs_are_refused_by_the_layer_limit(text):
    with pytest.raises(CnnDslError, match=r"more than the limit of 100,000 \(raise it with --max-layers\)"):
        cnndsl.parse(text).analyze()


@pytest.mark.parametrize("text", [REPEAT_BOMB, BLOCK_BOMB], ids=["repeat", "blocks"])
def test_bombs_are_refused_by_the_command(text, capsys):
    assert main(["analyze", text]) == 1
    err = capsys.readouterr().err
    assert "layers, more than the limit of 100,000" in err and err.startswith("<inline>:")


def test_max_layers_raises_and_lowers_the_limit(capsys):
    text = "INPUT(1, 4, 4) -> (RELU -> ID)*60"   # 120 layers
    assert main(["analyze", "--json", "--max-layers", "100", text]) == 1
    out = json.loads(capsys.readouterr().out)
    assert "this expands to 120 layers, more than the limit of 100" in out["diagnostics"][0]["message"]
    assert main(["analyze", "--json", "--max-layers", "120", text]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["layers"] == 120


# --- script mode: longer runs -----------------------------------------------------

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Fuzz cnndsl for longer than CI does.")
    parser.add_argument("--examples", type=int, default=100_000, help="examples per seed corpus")
    parser.add_argument("-k", default="test_fuzz_", help="which tests (pytest -k), e.g. 'yaml'")
    args = parser.parse_args()
    os.environ["CNNDSL_FUZZ_EXAMPLES"] = str(args.examples)
    sys.exit(pytest.main([__file__, "-q", "-k", args.k, "-p", "no:cacheprovider"]))
