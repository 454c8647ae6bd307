# the main 7B run at 8cd6be7 (v88's kept BLAS choices: the first server times and writes the store, the later ones
# take it), orjson carried as a wheel (.whl), on call 3's machine
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
rm -f /tmp/torchinductor_root/rollgraph_blas_choices.json
STEP_TIMEOUT=585 timeout 590 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1"
ls -la /tmp/torchinductor_root/rollgraph_blas_choices.json
