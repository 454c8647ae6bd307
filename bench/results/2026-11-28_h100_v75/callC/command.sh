# v74 call C: the inline decode attention's GPU token test, fewer compiled shapes.
export PYTHONPATH=src PYTHONUNBUFFERED=1
echo "=== test ($(date -u +%T))"
timeout -s KILL 400 python3 -m pytest -m gpu tests/test_gpu.py -k "inline_decode_attention" -v -p no:cacheprovider \
  --durations=0 > $OUT/inline_test.txt 2>&1; grep -E "PASSED|FAILED|ERROR|passed|failed|s call|Error|assert" $OUT/inline_test.txt | head -30
echo "=== done ($(date -u +%T))"
