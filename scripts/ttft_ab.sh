#!/usr/bin/env bash
# TTFT split (scripts/ttft_overhead.py) for several trees or server flags, alternated round by round, one server
# each: the process-to-process spread of the host's hops (~0.08 ms, perf-notes v38) needs both sides in one call.
# Usage on the device machine: bash scripts/ttft_ab.sh OUT MODEL MODE ROUNDS LABEL:DIR[:SERVE_FLAG[:SCRIPT_ARGS]] ...
#   DIR is a tree with src/ and scripts/ (. for this one, or a copy of an older commit carried beside it); SERVE_FLAG
#   one more `serve` flag, e.g. loop:.:--token-writes=loop; SCRIPT_ARGS more ttft_overhead.py arguments, e.g.
#   "pinned:.::--server-cpus 2,3 --client-cpus 8"
set -uo pipefail
out=${1:?output folder} model=${2:?model} mode=${3:?mode} rounds=${4:?rounds}
shift 4
here=$(pwd)
order=("$@")
for r in $(seq 1 "$rounds"); do
  if ((r % 2 == 0)); then variants=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do variants+=("${order[i]}"); done
  else variants=("${order[@]}"); fi  # even rounds in reverse: no variant always first after a fresh start
  for variant in "${variants[@]}"; do
    IFS=: read -r label dir flag extra <<<"$variant"
    echo "=== round $r $label ($dir ${flag:-}) $(date -u +%T)"
    (cd "$dir" && PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} python3 "$here/scripts/ttft_overhead.py" --model "$model" --mode "$mode" \
      --requests ${TTFT_REQUESTS:-300} --out "$out/ttft_r${r}_$label.json" ${flag:+--server-arg=$flag} $extra 2>&1 \
      | tail -1 \
      | python3 -c "import json,sys; s=sys.stdin.read(); d=json.loads(s) if s.startswith('{') else print(s) or {}
print({k: d[k]['median'] for k in d if isinstance(d[k], dict)})")
  done
done
