# v90: serve --idle-spin-ms 3 against off, 7B graphs, client TTFT split (ttft_ab.sh), 10- and 400-token prompts,
# 1 ms idle before each request (the bench's), two rounds alternated; orjson carried as a wheel (.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
mkdir -p $OUT/t10 $OUT/t400
TTFT_REQUESTS=200 timeout 220 bash scripts/ttft_ab.sh $OUT/t10 llama-2-7b graphs 2 "off:.::--gap-ms 1" "spin3:.:--idle-spin-ms=3:--gap-ms 1"
TTFT_REQUESTS=150 timeout 200 bash scripts/ttft_ab.sh $OUT/t400 llama-2-7b graphs 2 "off:.::--gap-ms 1 --prompt-len 400" "spin3:.:--idle-spin-ms=3:--gap-ms 1 --prompt-len 400"
cd $OUT && tar czf ttft.tgz t10 t400 && rm -rf t10 t400
