"""How much slower the server's request parsing runs after an idle gap than back to back (perf-notes v25).

The request path runs once per request, after the process has waited for it. This times decoding and parsing one
generate frame (10 or 400 token ids) right after the previous one, and after a gap spent sleeping or spinning, so
that a slowdown that depends on the gap's length (caches, TLBs and branch predictors refilled after other work ran on
the core) shows apart from the cost of waking up. Prints one JSON object of medians in µs.

    PYTHONPATH=src python3 scripts/cold_path_probe.py
"""

from __future__ import annotations

import json
import statistics
import time

from rollgraph.protocol import decode_payload, encode_frame, parse_request

GAPS_S = (0.0, 0.0002, 0.001, 0.005, 0.05)


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def first_and_second_us(body: bytes, wait, gap: float, n: int) -> tuple[float, float]:
    """Medians of the first parse after the gap and of a second one straight after it."""
    first, second = [], []
    for _ in range(n):
        wait(gap)
        t0 = time.perf_counter()
        parse_request(decode_payload(body))
        t1 = time.perf_counter()
        parse_request(decode_payload(body))
        t2 = time.perf_counter()
        first.append((t1 - t0) * 1e6)
        second.append((t2 - t1) * 1e6)
    return round(statistics.median(first), 1), round(statistics.median(second), 1)


def main() -> None:
    out = {}
    for n_ids in (10, 400):
        message = {"type": "generate", "input_tokens": list(range(1000, 1000 + n_ids)), "max_new_tokens": 64}
        body = encode_frame(message)[4:]
        for how, wait in (("sleep", time.sleep), ("spin", spin)):
            for gap in GAPS_S:
                if gap == 0.0 and how == "spin":
                    continue
                n = 50 if gap >= 0.05 else 200
                label = "back_to_back" if gap == 0.0 else f"{how}_{gap * 1e3:g}ms"
                out[f"{n_ids}_ids_{label}"] = first_and_second_us(body, wait, gap, n)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
