set -u
STEP_TIMEOUT=585 bash scripts/gpu_run.sh $OUT tests
