#!/usr/bin/env bash
# One GPU session's work in one call: environment, the `gpu` tests, then the pool figures.
# Usage on the device machine: bash scripts/gpu_run.sh "$OUT" [models]
set -uo pipefail
out=${1:?output folder}
models=${2:-llama-3.2-1b,llama-2-7b}
export PYTHONPATH=src PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$out/env.txt"
python3 -m pytest -m gpu tests/test_gpu.py -q -rA -p no:cacheprovider --junitxml="$out/gpu_tests.xml" 2>&1 \
  | tee "$out/gpu_tests.txt" | tail -25
python3 scripts/pool_figures.py --models "$models" --out "$out" 2>&1 | tee "$out/pool_figures.txt" | grep -v Warn
