# v85's probe (fitted tiles on the plain prefill products) and v84's A/B in the step, one H200
STEP_TIMEOUT=400 bash scripts/gpu_run.sh $OUT ltile:400,432,384,320,256:w_gate_up,wqkv figures:llama-2-7b:graphs,graphs/rot64,graphs,graphs/rot64
