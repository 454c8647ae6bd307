# call D: v60's profile; tree 2ae57ca + notes
timeout 560 bash scripts/gpu_run.sh $OUT "profile:llama-2-7b:compile+graphs,graphs,graphs/no-lt:384,400"
