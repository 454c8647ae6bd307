set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
O=$OUT
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } > $O/env.txt 2>&1
cat $O/env.txt
timeout 120 python3 -m pytest -m gpu tests/test_gpu.py -k "clean_reads" -q -rA -p no:cacheprovider 2>&1 | tail -3
for n in 1 2 3; do
  d=$O/p$n; mkdir -p $d
  s=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/t$n/ind TRITON_CACHE_DIR=/tmp/t$n/tri timeout 150 python3 scripts/profile_decode.py --model llama-2-7b --modes compile+graphs --out $d > $d/out.txt 2>&1
  echo "p$n rc=$? wall=$(( $(date +%s) - s ))s"
  grep -v -i warn $d/out.txt | grep -v "^model" | head -6
  rm -f $d/profile_llama-2-7b.json
done
date -u
