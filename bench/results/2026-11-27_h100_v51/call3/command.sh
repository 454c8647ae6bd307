git log --oneline -1 > $OUT/tree.txt 2>/dev/null
export PYTHONPATH=src
timeout 240 python3 calls/ahead_probe.py eager,compile $OUT/ahead_probe.json 2>&1 | grep -E '^\{|Error|error' 
timeout 330 bash scripts/gpu_run.sh $OUT "bench:llama-3.2-1b:--compare-peers --modes compile+graphs,graphs --prompt-lengths 10,100,300,400 --repeats 3 --warmup 1" 2>&1 | tail -12
