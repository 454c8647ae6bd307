# call E2: v61's probe again without the exhaustive variant (call E's was cut off by its time limit)
set -u
export PYTHONPATH=src:scripts
timeout 300 python3 scripts/autotune_gemm_probe.py --out $OUT/residual.json --shapes 3,1 --variants default,tma 2>$OUT/residual.log
tar czf $OUT/logs.tgz -C $OUT residual.log && rm $OUT/residual.log
