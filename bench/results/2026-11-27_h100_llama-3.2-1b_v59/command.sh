# call B: the bf16/blas tests at the fix, then the 1B run; tree 2ae57ca + notes
set -u
bash scripts/gpu_run.sh $OUT "tests:bf16 or blas_choice or mode_tokens_equal" \
  "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --warmup 1"
