"""Limits on what a file may make cnndsl allocate: every data file and checkpoint is hostile.

A file states sizes (an IDX header's dims, a zip member's uncompressed size, a spec's
layer widths); each is checked against a budget *before* anything that size is
allocated, so a 4 MB decompression bomb or an `FC-1000000000000` is a one-line
`CnnDslError` instead of a MemoryError traceback or the OOM killer.

The budgets (bytes) can be raised or lowered with environment variables:

* `CNNDSL_MAX_DATA_BYTES`        one data file's decompressed contents (default 2 GiB)
* `CNNDSL_MAX_CHECKPOINT_BYTES`  a checkpoint's uncompressed members together (default 8 GiB)

Torch-free: `check_memory` runs on a static analysis before the network is built.
"""
from __future__ import annotations

import os

from .. import errors
from ..errors import CnnDslError

GiB = 2 ** 30
MiB = 2 ** 20

DEFAULT_DATA_BYTES = 2 * GiB
DEFAULT_CHECKPOINT_BYTES = 8 * GiB
IDX_MAX_ITEMS = 10_000_000       # images (or labels) in one IDX file; MNIST has 60 000
IDX_MAX_DIM = 65_536             # every other dimension (an image's height or width)
ZIP_MAX_RATIO = 100              # torch.save stores members uncompressed (ratio 1)...
ZIP_RATIO_FROM = 1 * MiB         # ...so a big member that deflates > 100:1 is a bomb
MAX_TEXT = 80                    # characters of a file's text echoed in a message



def _env_bytes(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise CnnDslError(f"{name} must be a number of bytes, got '{clip(text)}'") from None
    if value < 1:
        raise CnnDslError(f"{name} must be a positive number of bytes, got {value}")
    return value


def data_budget() -> int:
    """Bytes one data file may decompress to."""
    return _env_bytes("CNNDSL_MAX_DATA_BYTES", DEFAULT_DATA_BYTES)


def checkpoint_budget() -> int:
    """Bytes a checkpoint's members may inflate to, all together."""
    return _env_bytes("CNNDSL_MAX_CHECKPOINT_BYTES", DEFAULT_CHECKPOINT_BYTES)


def clip(text: str, n: int = MAX_TEXT) -> str:
    """At most `n` characters of `text` (errors.clip); anything but a str is shown by its
    type alone: never call str() on a hostile object."""
    return errors.clip(text if isinstance(text, str) else f"<{type(text).__name__}>", n)


def human_bytes(n: int) -> str:
    for factor, prefix in ((2 ** 50, "PiB"), (2 ** 40, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (2 ** 10, "KiB")):
        if n >= factor:
            return f"{n / factor:,.1f} {prefix}"
    return f"{n} B"


# --- memory of a network ---------------------------------------------------------------


def machine_memory(device=None) -> int | None:
    """Bytes of memory the model will live in: the GPU's for a CUDA device, else RAM."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        index = getattr(device, "index", None)
        return int(torch.cuda.get_device_properties(index or 0).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every system says
        return None


def memory_estimate(analysis, optimizer_states: int = 2) -> dict:
    """Bytes (fp32) that the network needs at the least: its weights (and, when training,
    their gradients and `optimizer_states` more copies), its buffers, one image's activations."""
    t = analysis.totals()
    params, buffers = int(t["params"]), int(t.get("buffers", 0))
    copies = 2 + optimizer_states   # inference (0 states): the model and the checkpoint's copy
    weights = 4 * (params * copies + buffers)
    activations = 4 * int(t.get("activation_elements", 0))
    return {"params": params, "copies": copies, "weights": weights,
            "activations": activations, "total": weights + activations}


def check_memory(analysis, budget_bytes: int | None = None, *, optimizer_states: int = 2,
                 device=None) -> None:
    """Refuse (a one-line `CnnDslError`) a network whose weights cannot fit in memory.

    `budget_bytes` defaults to the machine's memory (the GPU's for a CUDA `device`).
    `optimizer_states`: 0 for inference, 1 for SGD with momentum, 2 for Adam(W).
    """
    budget = machine_memory(device) if budget_bytes is None else int(budget_bytes)
    if budget is None:
        return
    need = memory_estimate(analysis, optimizer_states)
    if need["total"] > budget:
        use = (f"{need['copies']} copies of them (weights, gradients, {optimizer_states} optimiser "
               f"state{'s' if optimizer_states != 1 else ''})" if optimizer_states
               else "2 copies of them (the model and the checkpoint's weights)")
        raise CnnDslError(
            f"the network is too large for this machine: {need['params']:,} parameters need "
            f"{human_bytes(need['total'])} ({need['total']:,} bytes: 4 bytes each, {use}, plus one "
            f"image's activations), more than the {human_bytes(budget)} of memory available")
