# v85: what blas_choice takes for 7B's products (plain ones now too), then graphs against graphs/no-plain in one process, alternated
STEP_TIMEOUT=150 bash scripts/gpu_run.sh $OUT "bchoice:llama-2-7b:256,320,384,400,432"
mkdir -p $OUT/ab && PYTHONPATH=src timeout -s KILL 300 python3 scripts/pool_figures.py --models llama-2-7b --modes graphs,graphs/no-plain,graphs,graphs/no-plain --prompts 10,300,400 --out $OUT/ab > $OUT/ab/figures.txt 2>&1; grep "^{" $OUT/ab/figures.txt | tail -c 6000
