#!/usr/bin/env python3
"""Training throughput: cnndsl's compiled ResNet-18 (or -50) against a hand-written PyTorch one.

Both networks have the same layers and shapes (torchvision's ResNet-18: basic blocks,
projection shortcuts); both train on the same synthetic batch with the same settings
(SGD with momentum; on CUDA bf16 autocast and channels_last; optionally torch.compile).
The number that matters is the ratio: cnndsl builds a `torch.fx` GraphModule whose
generated forward is plain Python, so it should run as fast as the hand-written module.

    python benchmarks/bench_train.py                  # CUDA: batch 128 of 3×224×224
    python benchmarks/bench_train.py --compile        # both torch.compile'd
    python benchmarks/bench_train.py --quick          # CPU-sized: batch 8 of 3×32×32
    python benchmarks/bench_train.py --model resnet50 --batch 256 --compile   # + MFU on a GPU

With --model resnet50 the hand-written network is torchvision's ResNet-50 written out
(bottleneck blocks, stride on the 3×3: "v1.5"); it is torchvision.models.resnet50 itself
when torchvision can be imported. Model TFLOP/s (6 × MACs per image, from cnndsl's static
analysis) and MFU (against the GPU's dense bf16 peak) come from cnndsl.training.throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see cnndsl/cli/common.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import cnndsl  # noqa: E402
from cnndsl.training import throughput  # noqa: E402

# Used when specs/resnet18.yaml is missing: the same network, inline.
FALLBACK = """\
basic(c) = RES(CONV3-c -> BN -> RELU -> CONV3-c -> BN) -> RELU
down(c) = ADD(CONV3-c/2 -> BN -> RELU -> CONV3-c -> BN, CONV1-c/2 -> BN) -> RELU
INPUT(3, 224, 224) -> CONV7-64/2 -> BN -> RELU -> POOL3/2(pad=1)
  -> basic(64)*2 -> down(128) -> basic(128) -> down(256) -> basic(256) -> down(512) -> basic(512)
  -> GAP -> FC-1000"""


# --- the hand-written equivalent (torchvision.models.resnet18, written out) --------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        widths, blocks, cin = (64, 128, 256, 512), [], 64
        for i, width in enumerate(widths):
            blocks += [BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int = 1):
        super().__init__()
        cout = 4 * mid
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, (mid, n) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for j in range(n):
                blocks.append(Bottleneck(cin, mid, 2 if i > 0 and j == 0 else 1))
                cin = 4 * mid
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def hand_written(model: str) -> tuple[nn.Module, str]:
    if model == "resnet18":
        return ResNet18(), "hand-written nn.Module"
    try:
        from torchvision.models import resnet50
        return resnet50(), "torchvision.models.resnet50"
    except Exception:   # not installed, or built for another torch
        return ResNet50(), "hand-written nn.Module (torchvision's ResNet-50)"


# --- measuring ---------------------------------------------------------------------------

def cnndsl_resnet(size: int, model: str = "resnet18") -> tuple[nn.Module, str, int]:
    """cnndsl's network, where its spec came from, and its MACs per image at `size`."""
    path = ROOT / "specs" / f"{model}.yaml"
    if not path.exists() and model != "resnet18":
        raise SystemExit(f"{path} is missing")
    spec = cnndsl.load(path) if path.exists() else cnndsl.parse(FALLBACK, name="resnet18")
    where = str(path.relative_to(ROOT)) if path.exists() else "inline fallback"
    module = spec.compile(input=(3, size, size), init="kaiming")
    try:
        macs = int(spec.analyze(input=(3, size, size)).totals()["macs"])
    except Exception:   # an older analyze() without input=: MACs at the spec's own size
        macs = int(spec.analyze().totals()["macs"]) if size == 224 else 0
    return module, where, macs


def images_per_second(model: nn.Module, args, device: torch.device) -> float:
    """Full training steps (forward, loss, backward, SGD update) on one fixed batch."""
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda and not args.no_channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and not args.no_bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    return args.batch * args.steps / (time.perf_counter() - started)


def prepare(model: nn.Module, args, device: torch.device) -> nn.Module:
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda and not args.no_channels_last else torch.preserve_format
    model = model.to(device, memory_format=fmt).train()
    return torch.compile(model) if args.compile else model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--model", choices=["resnet18", "resnet50"], default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (cudnn.benchmark, compile)")
    p.add_argument("--repeats", type=int, default=3, help="alternate the two this often; best counts")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--quick", action="store_true", help="CPU-sized: batch 8, 32×32, 3 steps, 2 repeats")
    p.add_argument("--goal-images", type=float, default=0.0,
                   help="print cnndsl's images/s against this goal (e.g. 3000)")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    args = p.parse_args()
    if args.quick:
        args.batch, args.size, args.steps, args.warmup, args.repeats = 8, 32, 3, 1, 2
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    ours, where, macs = cnndsl_resnet(args.size, args.model)
    hand, hand_name = hand_written(args.model)
    counts = [sum(p.numel() for p in m.parameters()) for m in (ours, hand)]
    if counts[0] != counts[1]:
        print(f"the two networks differ: {counts[0]:,} vs {counts[1]:,} parameters", file=sys.stderr)
        return 1
    ours, hand = prepare(ours, args, device), prepare(hand, args, device)

    best = {"cnndsl": 0.0, "hand": 0.0}
    for _ in range(args.repeats):   # alternate, so drift (clocks, other jobs) hits both
        best["cnndsl"] = max(best["cnndsl"], images_per_second(ours, args, device))
        best["hand"] = max(best["hand"], images_per_second(hand, args, device))
    ratio = best["cnndsl"] / best["hand"]

    settings = [s for s, on in (("bf16 autocast", cuda and not args.no_bf16),
                                ("channels_last", cuda and not args.no_channels_last),
                                ("torch.compile", args.compile)) if on]
    name = torch.cuda.get_device_name() if cuda else "CPU"
    title = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}[args.model]
    print(f"{title} ({where}), {counts[0]:,} params, {macs / 1e9:.2f} GMACs; training steps, batch "
          f"{args.batch} of 3×{args.size}×{args.size}; {name}{', ' + ', '.join(settings) if settings else ''}")
    peak = throughput.peak_tflops(name if cuda else None)
    speed = {}
    for key, label in (("cnndsl", "cnndsl (torch.fx GraphModule)"), ("hand", hand_name)):
        tflops = throughput.train_tflops(macs, int(best[key]), 1.0) if macs else None
        share = throughput.mfu(tflops, peak)
        speed[key] = (tflops, share)
        extra = "" if tflops is None else f"   {tflops:7.3g} model TFLOP/s (6 × MACs)"
        extra += "" if share is None else f", MFU {share:.1%} of {peak:g} bf16 TFLOP/s"
        print(f"  {label:<48} {best[key]:10,.1f} images/s{extra}")
    print(f"  ratio cnndsl / hand-written {' ' * 20} {ratio:10.3f}   goal ≥ 0.97: "
          f"{'ok' if ratio >= 0.97 else 'BELOW GOAL'}")
    if args.goal_images:
        print(f"  cnndsl images/s {best['cnndsl']:,.0f}   goal ≥ {args.goal_images:,.0f}: "
              f"{'ok' if best['cnndsl'] >= args.goal_images else 'BELOW GOAL'}")
    if args.json:
        print(json.dumps({"device": name, "model": args.model, "batch": args.batch, "size": args.size,
                          "compile": args.compile, "settings": settings, "macs_per_image": macs,
                          "cnndsl_images_per_s": best["cnndsl"], "hand_images_per_s": best["hand"],
                          "hand": hand_name, "ratio": ratio,
                          "cnndsl_tflops": speed["cnndsl"][0], "cnndsl_mfu": speed["cnndsl"][1],
                          "hand_tflops": speed["hand"][0], "hand_mfu": speed["hand"][1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
