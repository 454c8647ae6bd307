export PYTHONPATH=src
mkdir -p $OUT/ab && timeout 300 python3 scripts/pool_figures.py --models llama-2-7b --prompts 300,384,400 --repeats 5 --out $OUT/ab \
  --modes graphs,graphs/no-last > $OUT/ab/figures.txt 2>&1
grep "^{" $OUT/ab/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k in d:
    print(k, [(r['prompt'], r['ttft_ms'], r['itl_median_ms']) for r in d[k]])
"
timeout 270 bash scripts/gpu_run.sh $OUT "tests:last_layer or prefill_attention or cublaslt or bf16"
cd $OUT && tar czf ab.tgz ab && rm -rf ab; ls $OUT
