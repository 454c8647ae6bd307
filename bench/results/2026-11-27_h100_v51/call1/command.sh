#!/usr/bin/env bash
# Call 1: the whole gpu set at 5ec2d3a, then a 7B compile+graphs start on empty caches and a second on the same ones.
set -u
export PYTHONPATH=src
git -C . log --oneline -1 2>/dev/null | tee $OUT/tree.txt
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv >> $OUT/tree.txt
timeout 420 bash scripts/gpu_run.sh $OUT tests 2>&1 | tail -45
timeout 150 bash scripts/gpu_run.sh $OUT capture:llama-2-7b:compile+graphs:/tmp/cc capture:llama-2-7b:compile+graphs:/tmp/cc 2>&1 | tail -6
ls $OUT
