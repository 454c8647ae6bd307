export PYTHONPATH=src
mkdir -p $OUT/c
timeout 130 bash scripts/gpu_run.sh $OUT "capture:llama-2-7b:compile+graphs:/tmp/cc"
mv $OUT/capture1_*.json $OUT/c/cold_compile_graphs.json
timeout 70 bash scripts/gpu_run.sh $OUT "capture:llama-2-7b:compile+graphs:/tmp/cc" "capture:llama-2-7b:graphs:/tmp/cc"
mv $OUT/capture1_*.json $OUT/c/second_compile_graphs.json; mv $OUT/capture2_*.json $OUT/c/second_graphs.json
cat $OUT/c/*.json
timeout 420 bash scripts/gpu_run.sh $OUT tests
cd $OUT && tar czf c.tgz c && rm -rf c; ls $OUT
