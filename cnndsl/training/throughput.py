"""Achieved model FLOP/s and MFU, from the static analysis's MACs.

cnndsl knows each network's multiply-accumulates before it runs, so the work of a
training step needs no profiler: forward + backward ≈ 3 × the forward pass (the
backward computes the gradients of both the inputs and the weights, each as costly
as the forward), and the forward is 2 FLOPs per MAC — 6 × MACs per image, the
convention of Kaplan et al. 2020 and of PaLM's MFU (Chowdhery et al. 2022, App. B).
Only CONV and FC MACs count (README, "Counting conventions"); element-wise layers
are left out, as in those papers.

MFU is that achieved rate over the GPU's dense (no sparsity) bf16 tensor-core peak.
"""
from __future__ import annotations

TRAIN_FLOPS_PER_MAC = 6  # 2 FLOPs per MAC, × 3 for forward + backward

# Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets (the
# "with sparsity" figures halved). Matched as substrings of the device name, most
# specific first.
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),          # H200 SXM (same tensor cores as H100 SXM)
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),          # H100 SXM5
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 70.0),           # AWS's A10G: 70 dense bf16
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", None),           # no bf16 tensor cores: MFU is not defined against bf16
    ("T4", None),
)


def peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its name, or None when unknown.

    >>> peak_tflops("NVIDIA H100 80GB HBM3"), peak_tflops("NVIDIA A100-SXM4-40GB"), peak_tflops("cpu")
    (989.0, 312.0, None)
    """
    if not device_name:
        return None
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def train_tflops(macs_per_image: int, images: int, seconds: float) -> float | None:
    """Achieved model TFLOP/s of training: 6 × MACs per image.

    >>> round(train_tflops(4_089_184_256, 3000, 1.0), 1)     # ResNet-50 at 3,000 images/s
    73.6
    """
    if not seconds or seconds <= 0 or not macs_per_image:
        return None
    return TRAIN_FLOPS_PER_MAC * macs_per_image * images / seconds / 1e12


def mfu(tflops: float | None, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved over peak, or None when either is unknown."""
    if tflops is None or not peak:
        return None
    return tflops / peak
