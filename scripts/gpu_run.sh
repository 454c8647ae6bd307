#!/usr/bin/env bash
# A GPU session's work in one call, step by step; each step writes its files under OUT.
# Usage on the device machine: bash scripts/gpu_run.sh OUT STEP...   with STEP one of
#   tests[:EXPR]               the `gpu` tests (only those pytest's -k EXPR selects, if given); the whole set takes
#                              6.5 min or more on an H100, so give it STEP_TIMEOUT >= 600 (360 cut it short, v76)
#   figures:MODELS:MODES[:N]   scripts/pool_figures.py (e.g. figures:llama-2-7b:graphs,compile+graphs), N measured
#                              requests per prompt length (3 by default)
#   profile:MODEL:MODES[:LENS] scripts/profile_decode.py (LENS: prompt lengths whose prefill to profile too), in OUT/pN
#   hprofile:MODEL:MODES       the same with --host: the decode profile lists the host's top items too (v73), in OUT/pN
#   skinny:ROWS                scripts/skinny_bench.py (few-row matmuls: cuBLAS, inductor, skinny_linear)
#   gemm[:ROWS[:autotune[:MODEL]]]  scripts/prefill_gemm_probe.py (MODEL's projections, default 7B's, at ROWS,
#                              default 384-512; "autotune" adds max-autotune, "-" leaves it out), in OUT/gN
#   atune[:ROWS[:SHAPES]]      scripts/autotune_gemm_probe.py (max-autotune's templates, persistent TMA too, against
#                              cuBLAS on 7B's products at ROWS, default 400; SHAPES indices 0-3), in OUT/aN
#   ltalgo[:ROWS[:SHAPES]]     scripts/lt_algo_probe.py (cuBLASLt's ranked algorithms on 7B's prefill products at
#                              ROWS, default 256-512, against cuBLAS and torch's cuBLASLt path, v65; SHAPES: names,
#                              default the two residual products wo,w_down; wqkv,w_gate_up are the plain ones)
#   ltile[:ROWS[:SHAPES]]      scripts/lt_tile_probe.py (cuBLASLt configurations outside the heuristic's list, tiles
#                              that fit ROWS, default 400,384,320, on SHAPES, default w_down,wo; v79)
#   dattn[:SHAPES]             scripts/decode_attention_probe.py (the decode attention's launch choices, v81)
#   bchoice[:MODEL[:ROWS]]     scripts/blas_choice_probe.py (what blas_choice times and takes for the residual
#                              products, fitted tiles included, v82)
#   ttft:MODEL:MODE            scripts/ttft_overhead.py (a client's TTFT split hop by hop, v38)
#   launch:MODEL:MODE          scripts/prefill_launch_probe.py (a replayed prefill's launch, GPU time, read-back)
#   pattn[:split[:SHAPES]]     scripts/prefill_attention_probe.py (the fused prefill kernel's launch choices, v23;
#                              with split, the keys rotated by a kernel of their own first, v67; with rotate, that
#                              kernel's launches, v84; SHAPES e.g. llama-2-7b, default both)
#   coldpath                   scripts/cold_path_probe.py (request parsing after an idle gap; CPU only, v25)
#   capture:MODEL:MODE[:DIR]   scripts/capture_time.py (start-up on empty kernel caches, or on DIR's, kept between
#                              steps; Triton builds counted, seconds per graph)
#   skinny16                   scripts/skinny16_probe.py (16-row matmul variants against skinny_linear, v26)
#   tbuild                     scripts/triton_build_probe.py (Triton builds from threads against one by one, v27)
#   fusion                     scripts/skinny_fusion_probe.py (SiLU · up and the residual inside the down projection)
#   chain                      scripts/chain_probe.py (a chain of few-row matmuls: launches against one persistent
#                              kernel with grid barriers, v29; killed after 180 s should a barrier hang)
#   resend:MODEL               scripts/resend_loop.py (the original client's loop against streaming)
#   "bench:MODEL:ARGS"         rollgraph bench with ARGS as they are (quote the step), e.g.
#                              "bench:llama-2-7b:--compare-peers --modes graphs,compile+graphs --prompt-lengths 10,400"
# STEP_TIMEOUT=SECONDS in the environment kills each step's Python process after that long (SIGKILL): a `timeout` on
# this script itself would leave a step's pipeline running on.
set -uo pipefail
out=${1:?output folder}
shift
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # a caller's carried wheels (/tmp/site) kept
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -c "import orjson; print('orjson', orjson.__version__)" 2>/dev/null || echo "no orjson: the stdlib json"
} 2>&1 | tee "$out/env.txt"
py() {
  if [ -n "${STEP_TIMEOUT:-}" ]; then timeout -s KILL "$STEP_TIMEOUT" python3 "$@"; else python3 "$@"; fi
}
n=0
for step in "$@"; do
  n=$((n + 1))
  IFS=: read -r what a b c <<<"$step"
  echo "=== $step ($(date -u +%T))"
  case "$what" in
    tests) py -m pytest -m gpu tests/test_gpu.py tests/test_faults.py ${a:+-k "$a"} -q -rA -p no:cacheprovider \
             --durations=0 2>&1 | tee "$out/gpu_tests$n.txt" | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" ;;
    figures) mkdir -p "$out/f$n" && py scripts/pool_figures.py --models "$a" --modes "$b" --out "$out/f$n" \
             ${c:+--repeats $c} 2>&1 \
             | tee "$out/f$n/figures_${a//,/_}.txt" | grep "^{" ;;
    profile) mkdir -p "$out/p$n" && py scripts/profile_decode.py --model "$a" --modes "$b" --prefill "${c:-}" \
             --out "$out/p$n" 2>&1 | tee "$out/p$n/profile_$a.txt" | grep -v -i warn ;;
    hprofile) mkdir -p "$out/p$n" && py scripts/profile_decode.py --model "$a" --modes "$b" --host \
             --out "$out/p$n" 2>&1 | tee "$out/p$n/profile_$a.txt" | grep -v -i warn ;;
    skinny) py scripts/skinny_bench.py --rows "${a:-1,16,32,64}" --out "$out" 2>&1 | tee "$out/skinny_bench.txt" | grep -v -i warn ;;
    gemm) mkdir -p "$out/g$n" && [ "${b:-}" != - ] && tune=${b:+--$b} || tune=
          py scripts/prefill_gemm_probe.py --out "$out/g$n/prefill_gemm.json" ${a:+--rows $a} $tune \
            ${c:+--model $c} 2>&1 | tee "$out/g$n/prefill_gemm.txt" | grep "^{" ;;
    atune) mkdir -p "$out/a$n" && PYTHONPATH=$PYTHONPATH:scripts py scripts/autotune_gemm_probe.py \
             --out "$out/a$n/autotune_gemm.json" ${a:+--rows $a} ${b:+--shapes $b} 2>"$out/a$n/autotune.log" \
             | tee "$out/a$n/autotune_gemm.txt" ;;
    ltalgo) PYTHONPATH=$PYTHONPATH:scripts py scripts/lt_algo_probe.py --out "$out/lt_algo$n.json" ${a:+--rows $a} \
              --shapes "${b:-wo,w_down}" \
              2>"$out/lt_algo$n.log" | tee "$out/lt_algo$n.txt" ;;
    ltile) PYTHONPATH=$PYTHONPATH:scripts py scripts/lt_tile_probe.py --out "$out/lt_tile$n.json" --rows "${a:-400,384,320}" \
             --shapes "${b:-w_down,wo}" 2>&1 | grep -v "^  algo" | tee "$out/lt_tile$n.txt" ;;
    dattn) PYTHONPATH=$PYTHONPATH:scripts py scripts/decode_attention_probe.py --out "$out/decode_attn$n.json" \
             ${a:+--shapes $a} 2>&1 | grep -v -i warn | tee "$out/decode_attn$n.txt" ;;
    bchoice) PYTHONPATH=$PYTHONPATH:scripts py scripts/blas_choice_probe.py --out "$out/blas_choice$n.json" \
             ${a:+--model $a} ${b:+--rows $b} 2>&1 | grep -v -i warn ;;
    ttft) py scripts/ttft_overhead.py --model "$a" --mode "$b" --requests 300 --out "$out/ttft_${a}_${b//+/_}.json" 2>&1 \
            | tail -3 ;;
    launch) PYTHONPATH=$PYTHONPATH:scripts py scripts/prefill_launch_probe.py --model "$a" --mode "$b" \
              --out "$out/launch_${a}_${b//+/_}.json" 2>&1 | grep "^{" ;;
    pattn) py scripts/prefill_attention_probe.py --out "$out/prefill_attention$n.json" ${a:+--$a} \
             ${b:+--shapes $b} 2>&1 \
             | grep -E "^\{|Error" ;;
    coldpath) py scripts/cold_path_probe.py | tee "$out/cold_path.json" ;;
    capture) py scripts/capture_time.py --model "$a" --mode "$b" ${c:+--cache "$c"} \
               --out "$out/capture${n}_${a}_${b//+/_}.json" 2>&1 | tail -1 ;;
    skinny16) PYTHONPATH=$PYTHONPATH:scripts py scripts/skinny16_probe.py --out "$out/skinny16.json" 2>&1 \
                | grep -E "^\{|Error" ;;
    tbuild) py scripts/triton_build_probe.py --out "$out/triton_build.json" 2>&1 | tail -1 ;;
    fusion) PYTHONPATH=$PYTHONPATH:scripts py scripts/skinny_fusion_probe.py --out "$out/fusion.json" 2>&1 \
              | grep -E "^\{|Error" ;;
    chain) STEP_TIMEOUT=${STEP_TIMEOUT:-180} py scripts/chain_probe.py --out "$out/chain.json" 2>&1 | grep -E "^\{|Error" ;;
    resend) py scripts/resend_loop.py --model "$a" --out "$out" 2>&1 | tail -3 ;;
    bench) name="bench${n}_$a"
           py -m rollgraph bench --model "$a" $b --out "$out/$name" 2>"$out/$name.log" | tail -30
           # one file per bench: a device call brings back at most 8 files
           tar czf "$out/$name.tgz" -C "$out" "$name" && rm -rf "${out:?}/$name" ;;
    *) echo "unknown step $step" ;;
  esac
done
echo "=== done ($(date -u +%T))"
