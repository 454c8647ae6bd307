# v86: the reduction copies with the mask check dropped (uncommitted on cd19897): their GPU tests, then bchoice with
# each copy timed against its base
STEP_TIMEOUT=200 bash scripts/gpu_run.sh $OUT "tests:split_k" "bchoice:llama-2-7b:400" "bchoice:llama-3.2-1b:256,400"
