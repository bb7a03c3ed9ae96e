#!/usr/bin/env bash
# The one script to run on a GPU machine (about 6-8 minutes on one H100):
#   1. a venv with cnndsl (reusing the machine's CUDA torch when it has one),
#   2. the CUDA-marked tests (bf16 autocast, channels_last, torch.compile, resume, eval),
#   3. the default job on the GPU, and the training benchmark: cnndsl's ResNet-18 against a
#      hand-written one, eager (images/s and their ratio),
#   4. ResNet-50 at 224, batch 256, bf16 + channels_last + torch.compile on synthetic data:
#      cnndsl against torchvision's ResNet-50 (hand-written copy when torchvision is absent);
#      images/s, ratio, model TFLOP/s and MFU. Goals: ratio >= 0.97, >= 3,000 images/s,
#   5. the streaming loader on a generated folder of 20,000 ImageNet-like JPEGs
#      (bench_data.py: decode + RandomResizedCrop, images/s; goal >= 2,000 images/s), and
#      `cnndsl train resnet50` fed from that folder: images/s, MFU, data_wait.
# Usage: bash benchmarks/gpu_check.sh            (from anywhere; it cd's to the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE

if [ ! -x .venv/bin/python ]; then
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python3 -m venv --system-site-packages .venv   # keep the machine's CUDA build of torch
  else
    python3 -m venv .venv                          # plain torch from PyPI is a CUDA build
  fi
  .venv/bin/pip install --quiet -e '.[test]'
fi
PY=.venv/bin/python
$PY - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU: install a CUDA build of torch into .venv")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PYEOF

echo "== CUDA tests"
$PY -m pytest -q -m cuda tests -p no:cacheprovider

echo "== default job on the GPU: cnndsl train specs/lenet5.yaml"
out=$(mktemp -d)
timeout 120 .venv/bin/cnndsl train specs/lenet5.yaml --out "$out/run" | tail -n 3

echo "== training throughput, ResNet-18 eager"
timeout 120 $PY benchmarks/bench_train.py --json

echo "== ResNet-50, batch 256 of 3x224x224, bf16 + channels_last + torch.compile, synthetic data"
echo "   goals: cnndsl / hand-written >= 0.97; cnndsl >= 3,000 images/s"
timeout 300 $PY benchmarks/bench_train.py --model resnet50 --size 224 --batch 256 --compile \
  --warmup 3 --steps 20 --repeats 2 --goal-images 3000 --json \
  || echo "(ResNet-50 torch.compile benchmark failed or timed out)"

workers=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))   # one core left for the training loop
jpegs=/tmp/cnndsl-bench-jpegs
echo "== streaming loader: 20,000 JPEGs, RandomResizedCrop(224), $workers workers (goal >= 2,000 images/s)"
timeout 240 $PY benchmarks/bench_data.py --dir "$jpegs" --images 20000 --workers "$workers" \
  --batches 30 --json || echo "(loader benchmark failed or timed out)"

echo "== cnndsl train resnet50 streamed from the JPEGs (bf16, channels_last; eager, so the epoch"
echo "   is not mostly compile time): images/s, mfu, data_wait (goal < 5 %)"
timeout 240 $PY benchmarks/bench_data.py --dir "$jpegs" --images 20000 --workers "$workers" \
  --train-only --train-args "resnet50 --batch-size 256" --json \
  || echo "(streamed training run failed or timed out)"
rm -rf "$jpegs" "$out"
