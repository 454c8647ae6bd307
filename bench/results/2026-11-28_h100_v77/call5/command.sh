# call 5 (v78): the prefill graph's launch call back to back and after 2 ms idle, 7B graphs, 10 and 400 tokens
PYTHONPATH=src:scripts timeout 220 python3 scripts/prefill_launch_probe.py --model llama-2-7b --mode graphs --lengths 10,400 --gap-ms 0,2 --out $OUT/launch.json 2>&1 | grep -v -i warn | tail -8
