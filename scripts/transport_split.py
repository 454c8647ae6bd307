"""Where a bench's client-side time went, per mode and prompt length, from its requests.json (the server's final-frame
timings that `rollgraph bench` keeps per request).

Usage: python scripts/transport_split.py RUN/requests.json [MORE/requests.json ...]
Columns (medians over the requests unless said): client TTFT, the server's own TTFT, their gap, frame read -> job
queued (`in`), token 0 made -> its frame written (`out`), requests whose frame the engine thread read itself
(`read`, engine/all; perf-notes v76), frames the engine thread wrote itself (first request),
ITL median / P99 / max over every interval, the per-request largest sent gap minus largest made gap (median /
max): how much later than the engine made them the slowest frames left the server, and, where the bench kept them,
the client's call to the server's first sight of the frame (`call`) and token 0's frame written to its arrival at the
client (`back`).
"""

from __future__ import annotations

import json
import statistics
import sys


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def clock_columns(tr) -> str:
    """Medians of the bench's clock splits (bench_server.CLOCK_KEYS), or '' for a run from before them."""
    call, back = ([x for x in tr(k) if x is not None] for k in ("call_to_first_byte_ms", "first_token_to_client_ms"))
    if not call or not back:
        return ""
    return f"  call {statistics.median(call):.3f}  back {statistics.median(back):.3f}"


def rows(path: str) -> list[str]:
    with open(path) as f:
        data = json.load(f)
    out = []
    for mode, reqs in data.items():
        for length in sorted({r["prompt_len"] for r in reqs}):
            rr = [r for r in reqs if r["prompt_len"] == length and r.get("server_transport_ms")]
            if not rr:
                continue

            def tr(key: str, rr=rr) -> list:
                return [r["server_transport_ms"].get(key) for r in rr]

            med = statistics.median
            itl = [x for r in rr for x in r["itl_ms"]]
            late = [a - b for a, b in zip(tr("itl_sent_max_ms"), tr("itl_made_max_ms"), strict=True) if a is not None]
            client, server = [r["ttft_ms"] for r in rr], [r["server_ttft_ms"] for r in rr]
            gap = [a - b for a, b in zip(client, server, strict=True)]
            out.append(
                f"{mode:15s} {length:5d}  ttft {med(client):6.2f}  server {med(server):6.2f}  gap {med(gap):.3f}"
                f"  in {med(tr('frame_to_queue_ms')):.3f}  out {med(tr('first_token_out_ms')):.3f}"
                f"  read {tr('request_read_by').count('engine')}/{len(rr)}"
                f"  direct {tr('token_frames_direct')[0]}"
                f"  itl {med(itl):.3f} / {pct(itl, 0.99):.3f} / {max(itl):.2f}"
                f"  late {med(late):.3f} / {max(late):.3f}" + clock_columns(tr)
            )
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(p)
        print("\n".join(rows(p)))
