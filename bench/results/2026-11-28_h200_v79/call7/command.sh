set -u
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/smi.txt
PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts timeout 400 python3 scripts/decode_attention_probe.py --out $OUT/decode_attn.json 2>&1 | grep -v -i warn | tee $OUT/log.txt
