export PYTHONPATH=src
ab() {  # $1 name, $2 modes
  mkdir -p $OUT/$1 && timeout 200 python3 scripts/pool_figures.py --models llama-2-7b --prompts 100,300,400 --repeats 5 \
    --out $OUT/$1 --modes $2 > $OUT/$1/figures.txt 2>&1
  grep "^{" $OUT/$1/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k in d:
    print('$1', k, [(r['prompt'], r['ttft_ms'], r['itl_median_ms']) for r in d[k]])
"
}
ab ab1 graphs/silu,graphs
ab ab2 graphs,graphs/silu
timeout 200 bash scripts/gpu_run.sh $OUT "tests:silu_mul"
timeout 240 bash scripts/gpu_run.sh $OUT "profile:llama-2-7b:compile+graphs,graphs/silu:10,400"
cd $OUT && tar czf ab.tgz ab1 ab2 && rm -rf ab1 ab2; ls $OUT $OUT/p1
