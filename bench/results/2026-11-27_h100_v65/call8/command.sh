export PYTHONPATH=src
mkdir -p $OUT/ab && python3 scripts/pool_figures.py --models llama-2-7b --prompts 300,384,400 --repeats 5 --out $OUT/ab \
  --modes graphs,graphs/no-rot > $OUT/ab/figures.txt 2>&1
grep "^{" $OUT/ab/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k in ('graphs','graphs/no-rot'):
    print(k, [(r['prompt'], r['ttft_ms'], r['itl_median_ms']) for r in d[k]])
"
timeout 480 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1"
