# the whole gpu set at the end of v86-v87
STEP_TIMEOUT=570 bash scripts/gpu_run.sh $OUT tests
