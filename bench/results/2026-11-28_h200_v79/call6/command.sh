set -u
STEP_TIMEOUT=420 timeout 440 bash scripts/gpu_run.sh $OUT profile:llama-2-7b:compile+graphs,graphs:10,400
