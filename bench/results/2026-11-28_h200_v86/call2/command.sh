# v86: which reduction schemes cuBLASLt's check accepts on the split-K candidates (7B down at 400 rows, 1B down at 256)
PYTHONPATH=src timeout 100 python3 calls/dbg_red.py 2>&1 | tail -60   # the script is dbg_red.py here
