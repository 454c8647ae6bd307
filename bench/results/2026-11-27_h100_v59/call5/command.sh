# call E: v61's probe; tree = this commit
set -u
export PYTHONPATH=src:scripts
python3 -c "import triton; print('triton', triton.__version__)" | tee $OUT/triton.txt
timeout 330 python3 scripts/autotune_gemm_probe.py --out $OUT/residual.json --shapes 3,1 2>$OUT/residual.log
timeout 200 python3 scripts/autotune_gemm_probe.py --out $OUT/plain.json --shapes 0,2 --variants default,tma 2>$OUT/plain.log
tail -c 3000 $OUT/residual.log; tar czf $OUT/logs.tgz -C $OUT residual.log plain.log && rm $OUT/residual.log $OUT/plain.log
