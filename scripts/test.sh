#!/usr/bin/env bash
# The test suite (CPU; `gpu` tests skip without CUDA), after setting up .venv if needed. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
# pytest exits 5 when nothing was collected (e.g. a -k filter): report it, but it is not a failure of the code.
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 0; fi
exit "$rc"
