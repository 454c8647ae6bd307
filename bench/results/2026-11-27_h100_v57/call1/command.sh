set -u
bash scripts/gpu_run.sh $OUT gemm:384,400,416,432 2>&1 | tail -40
