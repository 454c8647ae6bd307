set -u
# call 1 of ../2026-11-28_h200_v82/ (tree 8a68065): the inline decode test first, then this run
STEP_TIMEOUT=330 timeout 590 bash scripts/gpu_run.sh $OUT tests:inline_decode "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --peer-repeats 3 --warmup 1"
