"""Constants and small helpers shared by the test files.

tests/conftest.py puts this folder on `sys.path` (pytest runs with
`--import-mode=importlib`, which does not), so a test file says `from helpers import ...`.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from cnndsl.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS_DIR = ROOT / "specs"


def memory_limit_prelude(margin: int) -> str:
    """Python source for a hostile-input child: import torch and cnndsl's training side
    first (their mapping depends on the build: about 0.7 GiB of address space for torch's
    CPU wheel, 3 GiB for its CUDA wheel), then limit the address space (RLIMIT_AS) to what
    is mapped plus `margin`, so that a bomb fails the same way with either build."""
    return f"""\
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
import numpy, PIL.Image, torch, torch.fx, torch.utils.data
import cnndsl.cli, cnndsl.training.data, cnndsl.training.checkpoint
_mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (_mapped + {margin}, _mapped + {margin}))
"""

# The YAML spec of docs/language.md's "Files" section: VGG-16, configuration D.
VGG16_YAML = """\
name: vgg16
description: VGG configuration D (Simonyan & Zisserman, 2014)
input: [3, 224, 224]        # C, H, W
fit: floor                  # or strict
blocks:
  stage(c, n): (CONV3-c -> RELU)*n -> POOL
net: |
  stage(64, 2) -> stage(128, 2) -> stage(256, 3) -> stage(512, 3) -> stage(512, 3)
  -> FC-4096 -> RELU -> DROPOUT -> FC-4096 -> RELU -> DROPOUT -> FC-1000
train:                      # defaults for `cnndsl train`; flags override
  epochs: 74
  batch_size: 256
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 5.0e-4}
"""

# A net that trains on the digits in a few seconds; `{train}` is its `train:` section.
TINY = """\
name: tiny
input: [1, 8, 8]
net: |
  conv1: CONV3-16 -> RELU -> POOL -> hidden: FC-32 -> RELU -> FC-10
train:
{train}"""
FAST = "  epochs: 3\n  batch_size: 32\n  optimizer: {name: adam, lr: 3.0e-3}\n"


def tiny_spec(folder: Path, train: str = FAST, name: str = "tiny.yaml") -> Path:
    """TINY with the `train:` section `train`, written to `folder/name`."""
    path = folder / name
    path.write_text(TINY.format(train=train))
    return path


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """`cnndsl ARGV...` in this process: its exit status, stdout and stderr."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def trained_run(folder: Path, spec_text: str, *flags) -> Path:
    """Trains `spec_text` (written to `folder/tiny.yaml`) into `folder/run`."""
    (folder / "tiny.yaml").write_text(spec_text)
    assert main(["train", str(folder / "tiny.yaml"), *map(str, flags), "--out", str(folder / "run")]) == 0
    return folder / "run"


# A fresh Python in which `import torch` fails, as on a machine without it (with
# --block), runs `cnndsl <argv>`, then checks that torch is not in sys.modules either:
# the torch-free commands (analyze, draw, report, completion) are run through it.
NO_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    if sys.argv[1] == "--block":
        sys.meta_path.insert(0, NoTorch())
    from cnndsl.cli import main
    status = main(sys.argv[2:])
    sys.stdout.flush()
    assert "torch" not in sys.modules, f"cnndsl {sys.argv[2]} imported torch"
    sys.exit(status)
""")


def run_without_torch(*argv: str, block: bool = True, cwd=None) -> subprocess.CompletedProcess:
    """`cnndsl <argv>` in a fresh interpreter that cannot import torch (block=True) or
    merely must not (block=False)."""
    return subprocess.run([sys.executable, "-c", NO_TORCH, "--block" if block else "--allow", *argv],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
