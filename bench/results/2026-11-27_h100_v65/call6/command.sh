timeout 500 bash scripts/gpu_run.sh $OUT pattn:split 2>&1 | tail -16
