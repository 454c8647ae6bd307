# v74 call A: the inline decode attention's GPU token test, then 1B host profile of compile and compile/inline.
export PYTHONPATH=src PYTHONUNBUFFERED=1
cd $OUT && { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } > env.txt; cat env.txt; cd - >/dev/null
echo "=== test ($(date -u +%T))"
timeout -s KILL 200 python3 -m pytest -m gpu tests/test_gpu.py -k "inline_decode_attention" -v -p no:cacheprovider \
  --durations=0 > $OUT/inline_test.txt 2>&1; grep -E "PASSED|FAILED|ERROR|passed|failed|s call|Error|assert" $OUT/inline_test.txt | head -30
echo "=== hprofile ($(date -u +%T))"
mkdir -p $OUT/p && timeout -s KILL 300 python3 scripts/profile_decode.py --model llama-3.2-1b --modes compile,compile/inline --host \
  --out $OUT/p > $OUT/p/profile.txt 2>&1; grep -v -i warn $OUT/p/profile.txt | tail -80 | cut -c1-220
echo "=== done ($(date -u +%T))"
cd $OUT && tar czf p.tgz p && rm -rf p
