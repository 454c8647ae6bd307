# call 2 (v77): the whole `gpu` set in one process, at 93839b8
STEP_TIMEOUT=585 bash scripts/gpu_run.sh $OUT tests 2>&1 | tail -70
