"""How fast `cnndsl analyze FAMILY` goes through the members of a family, against counting
the same members with torch.

cnndsl analyses a family statically: it parses the spec once, then expands each member
from the syntax tree and runs the analysis passes (shapes, params, MACs, memory, receptive
field), never building a tensor. The peer is what one would do with PyTorch alone: build
each member as a module (with cnndsl's own compiler, `Spec.compile`) and count its
parameters, and its MACs with a forward pass under `torch.utils.flop_counter.
FlopCounterMode` (FLOPs of convolutions and matrix products, 2 per MAC). Both run in
this process on one core (torch with one thread).

* members/s of cnndsl: every member of the bundled family (specs/families/notes.yaml,
  1,008 members) at its 3×32×32 input and at 3×224×224; the best of --repeat runs.
  Members that expand to the same network are analysed once (that is part of the method),
  so the figure is members of the family per second, merged ones included.
* members/s of torch: --torch-sample members drawn at random (with --seed) from the
  family's surviving members at 3×32×32, one module and one forward pass each, built on
  the CPU (weights initialised, the forward computed) and on PyTorch's `meta` device
  (shapes only: the cheapest way torch can count); the counts are checked to be the same
  as cnndsl's. One member is counted before the clock starts (FlopCounterMode's first
  use costs a second or two).

Run from the repository root (the torch part needs torch; without it only cnndsl's
figure is printed):

    .venv/bin/python benchmarks/bench_family.py [--repeat 5] [--torch-sample 30]
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnndsl.analysis.family import analyze_family  # noqa: E402
from cnndsl.lang import family  # noqa: E402
from cnndsl.lang.spec import load  # noqa: E402

NOTES = ROOT / "specs" / "families" / "notes.yaml"


def one_core() -> None:
    """Pin this process to one CPU where the system allows it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def cnndsl_rate(spec, input_shape, repeat: int) -> tuple[float, object]:
    """Members per second (the best run; CPU time of this process) and the last result."""
    best, result = None, None
    for _ in range(repeat):
        gc.collect()
        gc.freeze()               # as `cnndsl analyze` does: collect rarely
        threshold = gc.get_threshold()
        gc.set_threshold(200_000, 30, 30)
        start = time.process_time()
        result = analyze_family(spec, input=input_shape)
        elapsed = time.process_time() - start
        gc.set_threshold(*threshold)
        gc.unfreeze()
        best = elapsed if best is None else min(best, elapsed)
    return result.analysed / best, result


def torch_count(spec, member, torch, device: str) -> None:
    """Builds one member with cnndsl's compiler and counts it with torch; the counts must
    be cnndsl's."""
    from torch.utils.flop_counter import FlopCounterMode

    sets = [(name, family.Variable(name, (value,))) for name, value in member.values.items()]
    with torch.device(device):
        module = spec.with_values(sets).compile()
    params = sum(p.numel() for p in module.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *spec.input.shape, device=device))
    macs = counter.get_total_flops() // 2
    if (params, macs) != (member.params, member.macs):
        raise SystemExit(f"torch counts {params:,} params, {macs:,} MACs for "
                         f"{member.values}; cnndsl {member.params:,}, {member.macs:,}")


def torch_rate(spec, members, torch, device: str) -> float:
    """Members per second of building each member and counting it with torch."""
    torch_count(spec, members[0], torch, device)   # warm-up, not timed
    start = time.process_time()
    for member in members:
        torch_count(spec, member, torch, device)
    return len(members) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of cnndsl; the best counts")
    parser.add_argument("--torch-sample", type=int, default=30, help="members counted with torch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    one_core()
    spec = load(NOTES)
    print(f"{platform.machine()}, Python {platform.python_version()}, one core; "
          f"{NOTES.relative_to(ROOT)}: {family.member_count(family.variables(spec.program, spec.declared).values()):,} members")
    rates = {}
    for shape in ((3, 32, 32), (3, 224, 224)):
        rate, result = cnndsl_rate(spec, shape, args.repeat)
        rates[shape] = (rate, result)
        print(f"cnndsl  {'×'.join(map(str, shape)):>11}: {rate:8,.0f} members/s "
              f"({result.analysed:,} members, {len(result.members):,} distinct networks, "
              f"{len(result.survivors()):,} surviving)")
    try:
        import torch
    except ImportError:
        print("torch is not installed: no comparison")
        return
    torch.set_num_threads(1)
    survivors = rates[(3, 32, 32)][1].survivors()
    sample = random.Random(args.seed).sample(survivors, min(args.torch_sample, len(survivors)))
    mine = rates[(3, 32, 32)][0]
    for device in ("cpu", "meta"):
        peer = torch_rate(spec, sample, torch, device)
        print(f"torch   {'3×32×32':>11}: {peer:8,.1f} members/s on the {device} device "
              f"({len(sample)} members: Spec.compile, parameters(), a FlopCounterMode "
              f"forward; counts equal to cnndsl's); cnndsl is {mine / peer:,.0f}× as fast")


if __name__ == "__main__":
    main()
