# call 2 (v76): the main 7B run, request reads by the engine thread (the default)
timeout 590 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1" 2>&1 | tail -45
