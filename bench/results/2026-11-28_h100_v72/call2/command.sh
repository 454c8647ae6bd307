# As run (calls/c2.py is launch_check.py in this folder).
export PYTHONPATH=src
timeout 150 python3 calls/c2.py 140 2>&1 | grep -v -i warn | tail -40
timeout 200 bash scripts/gpu_run.sh $OUT "tests:prefill_attention"
