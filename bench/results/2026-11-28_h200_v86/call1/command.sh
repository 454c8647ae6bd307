# v86: the GPU tests of blas_choice, lt_matmul, the fitted tiles, the reduction copies and bf16 graphs against eager;
# then what blas_choice takes for 1B's and 7B's products, with each reduction copy timed against its base
STEP_TIMEOUT=240 bash scripts/gpu_run.sh $OUT "tests:blas_choice or plain or fitted or cublaslt or split_k or graphs_equal_eager_in_bf16" "bchoice:llama-3.2-1b:256,320,384,400,432" "bchoice:llama-2-7b:256,320,384,400,432"
