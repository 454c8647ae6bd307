# call 3 (v77): the main 7B run at 93839b8, on the machine of call 2 right after it
timeout 590 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1" 2>&1 | tail -40
