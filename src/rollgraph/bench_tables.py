"""`rollgraph bench`'s human-readable outputs: the markdown report (original-style tables, the comparison) and the
plot, both made from the results JSON that `bench_report.build_results` builds, so they can be remade from a saved
results.json without measuring again.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

CLIENT_WAIT_NOTE = {
    "spin": " rollgraph's client polls its socket without sleeping while it waits for a frame (`--client-wait spin`).",
    "near": " rollgraph's client sleeps until 1 ms before each token is due, then polls its socket without sleeping "
    "(`--client-wait near`).",
    "block": "",
}

# ---------------------------------------------------------------------------------------------------- markdown


def _ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if x < 1000 else f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _gb(nbytes: float | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 1e9:.1f}"


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def markdown(results: dict) -> str:
    """The whole report: a header with the machine and floors, one original-style table per mode, the comparison."""
    parts = [_header(results)]
    parts += [_mode_table(m) for m in results["modes"].values()]
    parts.append(_comparison(results))
    return "\n\n".join(parts) + "\n"


def _peer_repeats(settings: dict) -> str:
    """The clause "; N measured for the transformers peers" where they measured fewer requests per length than
    rollgraph's modes, else nothing."""
    n = settings.get("peer_repeats")
    return "" if n is None or n == settings["repeats"] else f"; {n} measured for the transformers peers"


def _header(results: dict) -> str:
    fl = results["floors"]
    lines = [
        f"# rollgraph bench: {results['model']}, {results['dtype']}, {results['device']}",
        "",
        f"{results['date']}; torch {results['torch']}, transformers {results['transformers']}; `{results['command']}`",
        "",
    ]
    if fl["decode_floor_ms"] is None:
        lines.append("Floors: not measured (no CUDA device), so the ratio columns are empty.")
    else:
        prefill = [v for v in fl["prefill_floor_ms"].values() if v is not None]
        lines.append(
            f"Floors: copy {fl['copy_bandwidth_GBps'] / 1e3:.2f} TB/s (read + write), matmul "
            f"{fl['matmul_TFLOPs']:.0f} TFLOP/s; {fl['weight_bytes'] / 1e9:.2f} GB of weights "
            f"({fl['params'] / 1e9:.3g} B parameters): decode floor {fl['decode_floor_ms']:.3f} ms, prefill floor "
            f"{min(prefill):.3f}–{max(prefill):.3f} ms. A ratio is latency / floor."
        )
    host = (results.get("machine") or {}).get("host")
    if host:
        wake = host["wake_after_1ms_us"]
        lines.append(
            f"Host: a process blocked for 1 ms ran again {wake['median']:.0f} µs after a message was sent to it "
            f"(median; 90th percentile {wake['p90']:.0f} µs), and the server's parse of a 400-token request took "
            f"{host['parse_400_tokens_us']:.0f} µs. Short-prompt TTFT and the P99 depend on the host as well as "
            "the GPU (host_probe.py)."
        )
    s = results["settings"]
    lines.append(
        f"Workload: batch 1, greedy, {s['new_tokens']} new tokens; per prompt length {s['warmup']} uncounted "
        f"warm-up request(s), then {s['repeats']} measured (random token ids, seed {s['seed']}{_peer_repeats(s)}). "
        "TTFT is the median per length; ITL is pooled over the requests of a length. Timed requests run with the "
        "measuring process's garbage collector paused (as timeit does), for rollgraph's client and the peers alike."
        + CLIENT_WAIT_NOTE.get(s.get("client_wait", "block"), "")
    )
    agree, prefix = results.get("token_agreement") or {}, results.get("token_prefix") or {}
    if len(agree) > 1:
        first = next(iter(agree))
        shown = [
            f"`{m}` {agree[m]:.0%} ({prefix[m]:g})" for m in list(agree)[1:] if agree[m] is not None and m in prefix
        ]
        lines.append(
            f"Greedy tokens against those of `{first}` for the same prompt, share of requests equal throughout (median "
            f"leading tokens shared): {', '.join(shown)}. In half precision a near-tie in the logits can flip a token "
            "and the rest of the request with it; random weights give many near-ties."
        )
    return "\n".join(lines)


def _mode_table(m: dict) -> str:
    title = f"## `{m['mode']}`" + (" (transformers)" if m["kind"] == "peer" else "")
    if m["status"] != "ok" and not m["rows"][0]["completed"]:
        return f"{title}\n\n{m['status']}: {m['error']}"
    notes = [_mode_note(m)]
    if m["status"] != "ok":
        notes.append(f"**{m['status']}**: {m['error']}")
    head = (
        "| Prompt Length | TTFT (ms) | P99 ITL (ms) | Graphs Used | Memory (GB) | Median ITL (ms) "
        "| TTFT / floor | Median ITL / floor | P99 ITL / floor |\n|" + "---|" * 9
    )
    body = [
        f"| {r['prompt_len']} tokens | {_ms(r['median_ttft_ms'])} | {_ms(r['p99_itl_ms'])} | {r['graphs_used']} "
        f"| {_gb(r['memory_reserved_bytes'])} | {_ms(r['median_itl_ms'])} | {_ratio(r['median_ttft_floor_ratio'])} "
        f"| {_ratio(r['median_itl_floor_ratio'])} | {_ratio(r['p99_itl_floor_ratio'])} |"
        for r in m["rows"]
    ]
    avg = {k: _mean(r[k] for r in m["rows"]) for k in m["rows"][0] if k.endswith(("_ms", "_ratio", "_bytes"))}
    body.append(
        f"| **Average** | **{_ms(avg['median_ttft_ms'])}** | **{_ms(avg['p99_itl_ms'])}** | **{m['graphs_used']}** "
        f"| **{_gb(avg['memory_reserved_bytes'])}** | **{_ms(avg['median_itl_ms'])}** "
        f"| **{_ratio(avg['median_ttft_floor_ratio'])}** | **{_ratio(avg['median_itl_floor_ratio'])}** "
        f"| **{_ratio(avg['p99_itl_floor_ratio'])}** |"
    )
    return "\n\n".join([title, *notes, "\n".join([head, *body])])


def _mode_note(m: dict) -> str:
    startup = m.get("startup_s")
    text = f"Ready after {startup:.1f} s" if startup is not None else "Startup not measured"
    if m["kind"] == "server" and not m.get("graphs_enabled"):
        text += " (CUDA graphs off)"
    elif m["kind"] == "server":
        built = m.get("kernel_build_s") or 0
        text += (
            f" (graph capture {m.get('capture_s') or 0:.2f} s"
            + (f" after {built:.2f} s of kernel builds" if built else "")
            + f", {m.get('graphs', 0)} graphs, {(m.get('graph_bytes') or 0) / 2**20:.1f} MiB)"
        )
    mem = m.get("memory_after_start_bytes")
    if mem is not None:
        text += f"; GPU memory {_gb(mem)} GB reserved when ready, {_gb(m.get('memory_peak_bytes'))} GB peak allocated"
    steal = m.get("cpu_steal_pct")
    if steal is not None:
        text += f"; the hypervisor stole {steal:.2f}% of the host's CPU time during its measured requests"
    return text + "."


def _comparison(results: dict) -> str:
    modes = [m for m in results["modes"].values() if any(r["completed"] for r in m["rows"])]
    if not modes:
        return "## Comparison\n\nNo mode completed a request."
    fl = results["floors"]
    head = "| Prompt Length | floor | " + " | ".join(f"`{m['mode']}`" for m in modes) + " |"
    lines = [
        "## Comparison: median TTFT · median ITL, ms (× floor)",
        "",
        head,
        "|" + "---|" * (len(modes) + 2),
    ]
    for i, length in enumerate(results["settings"]["prompt_lengths"]):
        cells = [f"{length} tokens", f"{_ms(fl['prefill_floor_ms'][str(length)])} · {_ms(fl['decode_floor_ms'])}"]
        for m in modes:
            r = m["rows"][i]
            cells.append(
                f"{_ms(r['median_ttft_ms'])} ({_ratio(r['median_ttft_floor_ratio'])}) · "
                f"{_ms(r['median_itl_ms'])} ({_ratio(r['median_itl_floor_ratio'])})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- plot


def plot(results: dict, path: str) -> None:
    """TTFT and ITL (median solid, P99 dotted) against prompt length, one colour per mode, floors dashed black.
    Raises ImportError without matplotlib (the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    fl = results["floors"]
    lengths = results["settings"]["prompt_lengths"]
    for m in results["modes"].values():
        rows = [r for r in m["rows"] if r["completed"]]
        if not rows:
            continue
        x = [r["prompt_len"] for r in rows]
        (line,) = left.plot(x, [r["median_ttft_ms"] for r in rows], marker="o", label=m["mode"])
        right.plot(x, [r["median_itl_ms"] for r in rows], marker="o", color=line.get_color(), label=m["mode"])
        right.plot(x, [r["p99_itl_ms"] for r in rows], linestyle=":", color=line.get_color())
    prefill = [fl["prefill_floor_ms"][str(n)] for n in lengths]
    if fl["decode_floor_ms"] is not None:
        left.plot(lengths, prefill, "k--", label="prefill floor")
        right.axhline(fl["decode_floor_ms"], color="k", linestyle="--", label="decode floor")
    for ax, what in ((left, "TTFT (ms, median)"), (right, "ITL (ms): median solid, P99 dotted")):
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['model']} ({results['dtype']}) on {results['device']}, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
