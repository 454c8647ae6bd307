# call 4 (v77): the 1B run at 93839b8, on the machine of calls 2-3 right after them
timeout 420 bash scripts/gpu_run.sh $OUT "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --peer-repeats 3 --warmup 1" 2>&1 | tail -12
