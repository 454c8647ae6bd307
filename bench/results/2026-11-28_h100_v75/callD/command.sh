# v74 call D: the inline decode attention's GPU token test (op recorded by the profiler), then 7B bench of `compile` mode with INLINE on (tree has INLINE = True).
export PYTHONPATH=src PYTHONUNBUFFERED=1
cd $OUT && { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } > env.txt; cd - >/dev/null
grep -n "^INLINE" src/rollgraph/decode_attention.py
echo "=== test ($(date -u +%T))"
timeout -s KILL 290 python3 -m pytest -m gpu tests/test_gpu.py -k "inline_decode_attention" -v -p no:cacheprovider \
  --durations=0 > $OUT/inline_test.txt 2>&1; grep -E "PASSED|FAILED|passed|failed|s call|^E " $OUT/inline_test.txt | head -30
echo "=== bench ($(date -u +%T))"
timeout -s KILL 220 python3 -m rollgraph bench --model llama-2-7b --modes compile --prompt-lengths 10,100,200,300,400 \
  --repeats 6 --warmup 1 --out $OUT/bench_compile > $OUT/bench.txt 2> $OUT/bench.log; tail -25 $OUT/bench.txt
echo "=== done ($(date -u +%T))"
cd $OUT && tar czf bench_compile.tgz bench_compile bench.log && rm -rf bench_compile bench.log
