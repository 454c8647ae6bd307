# call1: the compile-mode inline decode attention test since v81, then the 1B run with v81 (tree 8a68065)
STEP_TIMEOUT=330 timeout 590 bash scripts/gpu_run.sh $OUT tests:inline_decode "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --peer-repeats 3 --warmup 1"
