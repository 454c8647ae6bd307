# v55b (addmm_ in place outside compiled code): graphs A/B in one process; then the whole gpu test set.
OUT=$1
export PYTHONPATH=src PYTHONUNBUFFERED=1
s=$(date +%s)
timeout 150 bash scripts/gpu_run.sh $OUT "figures:llama-2-7b:graphs,graphs/no-addmm,graphs,graphs/no-addmm:5" > /dev/null 2>&1
python3 - $OUT/f1/pool_figures.json <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["models"][0]
for k in ("graphs#1", "graphs/no-addmm#1", "graphs#2", "graphs/no-addmm#2"):
    print(k, [(r["prompt"], r["ttft_ms"], r["itl_median_ms"]) for r in m.get(k, [])])
PY
echo "graphs A/B $(( $(date +%s) - s )) s"
timeout 420 bash scripts/gpu_run.sh $OUT tests 2>&1 | tail -4
echo "tests $(( $(date +%s) - s )) s"
mv $OUT/f1/pool_figures.json $OUT/graphs_ab.json; mv $OUT/gpu_tests1.txt $OUT/gpu_tests.txt 2>/dev/null; rm -rf $OUT/f1; ls $OUT
