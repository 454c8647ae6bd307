"""The server's share of a client's time to first token: client TTFT minus the server's own `ttft_ms`, and the two
parts the server reports (`frame_to_queue_ms`, `first_token_out_ms`), over many short streamed requests.

Usage: PYTHONPATH=src python scripts/ttft_overhead.py --model llama-tiny --mode eager --requests 300 [--out F.json]
       [--server-arg=--token-writes=loop ...]
It starts a real `rollgraph serve`, warms it up with 20 requests, then prints one JSON object of medians and
10th/90th percentiles (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from rollgraph.bench_server import stop_process, wait_ready
from rollgraph.client import Client


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-tiny")
    p.add_argument("--mode", default="eager")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--prompt-len", type=int, default=10)
    p.add_argument("--out")
    p.add_argument("--server-arg", action="append", default=[], help="one more `serve` flag (repeatable)")
    a = p.parse_args()
    folder = tempfile.mkdtemp(prefix="rg-ttft-")
    sock, log = os.path.join(folder, "s.sock"), os.path.join(folder, "serve.log")
    cmd = [
        sys.executable,
        "-m",
        "rollgraph",
        "serve",
        "--model",
        a.model,
        "--socket",
        sock,
        "--mode",
        a.mode,
        *a.server_arg,
    ]
    rows: dict[str, list[float]] = {"client_ttft": [], "server_ttft": [], "gap": [], "in": [], "out": []}
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, sock, log, timeout_s=600)
        ids = [3 + i % 200 for i in range(a.prompt_len)]
        with Client(sock) as c:
            for i in range(a.requests + 20):
                t0 = time.perf_counter()
                gen = c.generate(ids, max_new_tokens=2)
                it = iter(gen)
                next(it)
                t1 = time.perf_counter()
                for _ in it:
                    pass
                if i < 20:
                    continue
                t = gen.result["timings"]
                client = (t1 - t0) * 1e3
                rows["client_ttft"].append(client)
                rows["server_ttft"].append(t["ttft_ms"])
                rows["gap"].append(client - t["ttft_ms"])
                rows["in"].append(t["frame_to_queue_ms"])
                rows["out"].append(t["first_token_out_ms"])
    finally:
        stop_process(proc)
    summary = {
        "model": a.model,
        "mode": a.mode,
        "requests": a.requests,
        "server_args": a.server_arg,
        "python": sys.version.split()[0],
        **{
            k: {"median": round(statistics.median(v), 4), "p10": pct(v, 0.1), "p90": pct(v, 0.9)}
            for k, v in rows.items()
        },
    }
    line = json.dumps(summary)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
