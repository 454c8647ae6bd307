set -u
STEP_TIMEOUT=170 bash scripts/gpu_run.sh $OUT "tests:decode_attention or mode_tokens_equal_eager or graphs_equal_eager or background_and_inline"
mkdir -p $OUT/f && PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts timeout -s KILL 165 python3 scripts/pool_figures.py --models llama-2-7b --modes graphs,graphs/one-prog,graphs,graphs/one-prog --prompts 10,400 --repeats 3 --out $OUT/f 2>&1 | grep "^{" | tee $OUT/f/ab.txt | cut -c1-1500
