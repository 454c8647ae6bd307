bash scripts/gpu_run.sh $OUT "tests:blas_choice or cublaslt or bf16"   # (the pool_figures line of calls/c3.sh failed: no PYTHONPATH; rerun as call 4)
