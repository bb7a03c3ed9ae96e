"""Where a run computes: the device, its settings, and the DDP process group under torchrun."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from ..errors import CnnDslError
from .settings import Config


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0                 # this process among `world` (torchrun's RANK / WORLD_SIZE)
    world: int = 1
    bf16: bool = False
    channels_last: bool = False

    @property
    def is_main(self) -> bool:   # only rank 0 prints and writes files
        return self.rank == 0

    @property
    def device_name(self) -> str | None:
        """The GPU's name (for its peak FLOP/s), or None on a CPU."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the memory layout the model was put in."""
        return self.layout(self.to_device(x))

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A tensor on the device; from the CPU through pinned memory, without blocking."""
        if self.device.type == "cuda" and x.device.type == "cpu":
            if not x.is_pinned():
                x = x.pin_memory()
            return x.to(self.device, non_blocking=True)   # the copy overlaps compute
        return x.to(self.device)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """The memory layout the model was put in (NHWC on GPUs: tensor-core convolutions)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def start_runtime(config: Config) -> Runtime:
    """The device, and when launched by torchrun, the process group (DDP)."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise CnnDslError("--device cuda: no CUDA GPU is available (use --device auto or cpu)")
    use_cuda = config.device == "cuda" or (config.device == "auto" and cuda)
    world, rank, local = process_env()
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True          # pick the fastest conv kernels per shape
        torch.backends.cuda.matmul.allow_tf32 = True   # fp32 leftovers of autocast use TF32
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    # bf16 needs Ampere or newer; older GPUs train in fp32.
    bf16 = use_cuda and config.bf16 and torch.cuda.is_bf16_supported()
    return Runtime(device, rank, world, bf16=bf16, channels_last=use_cuda and config.channels_last)


def process_env() -> tuple[int, int, int]:
    """(WORLD_SIZE, RANK, LOCAL_RANK) as torchrun sets them, (1, 0, 0) without it; a value
    that is not a fitting whole number is a one-line error naming the variable."""
    world = _env_int("WORLD_SIZE", 1, 1)
    rank = _env_int("RANK", 0, 0)
    local = _env_int("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise CnnDslError(f"environment variable RANK={rank} is not below WORLD_SIZE={world} "
                          f"(launch several processes with torchrun)")
    return world, rank, local


def _env_int(name: str, default: int, least: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise CnnDslError(f"environment variable {name}={shown!r} is not a whole number >= {least} "
                          f"(torchrun sets it; unset it for a single process)")
    return value


def stop_runtime(rt: Runtime) -> None:
    if rt.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A seed for one random stream of one epoch: resuming at epoch e needs only (seed, e)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def worker_count(workers: int | None) -> int:
    """DataLoader worker processes: as asked, or by default the CPU cores this process may
    use, less one for the training loop itself (0: decode in this process)."""
    if workers is not None:
        return workers
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not on Linux
        cores = os.cpu_count() or 1
    return max(0, cores - 1)
