# v90: a short bench of 7B graphs with serve --idle-spin-ms 3 and without, 10- and 400-token prompts (TTFT and ITL
# through the bench's client); orjson carried as a wheel (.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
STEP_TIMEOUT=110 timeout 250 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--modes graphs --prompt-lengths 10,400 --repeats 6 --warmup 1 --server-arg=--idle-spin-ms=3" "bench:llama-2-7b:--modes graphs --prompt-lengths 10,400 --repeats 6 --warmup 1"
