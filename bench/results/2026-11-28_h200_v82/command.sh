# call1: the compile-mode inline decode attention test since v81, then the 1B run with v81 (tree 8a68065)
STEP_TIMEOUT=330 timeout 590 bash scripts/gpu_run.sh $OUT tests:inline_decode "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --peer-repeats 3 --warmup 1"
# call2: tree 427f37c (v82): the GPU tests of blas_choice and lt_matmul (fitted tiles included), then what
# blas_choice times and takes for 7B's and 1B's residual products
STEP_TIMEOUT=240 timeout 560 bash scripts/gpu_run.sh $OUT "tests:blas_choice or cublaslt or fitted" bchoice:llama-2-7b bchoice:llama-3.2-1b
# call3: tree 794119f (v81-v83), the main 7B run, orjson carried as a wheel (.whl: orjson-3.13.0 cp312 manylinux,
# from `pip download --no-deps --only-binary=:all: --python-version 3.12 ... orjson>=3.9`, see the device README)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
STEP_TIMEOUT=585 timeout 590 bash scripts/gpu_run.sh $OUT "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs,eager,compile --prompt-lengths 10,100,200,300,400 --repeats 6 --peer-repeats 3 --warmup 1"
# call4: tree 794119f (v81-v83), the whole gpu set, orjson carried as a wheel (.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
STEP_TIMEOUT=560 timeout 580 bash scripts/gpu_run.sh $OUT tests
# call5: tree f287fda (v84 probes): _rotate_keys' launches over the split path, then the decode step's profile
STEP_TIMEOUT=250 timeout 560 bash scripts/gpu_run.sh $OUT pattn:rotate "profile:llama-2-7b:compile+graphs:10,400"
# call6: tree 6c14cb2 (v84 taken: ROTATE_ROWS 8): the gpu tests of the prefill attention and of every mode's tokens
STEP_TIMEOUT=300 timeout 330 bash scripts/gpu_run.sh $OUT "tests:prefill_attention or last_layer or mode_tokens_equal_eager"
