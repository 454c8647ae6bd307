bash scripts/gpu_run.sh $OUT ltalgo:256,384,400,432,512:wqkv,w_gate_up 2>&1 | tail -14
