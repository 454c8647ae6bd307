#!/usr/bin/env bash
# Make .venv in the checkout and install rollgraph into it (editable, with test tools). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # Without a GPU, take the CPU build (a few hundred MB) rather than the multi-GB CUDA one.
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch>=2.11,<2.15"
  else
    .venv/bin/pip install -q "torch==2.13.0"
  fi
fi
need="import rollgraph, pytest, ruff, hypothesis"
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then need="$need, triton"; fi
if ! .venv/bin/python -c "$need" 2>/dev/null; then
  .venv/bin/pip install -q -e ".[dev]"
fi
