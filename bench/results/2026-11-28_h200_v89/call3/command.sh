# the whole gpu set at 8cd6be7 (the code of 75566e7, v88 included)
STEP_TIMEOUT=570 bash scripts/gpu_run.sh $OUT tests
