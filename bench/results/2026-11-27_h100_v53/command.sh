cd "$(dirname "$0")/.." && PYTHONPATH=src:scripts timeout 400 python3 calls/split_attn_probe.py $OUT/split_attn.json 2>&1 | grep -E '^\{|Error|error|Traceback' | head -40
