# v79 (perf-notes): cuBLASLt configurations outside the heuristic's list, one NVIDIA H200 (kind nvidia-h200),
# torch 2.11.0+cu130, transformers 5.17.0, triton 3.6.0, driver 580.159.04, 2026-11-28 08:26-08:28 UTC.
# call1: tree 983f36a (configurations from each algorithm's defaults only; back-to-back screening).
PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts timeout 540 python3 scripts/lt_tile_probe.py --out $OUT/tiles.json --rows 400,384,320 --shapes w_down,wo --budget-s 40
# call2: 983f36a plus the probe's second form (configurations also from copies of the heuristic's candidates,
# refusals counted, the best 48 screened again after clean reads), committed with these results.
PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts timeout 500 python3 scripts/lt_tile_probe.py --out $OUT/tiles.json --rows 400,384 --shapes w_down,wo --budget-s 45
