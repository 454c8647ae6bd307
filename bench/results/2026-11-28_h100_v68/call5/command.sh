timeout 200 bash scripts/gpu_run.sh $OUT "profile:llama-2-7b:graphs,graphs/no-last:320,400"; ls $OUT $OUT/p1
