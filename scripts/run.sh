#!/usr/bin/env bash
# `rollgraph` from the checkout's .venv, set up first if needed. Example: scripts/run.sh generate --model llama-tiny ...
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
exec .venv/bin/rollgraph "$@"
