# v85 in compile+graphs: compile+graphs against compile+graphs/no-plain alternated, one process
mkdir -p $OUT/ab && PYTHONPATH=src timeout -s KILL 400 python3 scripts/pool_figures.py --models llama-2-7b --modes compile+graphs,compile+graphs/no-plain,compile+graphs,compile+graphs/no-plain --prompts 10,300,400 --out $OUT/ab > $OUT/ab/figures.txt 2>&1; grep "^{" $OUT/ab/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k,v in d.items():
    if isinstance(v,list) and v and isinstance(v[0],dict): print(k, [(r['prompt'], r['ttft_ms'], r['itl_median_ms']) for r in v])
    elif k.endswith('startup_s') or k.endswith('cublaslt'): print(k, v)
"; tail -3 $OUT/ab/figures.txt
