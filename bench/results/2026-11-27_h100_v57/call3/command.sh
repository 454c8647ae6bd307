set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
bash scripts/gpu_run.sh $OUT "tests:blas_choice or bf16 or prefill_attention_equals" 2>&1 | tail -8
mkdir -p $OUT/f
python3 scripts/pool_figures.py --models llama-2-7b --prompts 300,384,400 --repeats 5 --out $OUT/f \
  --modes graphs/no-lt,graphs,graphs/plus400/no-lt,graphs/plus400,graphs/no-lt,graphs 2>&1 | grep -v -i warn | tail -3 > $OUT/f/log.txt
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/f/pool_figures.json"))
for m in d["models"]:
    for k, v in m.items():
        if isinstance(v, list) and v and isinstance(v[0], dict) and "ttft_ms" in v[0]:
            print(f"{k:28s}", " ".join(f"{r['prompt']}:{r['ttft_ms']:.3f}/{r['itl_median_ms']:.3f}" for r in v))
        elif k.endswith(("_startup_s", "_cublaslt")):
            print(k, v)
PY
