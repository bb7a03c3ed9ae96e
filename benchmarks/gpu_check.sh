#!/usr/bin/env bash
# The one script to run on a GPU machine: at most about 8 minutes, every step bounded.
#   1. a Python with cnndsl (see "Setting up" below),
#   2. the CUDA-marked tests (bf16 autocast, channels_last, torch.compile, resume, eval),
#   3. the default job on the GPU, and the training benchmark: cnndsl's ResNet-18 against a
#      hand-written one, eager (images/s and their ratio),
#   4. ResNet-50 at 224, batch 256, bf16 + channels_last + torch.compile on synthetic data:
#      cnndsl against torchvision's ResNet-50 (hand-written copy when torchvision is absent);
#      images/s, ratio, model TFLOP/s and MFU. Goals: ratio >= 0.97, >= 3,000 images/s,
#   5. the streaming loader on a generated folder of ImageNet-like JPEGs (bench_data.py:
#      decode + RandomResizedCrop, images/s; goal >= 2,000 images/s), and `cnndsl train
#      resnet50` fed from that folder: images/s, MFU, data_wait.
# Usage: bash benchmarks/gpu_check.sh [LOG_DIR]
#   Each step's output also goes to LOG_DIR/NN-step.log as it is printed, so a run cut
#   short keeps what the finished steps measured.
# Setting up: with a .venv/bin/python in the repository, that Python is used as it is.
#   Otherwise a .venv is made and `pip install -e '.[test]'` run, which needs a package
#   index. On a machine with torch but no index, install the wheels of cnndsl and lark
#   (`pip wheel --no-deps -w .whl . && pip download --no-deps -d .whl lark`, made where
#   there is an index) and set CNNDSL_PYTHON to the machine's python3 with torch.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
LOG_DIR=${1:-$(mktemp -d)}
mkdir -p "$LOG_DIR"

if [ -n "${CNNDSL_PYTHON:-}" ]; then
  PY=$CNNDSL_PYTHON
  $PY -m pip install -q --no-index --no-deps --target /tmp/cnndsl-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/cnndsl-site
  CNNDSL="$PY -m cnndsl"
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv && .venv/bin/pip install --quiet -e '.[test]' || exit 1
  fi
  PY=.venv/bin/python
  CNNDSL=.venv/bin/cnndsl
fi

n=0
step() {   # step NAME SECONDS COMMAND...: runs it under a timeout, logged, never stopping the script
  local name=$1 seconds=$2; shift 2
  n=$((n + 1))
  local log; log=$(printf '%s/%02d-%s.log' "$LOG_DIR" "$n" "$name")
  echo "== $(date +%T) $name (at most ${seconds}s)" | tee "$log"
  timeout "$seconds" "$@" 2>&1 | tee -a "$log"
  local status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || echo "(step $name ended with status $status; 124 = timed out)" | tee -a "$log"
}

step device 30 $PY -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU: install a CUDA build of torch")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")'
grep -q "sees no CUDA GPU" "$LOG_DIR/01-device.log" && exit 1

step cuda-tests 90 $PY -m pytest -q -m cuda tests/test_train.py -p no:cacheprovider

out=$(mktemp -d)
step default-job 60 $CNNDSL train specs/lenet5.yaml --out "$out/run"

step resnet18-eager 60 $PY benchmarks/bench_train.py --json --steps 20 --repeats 2

# goals: cnndsl / hand-written >= 0.97; cnndsl >= 3,000 images/s
step resnet50-compiled 150 $PY benchmarks/bench_train.py --model resnet50 --size 224 --batch 256 \
  --compile --warmup 3 --steps 20 --repeats 2 --goal-images 3000 --json

workers=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))   # one core left for the training loop
jpegs=/tmp/cnndsl-bench-jpegs
# goal >= 2,000 images/s; the folder is generated first (10,000 JPEGs)
step loader 90 $PY benchmarks/bench_data.py --dir "$jpegs" --images 10000 --workers "$workers" \
  --batches 20 --json

# eager, so that the epoch is not mostly compile time; goal data_wait < 5 %
step resnet50-streamed 90 $PY benchmarks/bench_data.py --dir "$jpegs" --images 10000 \
  --workers "$workers" --train-only --train-args "resnet50 --batch-size 256" --json
rm -rf "$jpegs" "$out"
echo "== $(date +%T) done; logs in $LOG_DIR"
