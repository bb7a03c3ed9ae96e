"""What every subcommand shares: exit statuses, diagnostics on stderr, process set-up.

Exit status: 0 when all went well, 1 when the spec (or data) has errors or a run
diverged, 2 for usage errors (a wrong flag, a missing file), 130 when interrupted.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_SPEC_ERROR = EXIT_ERROR


def print_diagnostics(diagnostics) -> None:
    for diagnostic in diagnostics:
        print(diagnostic.format(), file=sys.stderr)


def threads_sleep_when_idle() -> None:
    """Before torch loads OpenMP: idle worker threads sleep instead of spinning.

    On a busy machine (a shared CI runner, two jobs on two cores) spinning threads
    wait on each other's time slices, and small CPU steps become 10-30× slower.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def check_out(out: Path, overwrite: bool, suffixes, example: str) -> None:
    """An output file of `draw`, `report`, `plot`, `analyze -o`: a known suffix (it picks the
    format; any with suffixes=None), never a folder, an existing file only with --overwrite, in a folder that exists."""
    from ..errors import CnnDslError

    if out.is_dir():
        raise CnnDslError(f"-o {out} is a folder: give a file path, e.g. {out / example}")
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise CnnDslError(f"-o {out}: the suffix picks the format; give one of {', '.join(suffixes)}")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise CnnDslError(f"-o {out} already exists: add --overwrite to replace it, or give another -o")
    if not out.parent.is_dir():
        raise CnnDslError(f"-o {out}: the folder {out.parent} does not exist")
