# v87: the prefill attention GPU tests (both cache placements), the probe of the two placements, then graphs/attcache
# against graphs/rotcache for 7B in one process, alternated
STEP_TIMEOUT=200 bash scripts/gpu_run.sh $OUT "tests:fused_prefill_attention or last_layer_on_the_last_row" "pattn:cache"
mkdir -p $OUT/ab && PYTHONPATH=src timeout -s KILL 280 python3 scripts/pool_figures.py --models llama-2-7b --modes graphs/attcache,graphs/rotcache,graphs/attcache,graphs/rotcache --prompts 10,300,400 --out $OUT/ab > $OUT/ab/figures.txt 2>&1; grep "^{" $OUT/ab/figures.txt | tail -c 5000
