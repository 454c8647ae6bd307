# call 1 (v77): token 0 launched right after the engine thread's parse (this tree, host marks on) against b9a4334
# (calls/base), 7B, 2 ms idle before each request, 200 requests a server, 2 rounds alternated
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch,transformers,triton;print(torch.__version__,transformers.__version__,triton.__version__)"
export ROLLGRAPH_HOST_MARKS=1
mkdir -p $OUT/ab
for len in 10 400; do
  TTFT_REQUESTS=200 timeout 200 bash scripts/ttft_ab.sh $OUT/ab llama-2-7b graphs 2 "new$len:.::--prompt-len $len --gap-ms 2" "base$len:calls/base::--prompt-len $len --gap-ms 2" 2>&1 | grep -v "^$"
done
TTFT_REQUESTS=200 timeout 260 bash scripts/ttft_ab.sh $OUT/ab llama-2-7b compile+graphs 2 "cgnew10:.::--gap-ms 2" "cgbase10:calls/base::--gap-ms 2" 2>&1 | grep -v "^$"
tar czf $OUT/ab.tgz -C $OUT ab && rm -rf $OUT/ab
