# call 8 of bench/results/2026-11-27_h100_v65/ (calls/c8.sh): the A/B of v67 first (recorded there), then the main run
timeout 480 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1"
