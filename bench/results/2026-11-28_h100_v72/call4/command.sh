# As run (calls/c4.py is compile_host.py in this folder).
# `compile` mode's host time on 7B (calls/c4.py), as it is and two variants, each in its own process.
export PYTHONPATH=src PYTHONUNBUFFERED=1
cd $OUT && { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > env.txt; cd - >/dev/null
for v in as-is static nodyn; do
  echo "=== $v ($(date -u +%T))"
  TORCH_LOGS=recompiles timeout -s KILL 170 python3 calls/c4.py $v $OUT/compile_host_$v.json > $OUT/compile_host_$v.log 2>&1
  grep -v -i "warn" $OUT/compile_host_$v.log | grep -v "^\[" | tail -32
  grep -c "Recompiling" $OUT/compile_host_$v.log
done
echo "=== done ($(date -u +%T))"
