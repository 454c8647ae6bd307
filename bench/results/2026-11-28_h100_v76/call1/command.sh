# call 1 (v76): TTFT A/B engine vs loop request reads (7B graphs, 10 tokens, 2 rounds alternated), then the gpu set
mkdir -p $OUT/ab
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
timeout 210 bash scripts/ttft_ab.sh $OUT/ab llama-2-7b graphs 2 engine:.:--request-reads=engine loop:.:--request-reads=loop 2>&1 | tail -12
tar czf $OUT/ab.tgz -C $OUT ab && rm -rf $OUT/ab
STEP_TIMEOUT=360 bash scripts/gpu_run.sh $OUT tests 2>&1 | tail -60
