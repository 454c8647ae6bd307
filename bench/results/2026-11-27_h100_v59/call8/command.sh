# call G: the whole gpu set at the session's last code
bash scripts/gpu_run.sh $OUT tests
