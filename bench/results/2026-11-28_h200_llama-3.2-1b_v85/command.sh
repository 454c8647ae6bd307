# call7: the 1B run with v82-v85, orjson carried as a wheel (.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
STEP_TIMEOUT=330 timeout 340 bash scripts/gpu_run.sh $OUT "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --peer-repeats 3 --warmup 1"
