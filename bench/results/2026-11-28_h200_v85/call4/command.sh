# v85 after ff11bc0: bchoice for 7B's products, then graphs against graphs/no-plain alternated
STEP_TIMEOUT=150 bash scripts/gpu_run.sh $OUT "bchoice:llama-2-7b:256,320,384,400,432"
mkdir -p $OUT/ab && PYTHONPATH=src timeout -s KILL 300 python3 scripts/pool_figures.py --models llama-2-7b --modes graphs,graphs/no-plain,graphs,graphs/no-plain --prompts 10,300,400 --out $OUT/ab > $OUT/ab/figures.txt 2>&1; grep "^{" $OUT/ab/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k,v in d.items():
    if isinstance(v,list) and v and isinstance(v[0],dict): print(k, [(r['prompt'], r['ttft_ms'], r['itl_median_ms']) for r in v])
    elif k.endswith('startup_s') or k.endswith('cublaslt'): print(k, v)
"
