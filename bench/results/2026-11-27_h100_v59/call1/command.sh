# call A: whole gpu set + floors with host probe, tree 55563ca
set -u
bash scripts/gpu_run.sh $OUT tests
echo "=== floors ($(date -u +%T))"
PYTHONPATH=src python3 -m rollgraph.floors 2>&1 | tail -40 | tee $OUT/floors.txt
nproc; lscpu | grep -E "Model name|MHz" | tee -a $OUT/floors.txt
