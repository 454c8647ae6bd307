set -x
bash scripts/gpu_run.sh $OUT ltalgo
