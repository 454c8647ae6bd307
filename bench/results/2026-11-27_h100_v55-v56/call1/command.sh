# v55 (residual in cuBLAS's product) A/B in process, and v56 (speculation only where it replays) on 1B eager.
OUT=$1
export PYTHONPATH=src PYTHONUNBUFFERED=1
s=$(date +%s)
timeout 200 bash scripts/gpu_run.sh $OUT "figures:llama-2-7b:graphs,graphs/no-addmm,graphs,graphs/no-addmm:5" 2>&1 | tail -8
echo "graphs A/B $(( $(date +%s) - s )) s"
for spec in compile+graphs compile+graphs/no-addmm compile+graphs; do
  d=$OUT/cg_${spec//[+\/]/_}_$(date +%s)
  mkdir -p $d
  timeout 150 python3 scripts/pool_figures.py --models llama-2-7b --modes "$spec" --repeats 5 --out $d 2>$d/log.txt | grep "^{" | tail -1 | cut -c1-1500
  echo "$spec $(( $(date +%s) - s )) s"
done
for tree in new old; do
  src=src; [ $tree = old ] && src=calls/old/src
  mkdir -p $OUT/resend_$tree
  PYTHONPATH=$src timeout 90 python3 scripts/resend_loop.py --model llama-3.2-1b --mode eager --new-tokens 32 --out $OUT/resend_$tree 2>&1 | tail -2
  echo "resend $tree $(( $(date +%s) - s )) s"
done
cd $OUT && tar czf call1.tgz --exclude=call1.tgz . && find . -mindepth 1 ! -name call1.tgz ! -name env.txt -delete
