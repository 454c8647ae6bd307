# call H: v63's A/B (block, near, block, near), compile+graphs alone on 7B
set -u
mkdir -p $OUT/ab
for i in 1 2 3 4; do
  wait=block; [ $((i % 2)) -eq 0 ] && wait=near
  bash scripts/gpu_run.sh $OUT/ab "bench:llama-2-7b:--modes compile+graphs --prompt-lengths 10,100,200,300,400 --repeats 6 --warmup 1 --client-wait $wait" | tail -12
  mv $OUT/ab/bench1_llama-2-7b.tgz $OUT/ab/r${i}_$wait.tgz; mv $OUT/ab/bench1_llama-2-7b.log $OUT/ab/r${i}_$wait.log
done
tar czf $OUT/ab.tgz -C $OUT ab && rm -rf $OUT/ab
