bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--modes compile+graphs --prompt-lengths 100,200,300,400 --repeats 10 --warmup 1"
