set -u
bash scripts/gpu_run.sh $OUT gemm:368,384,392,400,408,416,432,448 2>&1 | grep -o '"n": [0-9]*, "k": [0-9]*, "m": [0-9]*\|"[a-z_]*_us": [0-9.]*' | paste -sd' ' | sed 's/"n"/\n"n"/g'
