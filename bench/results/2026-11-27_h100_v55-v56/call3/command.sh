# v55c (compiled code adds in place through rollgraph::add_product): compile+graphs A/B, one process each; the
# compile-mode gpu tests.
OUT=$1
export PYTHONPATH=src PYTHONUNBUFFERED=1
s=$(date +%s)
i=0
for spec in compile+graphs compile+graphs/no-addmm compile+graphs; do
  i=$((i + 1)); d=$OUT/cg$i; mkdir -p $d
  timeout 150 python3 scripts/pool_figures.py --models llama-2-7b --modes "$spec" --repeats 5 --out $d 2>$d/log.txt >/dev/null
  python3 - $d/pool_figures.json "$spec" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"][0]
k = sys.argv[2]
print(k, m.get(k + "_startup_s"), [(r["prompt"], r["ttft_ms"], r["itl_median_ms"]) for r in m.get(k, [])])
PY
  mv $d/pool_figures.json $OUT/cg${i}_figures.json; rm -rf $d
  echo "$spec $(( $(date +%s) - s )) s"
done
timeout 300 bash scripts/gpu_run.sh $OUT tests:compile 2>&1 | tail -3
mv $OUT/gpu_tests1.txt $OUT/gpu_tests_compile.txt 2>/dev/null
echo "tests $(( $(date +%s) - s )) s"; ls $OUT
