"""What every subcommand shares: exit statuses, diagnostics on stderr, process set-up.

Exit status: 0 when all went well, 1 when the spec (or data) has errors or a run
diverged, 2 for usage errors (a wrong flag, a missing file), 130 when interrupted.
"""
from __future__ import annotations

import os
import sys

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
