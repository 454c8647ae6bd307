"""Where a client's time to first token goes, hop by hop, over many short streamed requests (perf-notes v38).

On one host the server's `first_byte_at` and `first_token_sent_at` stamps share the client's clock, so the client's
TTFT splits into: `client_send` (generate(): validate, encode, send), `send_to_first_byte` (the server's event loop
waking for the frame), `first_byte_to_frame`, `frame_to_queue` (parse and validate, the job made), `queue` (the
engine thread waking for the job), `engine` (the server's `ttft_ms` less `queue`: the prefill, its launch and the
token's read-back), `first_token_out` (the frame encoded and written), and `sent_to_client` (the client waking for it,
reading and decoding it). `gap` is client TTFT minus the server's `ttft_ms`; `unsplit` what the parts leave over.
Where the server reports `launch_ms` (v41), `engine` is split again into `engine_launch` (the host's work up to the
return of token 0's launch call) and `engine_wait` (the rest: the GPU, the read-back).

Usage: PYTHONPATH=src python scripts/ttft_overhead.py --model llama-tiny --mode eager --requests 300 [--out F.json]
       [--prompt-len N] [--gap-ms MS] [--server-arg=--token-writes=loop ...]
It starts a real `rollgraph serve`, warms it up with 20 requests, then prints one JSON object of medians and
10th/90th percentiles (milliseconds).
"""

from __future__ import annotations

import argparse
import collections
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
    p.add_argument("--gap-ms", type=float, default=0.0, help="idle time before each request (the bench's: ~1 ms)")
    p.add_argument("--out")
    p.add_argument("--server-arg", action="append", default=[], help="one more `serve` flag (repeatable)")
    p.add_argument("--server-cpus", help="run the server under `taskset -c` with this CPU list (e.g. 2,3)")
    p.add_argument("--client-cpus", help="pin this client process to this CPU list (e.g. 8)")
    a = p.parse_args()
    if a.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
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
    if a.server_cpus:
        cmd = ["taskset", "-c", a.server_cpus, *cmd]
    rows: dict[str, list[float]] = collections.defaultdict(list)
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, sock, log, timeout_s=600)
        ids = [3 + i % 200 for i in range(a.prompt_len)]
        with Client(sock) as c:
            for i in range(a.requests + 20):
                if a.gap_ms:
                    time.sleep(a.gap_ms / 1e3)
                t0 = time.perf_counter()
                gen = c.generate(ids, max_new_tokens=2)
                sent = time.perf_counter()
                it = iter(gen)
                next(it)
                t1 = time.perf_counter()
                for _ in it:
                    pass
                if i < 20:
                    continue
                t = gen.result["timings"]
                client = (t1 - t0) * 1e3
                parts = {
                    "client_send": (sent - t0) * 1e3,
                    "send_to_first_byte": (t["first_byte_at"] - sent) * 1e3,
                    "first_byte_to_frame": t["first_byte_to_frame_ms"],
                    "frame_to_queue": t["frame_to_queue_ms"],
                    "queue": t["queue_ms"],
                    "engine": t["ttft_ms"] - t["queue_ms"],
                    "first_token_out": t["first_token_out_ms"],
                    "sent_to_client": (t1 - t["first_token_sent_at"]) * 1e3,
                }
                rows["client_ttft"].append(client)
                rows["server_ttft"].append(t["ttft_ms"])
                rows["gap"].append(client - t["ttft_ms"])
                for k, v in parts.items():
                    rows[k].append(v)
                rows["unsplit"].append(client - sum(parts.values()))
                for name, ms in (t.get("host_marks_ms") or {}).items():  # ROLLGRAPH_HOST_MARKS=1 (host_marks.py)
                    rows[f"mark_{name}"].append(ms)
                if t.get("launch_ms") is not None:  # engine = launch (host, to token 0's launch) + the wait (v41)
                    rows["engine_launch"].append(t["launch_ms"])
                    rows["engine_wait"].append(parts["engine"] - t["launch_ms"])
    finally:
        stop_process(proc)
    summary = {
        "model": a.model,
        "mode": a.mode,
        "requests": a.requests,
        "server_args": a.server_arg,
        "server_cpus": a.server_cpus,
        "client_cpus": a.client_cpus,
        "gap_ms": a.gap_ms,
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
