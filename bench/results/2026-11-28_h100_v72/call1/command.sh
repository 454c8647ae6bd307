# v72: the paired attention kernel timed, its GPU test, then the A/B in one process, both spec orders, with
# LAUNCH_PAIRED[128] set to the probe's fastest paired choice at 400 positions on 7B's shape.
export PYTHONPATH=src
timeout 240 bash scripts/gpu_run.sh $OUT pattn:pair "tests:prefill_attention"
best=$(python3 -c "
import json
rows = json.load(open('$OUT/prefill_attention1.json'))['rows']
r = [r for r in rows if r['model'] == 'llama-2-7b' and r['T'] == 400][0]
print(','.join(x[1:] for x in r['paired_best'].split('_')))")
echo "paired best at 400 (7B): $best"
ab() {  # $1 name, $2 modes
  mkdir -p $OUT/$1 && timeout 170 python3 -c "
import runpy, sys
from rollgraph import prefill_attention as pa
pa.LAUNCH_PAIRED[128] = tuple(int(v) for v in '$best'.split(','))
sys.argv = ['pool_figures.py', '--models', 'llama-2-7b', '--prompts', '200,300,400', '--repeats', '5',
            '--out', '$OUT/$1', '--modes', '$2']
runpy.run_path('scripts/pool_figures.py', run_name='__main__')" > $OUT/$1/figures.txt 2>&1
  grep "^{" $OUT/$1/figures.txt | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
for k in d:
    if isinstance(d[k], list): print('$1', k, [(r['prompt'], r['ttft_ms'], r['itl_median_ms']) for r in d[k]])
"
}
ab ab1 graphs/pair,graphs
ab ab2 graphs,graphs/pair
cd $OUT && tar czf ab.tgz ab1 ab2 && rm -rf ab1 ab2; ls $OUT
