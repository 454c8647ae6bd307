STEP_TIMEOUT=150 bash scripts/gpu_run.sh $OUT "tests:kept_in_a_store or blas_choice_times or fitted_tile"   # v88, tree 59e3129
