# v74: the GPU test of `compile` mode with the inline decode attention, then the A/B on 1B in one process (second try, after the fp64 fix).
export PYTHONPATH=src PYTHONUNBUFFERED=1
cd $OUT && { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } > env.txt; cd - >/dev/null
echo "=== A/B ($(date -u +%T))"
mkdir -p $OUT/ab && timeout -s KILL 150 python3 scripts/pool_figures.py --models llama-3.2-1b --prompts 10,400 \
  --repeats 5 --out $OUT/ab --modes compile/inline,compile > $OUT/ab/figures.txt 2>&1
grep "^{" $OUT/ab/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k, v in d.items():
    if isinstance(v, list) and v and isinstance(v[0], dict): print(k, [(r.get('prompt'), r.get('ttft_ms'), r.get('itl_median_ms')) for r in v])
"
tail -3 $OUT/ab/figures.txt | cut -c1-300
timeout -s KILL 140 python3 -m pytest -m gpu tests/test_gpu.py -k "inline_decode_attention" -v -p no:cacheprovider \
  --durations=0 > $OUT/inline_test.txt 2>&1; grep -E "PASSED|FAILED|ERROR|passed|failed|s call|Error" $OUT/inline_test.txt | head -20
echo "=== done ($(date -u +%T))"
cd $OUT && tar czf ab.tgz ab && rm -rf ab
