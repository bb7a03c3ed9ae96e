"""Golden diagnostics: what `cnndsl analyze` prints on stderr for wrong specs.

Each case in tests/fixtures/diagnostics/ is a spec (`NAME.cnn` or `NAME.yaml`) and
`NAME.expected`, the exact text `cnndsl analyze NAME.cnn` writes to stderr: for every
diagnostic `file:line:col: severity: message`, the source line, and a caret line
under the text at fault (docs/language.md §6). The expected files were checked by
reading them, caret by caret, not merely copied from the program's output.

Exit status: 0 when the spec has no error (warnings allowed), 1 when it has errors,
2 for usage errors (a wrong flag, a missing file). To see what a case prints now:

    cd tests/fixtures/diagnostics && cnndsl analyze NAME.cnn
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

import cnndsl
from cnndsl import CnnDslError
from cnndsl.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "diagnostics"

# name: (arguments after the spec file, exit status)
CASES = {
    "unknown_layer": ([], 1),
    "unknown_option": ([], 1),
    "unclosed_bracket": ([], 1),
    "mismatched_bracket": ([], 1),
    "undefined_block": ([], 1),
    "undefined_block_typo": ([], 1),
    "block_arity": ([], 1),
    "recursion_direct": ([], 1),
    "recursion_mutual": ([], 1),
    "repeat_zero": ([], 1),
    "size_vanishes": ([], 1),
    "kernel_too_large": ([], 1),
    "concat_mismatch": ([], 1),
    "add_mismatch": ([], 1),
    "res_mismatch": ([], 1),
    "notes_misfit": ([], 0),                    # the notes' 2.33: a warning ...
    "notes_misfit_strict": (["--strict"], 1),   # ... and with --strict an error
    "input_flag_too_small": (["--input", "3,4,4"], 1),
    "bad_input_flag": (["--input", "3,32"], 2),
    "missing_file": ([], 2),                    # no spec file: the command names one that is not there
    "reserved_block_name": ([], 1),
    "yaml_syntax": ([], 1),
    "yaml_label_plain": ([], 1),
    "yaml_unknown_key": ([], 1),
    "yaml_python_tag": ([], 1),
    "yaml_python_tag_writes": ([], 1),
    "yaml_net_block": ([], 1),
    "yaml_net_plain": ([], 1),
    "yaml_net_quoted": ([], 1),
    "yaml_blocks_value": ([], 1),
    "yaml_fit_strict": ([], 1),
}

# Usage errors that argparse reports: the expected file holds the last line only.
ARGPARSE_CASES = {"bad_input_flag"}


def _spec(name: str) -> Path | None:
    found = [p for p in FIXTURES.glob(f"{name}.*") if p.suffix in (".cnn", ".yaml")]
    return found[0] if found else None


def run_case(name: str, folder: Path, capfd) -> tuple[int, str, str]:
    """`cnndsl analyze NAME.cnn ...` in `folder` (a copy of the spec is put there)."""
    args, _ = CASES[name]
    spec = _spec(name)
    if spec is not None:
        shutil.copy(spec, folder / spec.name)
    target = spec.name if spec is not None else "no_such_spec.yaml"
    try:
        status = main(["analyze", target, *args])
    except SystemExit as e:   # argparse's usage errors
        status = e.code
    out, err = capfd.readouterr()
    return status, out, err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps its usage line to the terminal
    return tmp_path


def test_every_fixture_is_a_case():
    names = {p.stem for p in FIXTURES.iterdir()}
    assert names == set(CASES), names ^ set(CASES)
    for name in CASES:
        assert (FIXTURES / f"{name}.expected").is_file(), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_diagnostic(name, in_tmp, capfd):
    status, out, err = run_case(name, in_tmp, capfd)
    expected = (FIXTURES / f"{name}.expected").read_text(encoding="utf-8")
    if name in ARGPARSE_CASES:
        # argparse prints its usage summary first, which grows with every new flag.
        assert err.startswith("usage: cnndsl analyze ")
        err = err.splitlines(keepends=True)[-1]
    assert err == expected
    assert status == CASES[name][1]
    if status == 0:
        assert "params (trainable)" in out    # the table is printed with the warnings
    else:
        assert out == ""
    # Nothing but the spec (a python tag must not run: `touch pwned`, `echo pwned`).
    assert sorted(p.name for p in in_tmp.iterdir()) == ([_spec(name).name] if _spec(name) else [])


@pytest.mark.parametrize("name", sorted(n for n, (_, status) in CASES.items() if status == 1))
def test_spec_errors_read_like_a_compilers(name, in_tmp, capfd):
    _, _, err = run_case(name, in_tmp, capfd)
    lines = err.splitlines()
    heads = [i for i, line in enumerate(lines) if re.match(r"\S+:\d+:\d+: (error|warning|note): ", line)]
    assert heads and heads[0] == 0 and any(": error: " in lines[i] for i in heads)
    for i in heads:   # each: the head, the source line, a caret line under it
        source, caret = lines[i + 1], lines[i + 2]
        col = int(lines[i].split(":")[2])
        assert source.startswith("    ") and re.fullmatch(r" {4}( *)\^+", caret)
        assert caret.index("^") == 4 + col - 1


def test_missing_file_is_one_line(in_tmp, capfd):
    status, _, err = run_case("missing_file", in_tmp, capfd)
    assert status == 2 and err == "error: no such spec file: no_such_spec.yaml\n"


# --- YAML: the line and column are the file's, also inside a string -------------------

def _where(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the one occurrence of `needle` in `text`."""
    assert text.count(needle) == 1, needle
    i = text.index(needle)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


@pytest.mark.parametrize("name, needle", [
    ("yaml_net_block", "padd=1"),               # net: |  (a block, with a comment on its header)
    ("yaml_net_plain", "POOLL"),                # net: a plain one-line string
    ("yaml_net_quoted", "CONV3-64/2(groups=3)"),  # net: "..." with a \t escape before it
    ("yaml_blocks_value", "}\nnet"),            # inside a `blocks:` value
    ("yaml_fit_strict", "CONV3-8/3(pad=0)"),
    ("yaml_unknown_key", "inputs"),
    ("yaml_python_tag", "!!python"),
    ("yaml_python_tag_writes", "!!python"),
])
def test_yaml_errors_point_at_the_files_line_and_column(name, needle):
    path = _spec(name)
    with pytest.raises(CnnDslError) as caught:
        cnndsl.load(path).analyze().raise_for_errors()
    assert (caught.value.line, caught.value.col) == _where(path.read_text(encoding="utf-8"), needle)
    assert str(caught.value).startswith(f"{path}:{caught.value.line}:{caught.value.col}: error: ")


def test_the_python_tag_payloads_are_real(tmp_path, monkeypatch):
    """The fixtures' tags do run code under an unsafe loader; cnndsl's refusal matters."""
    monkeypatch.chdir(tmp_path)
    text = _spec("yaml_python_tag_writes").read_text(encoding="utf-8")
    assert not (tmp_path / "pwned").exists()
    yaml.unsafe_load(text)
    assert (tmp_path / "pwned").exists()


# --- a name that is no join, written with chains in its parentheses -------------------------

def _error(text: str) -> CnnDslError:
    with pytest.raises(CnnDslError) as caught:
        cnndsl.parse(text).analyze()
    return caught.value


@pytest.mark.parametrize("text, message, where", [
    ("INPUT(3, 8, 8) -> FOO(CONV3-8, ID)",
     "unknown layer or block 'FOO'; the words that take chains in parentheses are "
     "CONCAT, ADD, RES, MUL, GATE", (1, 19)),
    ("INPUT(3, 8, 8) -> CONCT(CONV3-8, ID)", "unknown layer or block 'CONCT' — did you mean 'CONCAT'?", (1, 19)),
    ("INPUT(3, 8, 8)\n  -> RELU -> gatte(GAP -> CONV1-3 -> SIGMOID)",
     "unknown layer or block 'gatte' — did you mean 'GATE'?", (2, 14)),
    ("stage(c) = CONV3-c -> RELU\nINPUT(3, 8, 8) -> stagee(CONV3-8 -> RELU)",
     "unknown layer or block 'stagee' — did you mean the block 'stage'?", (2, 19)),
    ("INPUT(3, 8, 8) -> CONCAT(ID, foo(POOL3/1(pad=1), ID))", "unknown layer or block 'foo'", (1, 30)),
])
def test_an_unknown_name_with_chains_is_named_as_the_mistake(text, message, where):
    error = _error(text)
    assert error.message.startswith(message)
    assert (error.line, error.col) == where
    head, source, caret = str(error).splitlines()
    assert head.startswith(f"<inline>:{where[0]}:{where[1]}: error: unknown layer or block")
    name = message.split("'")[1]
    assert caret.strip() == "^" * len(name) and caret.index("^") == 4 + where[1] - 1


@pytest.mark.parametrize("text, message", [
    # A layer, or a block that is defined, given chains: the parser's own message stands.
    ("INPUT(3, 8, 8) -> RELU(CONV3-8)", "unexpected '-'"),
    ("INPUT(3, 8, 8) -> CONV3-8(pad=1 -> RELU)", "unexpected '->'"),
    ("stage(c) = CONV3-c\nINPUT(3, 8, 8) -> stage(CONV3-8, ID)", "unexpected '-'"),
    # An error after the parentheses are closed is not blamed on the name before them.
    ("INPUT(3, 8, 8) -> foo(3) x", "unexpected 'x'"),
])
def test_a_known_name_keeps_the_syntax_error(text, message):
    assert _error(text).message.startswith(message)


def test_an_unknown_name_with_chains_in_a_yaml_net_points_into_the_file(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("input: [3, 8, 8]\nnet: |\n  CONV3-8 -> RELU\n  -> SQUEEZE(GAP -> CONV1-8, ID)\n")
    with pytest.raises(CnnDslError) as caught:
        cnndsl.load(path)
    assert caught.value.message.startswith("unknown layer or block 'SQUEEZE'")
    assert (caught.value.line, caught.value.col) == (4, 6)


def test_the_yaml_blocks_are_known_when_the_net_is_parsed_with_them():
    # A YAML net is parsed apart from its blocks; given their names, parse_net does not
    # call a block written with chains unknown.
    from cnndsl.errors import Fragment, Source
    from cnndsl.lang.parser import parse_net

    text = "CONV3-8 -> stage(CONV3-8, ID)"
    fragment = Fragment(Source(text, None), text)
    with pytest.raises(CnnDslError, match="unknown layer or block 'stage'"):
        parse_net(fragment)
    with pytest.raises(CnnDslError, match="unexpected '-'"):
        parse_net(fragment, blocks={"stage"})
