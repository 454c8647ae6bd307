# v89: the prefill attention GPU tests (HANDOFF off and on, the graph-replay equality test), the probe of HANDOFF off
# and on, then graphs against graphs/no-handoff for 7B in one process, alternated
STEP_TIMEOUT=220 bash scripts/gpu_run.sh $OUT "tests:fused_prefill_attention_kernel or handed_over" "pattn:handoff"
mkdir -p $OUT/ab && PYTHONPATH=src timeout -s KILL 250 python3 scripts/pool_figures.py --models llama-2-7b --modes graphs,graphs/no-handoff,graphs,graphs/no-handoff --prompts 10,300,400 --out $OUT/ab > $OUT/ab/figures.txt 2>&1; grep "^{" $OUT/ab/figures.txt | tail -c 5000
