set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
O=$OUT
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } > $O/env.txt 2>&1
cat $O/env.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw --format=csv -lms 500 > $O/smi.csv &
n=0
for run in llama-2-7b:compile+graphs llama-2-7b:compile+graphs/no-halves llama-2-7b:compile+graphs llama-3.2-1b:compile+graphs llama-3.2-1b:compile+graphs/no-halves; do
  n=$((n+1)); model=${run%%:*}; spec=${run#*:}
  d=$O/p$n; mkdir -p $d
  s=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/c$n/ind TRITON_CACHE_DIR=/tmp/c$n/tri timeout 150 python3 scripts/profile_decode.py --model $model --modes $spec --out $d > $d/out.txt 2>&1
  echo "p$n $model $spec rc=$? wall=$(( $(date +%s) - s ))s"
  grep -v -i warn $d/out.txt | grep -v "^model" | head -7
done
kill %1
date -u
