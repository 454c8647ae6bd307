# v74 call B: 7B A/B of compile with and without the inline decode attention, both orders, one process each.
export PYTHONPATH=src PYTHONUNBUFFERED=1
cd $OUT && { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } > env.txt; cat env.txt; cd - >/dev/null
for order in compile/inline,compile compile,compile/inline; do
  d=$OUT/ab_${order//[\/,]/_}; mkdir -p $d
  echo "=== $order ($(date -u +%T))"
  timeout -s KILL 270 python3 scripts/pool_figures.py --models llama-2-7b --prompts 10,100,400 \
    --repeats 5 --out $d --modes $order > $d/figures.txt 2>&1
  grep "^{" $d/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k, v in d.items():
    if isinstance(v, list) and v and isinstance(v[0], dict): print(k, [(r.get('prompt'), r.get('ttft_ms'), r.get('itl_median_ms')) for r in v])
"
  tail -2 $d/figures.txt | cut -c1-300
done
echo "=== done ($(date -u +%T))"
cd $OUT && tar czf ab.tgz ab_* && rm -rf ab_*
