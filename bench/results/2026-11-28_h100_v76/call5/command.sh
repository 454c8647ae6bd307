# call 5 (v76): engine vs loop request reads, compile+graphs 7B, 10 tokens, 2 ms idle before each request, 2 rounds
mkdir -p $OUT/ab
TTFT_REQUESTS=200 timeout 400 bash scripts/ttft_ab.sh $OUT/ab llama-2-7b compile+graphs 2 "engine10:.:--request-reads=engine:--gap-ms 2" "loop10:.:--request-reads=loop:--gap-ms 2" 2>&1 | grep -v "^$"
tar czf $OUT/ab.tgz -C $OUT ab && rm -rf $OUT/ab
