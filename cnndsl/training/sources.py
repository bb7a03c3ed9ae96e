"""The forms of `--data`, torch-free: the table that the help, the checks, the shell
completion and `data.load_data` all read."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnDslError, did_you_mean


@dataclass(frozen=True)
class Source:
    """One form of `--data`: how it is written, what its argument is, what reads it."""
    form: str                      # as the help and the errors write it
    arg: str                       # "dir" (required), "none", or "optional"
    load: str | None = None        # the name of data.py's reader: (arg, shape, seed) -> _Raw;
                                   # None: a folder (data._folder_splits)


# Each data source once; the help text, the checks and the loading all come from here.
SOURCES = {
    "digits": Source("digits", "none", "_load_digits"),
    "mnist": Source("mnist:DIR", "dir", "_load_mnist"),
    "cifar10": Source("cifar10:DIR", "dir", "_load_cifar10"),
    "folder": Source("folder:DIR", "dir"),
    "wds": Source("wds:SPEC", "dir"),   # WebDataset .tar shards: a folder, a {a..b} pattern, pipe:CMD
    "synthetic": Source("synthetic[:N]", "optional", "_load_synthetic"),
}
SOURCE_FORMS = tuple(s.form for s in SOURCES.values())
# What shell completion offers: a form that needs a folder ends at its colon.
DATA_FORMS = tuple(kind + (":" if s.arg == "dir" else "") for kind, s in SOURCES.items())


def parse_source(source: str) -> tuple[str, str, str]:
    """Split 'kind:arg', checking that the kind exists and takes the argument it needs."""
    kind, sep, arg = source.strip().partition(":")
    kind = kind.lower()
    forms = ", ".join(SOURCE_FORMS)
    if kind not in SOURCES:
        hint = did_you_mean(kind, list(SOURCES))
        if not hint and Path(source).is_dir():
            hint = f" — for a folder of class sub-folders write 'folder:{source}'"
        raise CnnDslError(f"unknown data source '{source}'{hint}; valid forms: {forms}")
    if SOURCES[kind].arg == "dir" and not arg:
        raise CnnDslError(f"data source '{kind}' needs a directory: write '{kind}:DIR'")
    if SOURCES[kind].arg == "none" and sep:
        raise CnnDslError(f"data source '{kind}' takes no argument (it is bundled with scikit-learn)")
    return kind, arg, source.strip()
