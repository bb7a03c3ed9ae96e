"""`cnndsl completion bash|zsh`: the scripts complete what the parser and the zoo hold.

The bash script is run for real: bash sources it and calls its completion function with
COMP_WORDS set as bash would, in an empty folder, so files add nothing unasked. The
expected words come from the parser itself (its commands, flags and choices) and from
the zoo's files, not from a list written here.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from cnndsl.cli import build_parser
from cnndsl.resources import zoo_specs
from cnndsl.training.sources import SOURCES

from helpers import ROOT, run_without_torch

pytest.importorskip("shtab", reason="shtab is a dependency of cnndsl: pip install -e .")


def script(shell: str) -> str:
    return subprocess.run([sys.executable, "-m", "cnndsl", "completion", shell], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    if not shutil.which("bash"):
        pytest.skip("NO BASH on this machine: the bash completion script is not tested")
    path = tmp_path_factory.mktemp("completion") / "cnndsl.bash"
    path.write_text(script("bash"))
    return path


def complete(bash_script, tmp_path, *words: str) -> set[str]:
    """What bash offers for the last of `words` (the word being typed, maybe empty)."""
    line = " ".join(f"'{w}'" for w in ("cnndsl", *words))
    run = (f"source '{bash_script}'; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
           f"_shtab_cnndsl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    out = subprocess.run(["bash", "-c", run], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_completes(bash_script, tmp_path):
    assert complete(bash_script, tmp_path, "") == set(subcommands())


def test_a_spec_completes_to_zoo_names_and_files(bash_script, tmp_path):
    expected = {name for name in zoo_specs() if name.startswith("resnet")}
    assert len(expected) >= 5          # resnet18 … resnet152 and the block examples
    assert complete(bash_script, tmp_path, "analyze", "resnet") == expected
    (tmp_path / "resnet_mine.yaml").write_text("")
    assert complete(bash_script, tmp_path, "draw", "resnet") == expected | {"resnet_mine.yaml"}


def test_flags_of_each_command_complete(bash_script, tmp_path):
    for name, parser in subcommands().items():
        flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        assert complete(bash_script, tmp_path, name, "--") == flags, name


def test_data_completes_to_its_forms(bash_script, tmp_path):
    offered = complete(bash_script, tmp_path, "train", "lenet5", "--data", "")
    assert offered == {kind + (":" if s.arg == "dir" else "") for kind, s in SOURCES.items()}
    assert complete(bash_script, tmp_path, "train", "lenet5", "--data", "ci") == {"cifar10:"}


def test_choices_complete(bash_script, tmp_path):
    assert complete(bash_script, tmp_path, "analyze", "lenet5", "--optimizer", "ada") == {"adam", "adamw"}


def test_zsh_script_is_valid_zsh():
    if not shutil.which("zsh"):
        pytest.skip("NO ZSH on this machine: the zsh completion script is not checked "
                    "(apt-get install zsh)")
    text = script("zsh")
    assert text.startswith("#compdef cnndsl")
    checked = subprocess.run(["zsh", "-n"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert all(name in text for name in zoo_specs())


def test_completion_imports_no_torch():
    result = run_without_torch("completion", "bash")
    assert result.returncode == 0, result.stderr
    assert "_cnndsl_spec" in result.stdout
