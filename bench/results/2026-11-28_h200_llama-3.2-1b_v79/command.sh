set -u
STEP_TIMEOUT=400 timeout 420 bash scripts/gpu_run.sh $OUT "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --peer-repeats 3 --warmup 1"
