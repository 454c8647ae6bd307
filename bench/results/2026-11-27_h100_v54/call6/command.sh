git log --oneline -1 > $OUT/tree.txt 2>/dev/null
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> $OUT/tree.txt
timeout 400 bash scripts/gpu_run.sh $OUT tests:native_runner 2>&1 | tail -15
