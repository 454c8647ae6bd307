# call6: the main 7B run at the end of v86-v87 (tree 2be9eef), orjson carried as a wheel (.whl), on call 5's machine
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
STEP_TIMEOUT=585 timeout 590 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1"
