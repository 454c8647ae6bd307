"""The original client's loop against a real server: resend the whole sequence for every token (the `inference`
message, which prefix reuse turns into one decode step), against streaming `generate`. Issue 3's check: the loop's
per-token latency within 10% of streaming's.

Usage: PYTHONPATH=src python scripts/resend_loop.py --model llama-3.2-1b --out DIR [--mode graphs]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from rollgraph.client import Client


def seed_send_request(sock: socket.socket, input_tokens: list[int]) -> list[int]:
    """The original design's client code, with its single recv() replaced by a loop that reads the whole frame."""
    data = json.dumps({"type": "inference", "input_tokens": input_tokens}).encode("utf-8")
    sock.sendall(len(data).to_bytes(4, "big"))
    sock.sendall(data)
    n = int.from_bytes(_recv(sock, 4), "big")
    reply = json.loads(_recv(sock, n))
    assert reply["status"] == "success", reply
    return reply["output_tokens"]


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed")
        buf += chunk
    return buf


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            with Client(path, timeout=5) as c:
                c.health()
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("server did not become ready")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3.2-1b")
    p.add_argument("--mode", default="graphs")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--out", default=".")
    a = p.parse_args()
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "s.sock")
    cmd = [sys.executable, "-m", "rollgraph", "serve", "--model", a.model, "--socket", path, "--mode", a.mode]
    log = open(os.path.join(a.out, "resend_server.log"), "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stderr=log)
    try:
        wait_for(path, proc)
        rows = []
        for r in range(4):
            prompt = [(13 * i + 7 * r) % 250 + 3 for i in range(100)]
            with Client(path) as c:
                stamps, gen = [], c.generate(input_tokens=prompt, max_new_tokens=a.new_tokens)
                for _ in gen:
                    stamps.append(time.perf_counter())
                streamed = gen.result["output_tokens"]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            seq, loop_stamps = list(prompt), []
            for _ in range(a.new_tokens):
                seq += seed_send_request(sock, seq)
                loop_stamps.append(time.perf_counter())
            sock.close()
            if r:  # the first round warms both paths up
                rows.append(
                    {
                        "stream_itl_ms": statistics.median(1e3 * (b - a) for a, b in itertools.pairwise(stamps)),
                        "loop_itl_ms": statistics.median(1e3 * (b - a) for a, b in itertools.pairwise(loop_stamps)),
                        "same_tokens": seq[len(prompt) :] == streamed,
                    }
                )
        with Client(path) as c:
            server = c.stats()["server"]
        out = {
            "model": a.model,
            "mode": a.mode,
            "rounds": rows,
            "stream_itl_ms": statistics.median(r["stream_itl_ms"] for r in rows),
            "loop_itl_ms": statistics.median(r["loop_itl_ms"] for r in rows),
            "server_counters": {k: server.get(k) for k in ("prefix_reuse_requests", "full_prefill_requests")},
        }
        out["loop_over_stream"] = round(out["loop_itl_ms"] / out["stream_itl_ms"], 3)
        print(json.dumps(out))
        with open(os.path.join(a.out, f"resend_loop_{a.model}.json"), "w") as f:
            json.dump(out, f, indent=1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    main()
