"""How long the whole `cnndsl analyze` process takes, against `python -c "import torch"`.

DESIGN.md: "`cnndsl analyze` must start and finish in a fraction of a second". The
peer measured in the same run is the cheapest thing any PyTorch tool does — import
torch — so the ratios hold from one machine to the next. Targets:

* ResNet-152 (specs/resnet152.yaml, bottleneck blocks [3, 8, 36, 3]):  < 0.25 × import torch
* a generated 10,000-layer network:                                   < 0.5  × import torch
* 20,000 layers / 10,000 layers:                                      ≈ 2 (linear)

Each command runs in a fresh process (interpreter start, imports, parse, expand,
passes, and printing the table — or the JSON with --json), `--repeat` times; the
median is reported. Run from the repository root:

    .venv/bin/python benchmarks/bench_analyze.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Used only when the zoo's spec is not there: torchvision's resnet152, in the zoo's notation.
RESNET152 = """\
name: resnet152
input: [3, 224, 224]
blocks:
  bottle(m, s): ADD(CONV1-m -> BN -> RELU -> CONV3-m/s -> BN -> RELU -> CONV1-{4*m} -> BN,
                    CONV1-{4*m}/s -> BN) -> RELU
  neck(m): RES(CONV1-m -> BN -> RELU -> CONV3-m -> BN -> RELU -> CONV1-{4*m} -> BN) -> RELU
  stage(m, n, s): bottle(m, s) -> neck(m)*{n-1}
net: |
  CONV7-64/2 -> BN -> RELU -> POOL3/2(pad=1)
  -> stage(64, 3, 1) -> stage(128, 8, 2) -> stage(256, 36, 2) -> stage(512, 3, 2)
  -> GAP -> FC-1000
"""

# Ten layers a round: CONV, BN, RELU, then a residual CONV-BN-RELU-CONV-BN, ADD, RELU.
ROUND = "CONV3-16 -> BN -> RELU -> RES(CONV3-16 -> BN -> RELU -> CONV3-16 -> BN) -> RELU"


def deep_net(layers: int) -> str:
    return f"INPUT(3, 32, 32) -> ({ROUND})*{layers // 10}\n"


def median_time(command: list[str], repeat: int) -> float:
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)[:120]} failed:\n{result.stderr.decode()[-2000:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_analyze_"))
    zoo = ROOT / "specs" / "resnet152.yaml"
    if zoo.is_file():
        resnet = zoo
    else:
        resnet = folder / "resnet152.yaml"
        resnet.write_text(RESNET152, encoding="utf-8")
    for n in (10_000, 20_000):
        (folder / f"deep{n // 1000}k.cnn").write_text(deep_net(n), encoding="utf-8")

    analyze = [sys.executable, "-m", "cnndsl", "analyze"]
    cases = [
        ("python -c pass (interpreter start)", [sys.executable, "-c", "pass"], None),
        ("analyze a 2-layer net (startup)", analyze + ["INPUT(3, 8, 8) -> CONV3-8 -> RELU"], None),
        ('python -c "import torch"', [sys.executable, "-c", "import torch"], None),
        (f"analyze {resnet.relative_to(ROOT) if resnet == zoo else 'resnet152 (inline)'}",
         analyze + [str(resnet)], 0.25),
        ("analyze resnet152 --json", analyze + [str(resnet), "--json"], 0.25),
        ("analyze 10k layers", analyze + [str(folder / "deep10k.cnn")], 0.5),
        ("analyze 10k layers --json", analyze + [str(folder / "deep10k.cnn"), "--json"], 0.5),
        ("analyze 20k layers", analyze + [str(folder / "deep20k.cnn")], None),
        ("analyze 20k layers --json", analyze + [str(folder / "deep20k.cnn"), "--json"], None),
    ]
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, {args.repeat} runs each, median\n")
    times = {}
    torch = None
    for label, command, target in cases:
        if "import torch" in label:
            try:
                import importlib.util
                if importlib.util.find_spec("torch") is None:
                    raise ImportError
            except ImportError:
                print(f"{label:40} (torch is not installed: no ratios)")
                continue
        times[label] = t = median_time(command, args.repeat)
        if "import torch" in label:
            torch = t
        ratio = f"{t / torch:6.3f} × import torch" if torch and "analyze" in label else ""
        verdict = ("" if target is None or torch is None else
                   f"  target < {target}: {'ok' if t / torch < target else 'MISSED'}")
        print(f"{label:40} {t:7.3f} s  {ratio}{verdict}")
    start = times["analyze a 2-layer net (startup)"]
    for suffix in ("", " --json"):
        t10, t20 = times[f"analyze 10k layers{suffix}"], times[f"analyze 20k layers{suffix}"]
        print(f"{'20k / 10k layers' + suffix:40} {t20 / t10:7.2f}    "
              f"less startup: {(t20 - start) / (t10 - start):.2f} (linear: 2)")


if __name__ == "__main__":
    main()
