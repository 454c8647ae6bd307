# v72 again, lighter: the paired probe on 7B's shape with the 10-choice grid (call 1's 36-choice grid spent its 230 s
# in Triton builds), the A/B in one process both orders with the fastest paired choice at 400, the kernel test.
export PYTHONPATH=src PYTHONUNBUFFERED=1
cd $OUT && { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > env.txt; cd - >/dev/null
timeout -s KILL 180 python3 scripts/prefill_attention_probe.py --pair --shapes llama-2-7b --out $OUT/pair_probe.json \
  2>&1 | grep -E "^\{|Error" | cut -c1-400
best=$(python3 -c "
import json
rows = json.load(open('$OUT/pair_probe.json'))['rows']
r = [r for r in rows if r['T'] == 400][0]
print(','.join(x[1:] for x in r['paired_best'].split('_')))" 2>/dev/null)
best=${best:-64,64,4,3}
echo "paired choice for the A/B: $best ($(date -u +%T))"
ab() {  # $1 name, $2 modes
  mkdir -p $OUT/$1 && timeout -s KILL 150 python3 -c "
import runpy, sys
from rollgraph import prefill_attention as pa
pa.LAUNCH_PAIRED[128] = tuple(int(v) for v in '$best'.split(','))
sys.argv = ['pool_figures.py', '--models', 'llama-2-7b', '--prompts', '300,400', '--repeats', '5',
            '--out', '$OUT/$1', '--modes', '$2']
runpy.run_path('scripts/pool_figures.py', run_name='__main__')" > $OUT/$1/figures.txt 2>&1
  grep "^{" $OUT/$1/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k in d:
    if isinstance(d[k], list): print('$1', k, [(r['prompt'], r['ttft_ms'], r['itl_median_ms']) for r in d[k]])
"
  echo "($(date -u +%T))"
}
ab ab1 graphs/pair,graphs
ab ab2 graphs,graphs/pair
timeout -s KILL 150 python3 -m pytest -m gpu tests/test_gpu.py -k kernel_matches_the_reference -v -p no:cacheprovider \
  --durations=0 > $OUT/pair_test.txt 2>&1; grep -E "PASSED|FAILED|ERROR|passed|failed|s call" $OUT/pair_test.txt | head -20
cd $OUT && tar czf ab.tgz ab1 ab2 && rm -rf ab1 ab2; ls $OUT
