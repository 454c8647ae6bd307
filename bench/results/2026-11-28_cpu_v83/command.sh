# /tmp/wt-old: `git worktree add /tmp/wt-old 427f37c` (the tree before v83); OUT=any folder
for i in 1 2; do
  for v in old new; do
    if [ $v = old ]; then P=/tmp/wt-old/src; S=/tmp/wt-old/scripts; else P=src; S=scripts; fi
    PYTHONPATH=$P timeout 300 .venv/bin/python $S/ttft_overhead.py --model llama-tiny --mode eager --requests 200 --prompt-len 400 > $OUT/${v}_$i.json 2>/dev/null
  done
done
echo done
