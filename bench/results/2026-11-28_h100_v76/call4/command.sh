# call 4 (v76): engine vs loop request reads with 2 ms idle before each request (the bench's pattern), 7B graphs, 10 and 400 tokens
mkdir -p $OUT/ab
for len in 10 400; do
  TTFT_REQUESTS=200 timeout 260 bash scripts/ttft_ab.sh $OUT/ab llama-2-7b graphs 2 "engine$len:.:--request-reads=engine:--prompt-len $len --gap-ms 2" "loop$len:.:--request-reads=loop:--prompt-len $len --gap-ms 2" 2>&1 | grep -v "^$"
done
tar czf $OUT/ab.tgz -C $OUT ab && rm -rf $OUT/ab
