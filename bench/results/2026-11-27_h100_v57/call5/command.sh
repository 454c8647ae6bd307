set -u
bash scripts/gpu_run.sh $OUT tests 2>&1 | tail -45
