set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
O=$OUT
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv; python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"; } > $O/env.txt 2>&1
cat $O/env.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw --format=csv -lms 500 > $O/smi.csv &
for spec in compile+graphs compile+graphs/no-halves; do
  d=$O/${spec//[+\/]/_}; mkdir -p $d
  s=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/c_$RANDOM/ind TRITON_CACHE_DIR=/tmp/c_$RANDOM/tri timeout 200 python3 scripts/profile_decode.py --model llama-2-7b --modes $spec --out $d > $d/out.txt 2>&1
  echo "$spec rc=$? wall=$(( $(date +%s) - s ))s"
  grep -v -i warn $d/out.txt | tail -25
done
kill %1
date -u
timeout 330 bash scripts/gpu_run.sh $O tests 2>&1 | tail -8
date -u
