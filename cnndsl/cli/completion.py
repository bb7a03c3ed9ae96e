"""`cnndsl completion bash|zsh`: a shell completion script, generated from the parser.

shtab writes the script from `build_parser()` itself, so every command and flag,
present and future, completes without anything written here. What an argument
completes *to* is said once, below, by its name or metavar: a spec (a zoo name or a
file), a `--data` source (its forms), a file, a folder.
"""
from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")

# shtab's names for its own file and folder completers, per shell.
FILE = {"bash": "_shtab_compgen_files", "zsh": "_files"}
DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}
SPEC = {"bash": "_cnndsl_spec", "zsh": "_cnndsl_spec"}
DATA = {"bash": "_cnndsl_data", "zsh": "_cnndsl_data"}

# An argument's completer by its dest (the flag or positional's name), else its metavar.
BY_DEST = {"spec": SPEC, "data": DATA, "checkpoint": FILE, "storage": None}
BY_METAVAR = {"FILE": FILE, "CKPT": FILE, "W": FILE, "SPEC": SPEC, "FAMILY": SPEC,
              "DIR": DIRECTORY, "RUN": DIRECTORY}


def add_parser(commands):
    p = commands.add_parser(
        "completion", help="print a bash or zsh completion script",
        description="Print a completion script for commands, flags, zoo names and --data forms. "
                    "bash: cnndsl completion bash > ~/.local/share/bash-completion/completions/cnndsl   "
                    "zsh: cnndsl completion zsh > ~/.zfunc/_cnndsl (a folder on $fpath, before compinit)")
    p.add_argument("shell", choices=SHELLS)
    return p


def run(args) -> int:
    import shtab

    from . import build_parser

    parser = build_parser()
    for action in _actions(parser):
        completer = _completer(action)
        if completer:
            action.complete = completer
    print(shtab.complete(parser, args.shell, preamble=_preamble(args.shell)))
    return 0


def _actions(parser: argparse.ArgumentParser):
    """Every argument of every subcommand."""
    for action in parser._actions:   # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):   # aliases share a parser
                yield from _actions(sub)
        else:
            yield action


def _completer(action: argparse.Action) -> dict | None:
    if action.choices is not None or action.nargs == 0:   # choices and switches need none
        return None
    if action.dest in BY_DEST:
        return BY_DEST[action.dest]
    return BY_METAVAR.get(action.metavar) or (FILE if action.dest == "out" else None)


def _preamble(shell: str) -> str:
    """The two completers of cnndsl's own: zoo names beside files, and --data's forms."""
    from ..resources import zoo_specs
    from ..training.sources import DATA_FORMS

    zoo = " ".join(zoo_specs())
    forms = " ".join(DATA_FORMS)
    if shell == "bash":
        # bash splits words at ':' (COMP_WORDBREAKS), so a form's folder part completes
        # as a word of its own; the forms themselves are offered whole.
        return (f'_cnndsl_spec() {{ compgen -W "{zoo}" -- "$1"; compgen -f -- "$1"; }}\n'
                f'_cnndsl_data() {{ compgen -W "{forms}" -- "$1"; compgen -d -- "$1"; }}\n')
    dir_forms = "|".join(f.rstrip(":") for f in DATA_FORMS if f.endswith(":"))
    return (f"_cnndsl_spec() {{ _alternative 'zoo:zoo spec:({zoo})' 'files:spec file:_files' }}\n"
            f"_cnndsl_data() {{\n"
            f"  if compset -P '({dir_forms}):'; then _files -/\n"
            f"  else compadd -S '' -- {forms}; fi\n"
            f"}}\n")
