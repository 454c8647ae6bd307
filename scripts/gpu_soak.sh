#!/usr/bin/env bash
# The H100 soak of docs/reliability.md, started detached so it can outlive one device call (it takes ~14 min);
# `bash scripts/gpu_soak.sh start DIR` starts it, `bash scripts/gpu_soak.sh wait DIR OUT SECONDS` waits for its
# summary and copies it (and its log) into OUT.
set -uo pipefail
what=${1:?start or wait}
dir=${2:?run folder}
case "$what" in
  start)
    mkdir -p "$dir"
    PYTHONPATH=src PYTHONUNBUFFERED=1 setsid nohup python3 scripts/soak.py --model llama-3.2-1b --mode graphs \
      --graph-memory 256 --requests 10000 --window 1000 --max-prompt 1500 --max-new-tokens 32 \
      --socket-dir /tmp/soak --time-limit 1080 --out "$dir/soak_h100.json" >"$dir/soak.log" 2>&1 </dev/null &
    echo "soak started" ;;
  wait)
    out=${3:?OUT}
    for _ in $(seq 1 $(( ${4:-580} / 10 ))); do [ -f "$dir/soak_h100.json" ] && break; sleep 10; done
    sleep 2
    cp "$dir/soak_h100.json" "$out/" 2>/dev/null
    grep -v -i warn "$dir/soak.log" >"$out/soak.log"
    tail -3 "$out/soak.log" | cut -c1-1500 ;;
esac
