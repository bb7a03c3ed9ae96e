#!/usr/bin/env bash
# The one script to run on a GPU machine (about 3-5 minutes):
#   1. a venv with cnndsl (reusing the machine's CUDA torch when it has one),
#   2. the CUDA-marked tests (bf16 autocast, channels_last, torch.compile, resume, eval),
#   3. the default job on the GPU, and the training benchmark: cnndsl's ResNet-18 against a
#      hand-written one, eager and torch.compile'd (images/s and their ratio).
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

echo "== training throughput, eager"
timeout 120 $PY benchmarks/bench_train.py --json
echo "== training throughput, torch.compile"
timeout 240 $PY benchmarks/bench_train.py --compile --warmup 3 --steps 20 --repeats 2 --json \
  || echo "(torch.compile benchmark failed or timed out)"
