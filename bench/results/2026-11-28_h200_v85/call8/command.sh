# after the last calls' refactors (af109a5, db024cf) and 41d7c62: the blas_choice / fitted GPU tests and llama-tiny's modes against eager
STEP_TIMEOUT=140 bash scripts/gpu_run.sh $OUT "tests:blas_choice or plain or fitted or cublaslt or (mode_tokens_equal_eager and tiny)"
