set -u
STEP_TIMEOUT=585 timeout 590 bash scripts/gpu_run.sh $OUT tests:clean_reads "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1"
