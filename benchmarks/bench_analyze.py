"""How long the whole `cnndsl analyze` process takes, against `python -c "import torch"`.

cnndsl's design: `cnndsl analyze` must start and finish in a fraction of a second. The
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
import importlib.util
import os
import platform
import resource
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


def largest_zoo_spec() -> Path | None:
    """The bundled spec with the most layers (issue 9 asks for the largest new spec's time)."""
    import cnndsl
    specs = sorted((ROOT / "specs").glob("*.yaml"))
    sizes = {p: len(cnndsl.load(p).analyze().layers()) for p in specs}
    return max(sizes, key=sizes.get) if sizes else None


def deep_net(layers: int) -> str:
    return f"INPUT(3, 32, 32) -> ({ROUND})*{layers // 10}\n"


# Bytecode is cached (__pycache__), as on any machine where cnndsl was pip-installed:
# without, every run would compile cnndsl's modules again.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(command: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of `command` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)[:120]} failed:\n{result.stderr.decode()[-2000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_analyze_") as tmp:
        run(Path(tmp), args.repeat)


def run(folder: Path, repeat: int) -> None:
    zoo = ROOT / "specs" / "resnet152.yaml"
    if zoo.is_file():
        resnet = zoo
    else:
        resnet = folder / "resnet152.yaml"
        resnet.write_text(RESNET152, encoding="utf-8")
    for n in (10_000, 20_000):
        (folder / f"deep{n // 1000}k.cnn").write_text(deep_net(n), encoding="utf-8")

    analyze = [sys.executable, "-m", "cnndsl", "analyze"]
    largest = largest_zoo_spec()
    cases = [
        ("python -c pass (interpreter start)", [sys.executable, "-c", "pass"], None),
        ("analyze a 2-layer net (startup)", analyze + ["INPUT(3, 8, 8) -> CONV3-8 -> RELU"], None),
        ('python -c "import torch"', [sys.executable, "-c", "import torch"], None),
        (f"analyze {resnet.relative_to(ROOT) if resnet == zoo else 'resnet152 (inline)'}",
         analyze + [str(resnet)], 0.25),
        ("analyze resnet152 --json", analyze + [str(resnet), "--json"], 0.25),
        *([(f"analyze {largest.relative_to(ROOT)} (largest zoo spec)", analyze + [str(largest)], None)]
          if largest else []),
        ("analyze 10k layers", analyze + [str(folder / "deep10k.cnn")], 0.5),
        ("analyze 10k layers --json", analyze + [str(folder / "deep10k.cnn"), "--json"], 0.5),
        ("analyze 20k layers", analyze + [str(folder / "deep20k.cnn")], None),
        ("analyze 20k layers --json", analyze + [str(folder / "deep20k.cnn"), "--json"], None),
    ]
    if importlib.util.find_spec("torch") is None:
        sys.exit("torch is not installed here: there is no peer to compare with")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}; median of {repeat} rounds (each runs every "
          f"command once, so that a busy moment slows them all alike)\n")
    for _, command, _ in cases:  # warm the file cache and write __pycache__
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    runs = [[run_once(command) for _, command, _ in cases] for _ in range(repeat)]
    times = {label: tuple(statistics.median(r[i][k] for r in runs) for k in (0, 1))
             for i, (label, _, _) in enumerate(cases)}

    torch = times['python -c "import torch"']
    print(f"{'':40} {'wall':>8} {'ratio':>7} {'CPU':>8} {'ratio':>7}  (ratio: to import torch)")
    for label, _, target in cases:
        (wall, cpu), line = times[label], ""
        if label.startswith("analyze"):
            line = f"{wall / torch[0]:7.3f} {cpu:7.3f}s {cpu / torch[1]:7.3f}"
            if target is not None:
                verdict = "ok" if max(wall / torch[0], cpu / torch[1]) < target else "MISSED"
                line += f"  target < {target}: {verdict}"
        else:
            line = f"{'':7} {cpu:7.3f}s"
        print(f"{label:40} {wall:7.3f}s {line}")
    start = times["analyze a 2-layer net (startup)"]
    for suffix in ("", " --json"):
        t10, t20 = times[f"analyze 10k layers{suffix}"], times[f"analyze 20k layers{suffix}"]
        print(f"{'20k / 10k layers' + suffix:40} {t20[0] / t10[0]:8.2f}  less the startup: "
              f"{(t20[0] - start[0]) / (t10[0] - start[0]):.2f} (linear: 2)")


if __name__ == "__main__":
    main()
