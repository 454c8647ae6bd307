bash scripts/gpu_run.sh $OUT ltalgo 2>&1 | tail -20
