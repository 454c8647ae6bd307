# the whole gpu set at the v85 tree
STEP_TIMEOUT=570 bash scripts/gpu_run.sh $OUT tests
