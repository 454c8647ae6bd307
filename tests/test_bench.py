"""`rollgraph bench`: statistics and labels on made-up samples, prompts and settings, then the real thing on CPU —
`python -m rollgraph bench` on llama-tiny through real servers and the hf-eager peer, its outputs checked for
completeness and consistency (never for speed)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from rollgraph.bench import BenchSettings, make_prompts, parse_settings
from rollgraph.bench_report import (
    ModeRun,
    Sample,
    group_label,
    metric_block,
    percentile,
    request_label,
    summarize,
    token_agreement,
    token_prefix,
)
from rollgraph.bench_server import CLOCK_KEYS, TRANSPORT_KEYS, BenchError, run_server_mode
from rollgraph.floors import Floors

VLLM_KEYS = [f"{stat}_{m}_ms" for m in ("ttft", "itl", "tpot", "e2el") for stat in ("mean", "median", "p99")]
SMOKE = dict(modes=("eager", "seed"), lengths=(10, 20), new_tokens=4, repeats=2, peer_repeats=1)


def sample(prompt_len: int = 10, ttft: float = 10.0, itl: tuple = (2.0, 4.0), **kw) -> Sample:
    e2el = ttft + sum(itl) + 0.5
    return Sample(prompt_len, kw.pop("repeat", 0), ttft, itl, e2el, tuple(range(len(itl) + 1)), **kw)


# ---- statistics ------------------------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy():
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    with pytest.raises(ValueError):
        percentile([], 50)
    assert summarize([]) == {"mean": None, "median": None, "p99": None}


def test_metric_block_counts_and_ratios():
    floors = Floors(weight_bytes=2_000_000, params=1_000_000, copy_bandwidth=1e9, matmul_flops=1e9)
    assert floors.decode_ms == pytest.approx(2.0)
    assert floors.prefill_ms(1) == pytest.approx(2.0)  # memory-bound: the weight read
    assert floors.prefill_ms(10) == pytest.approx(20.0)  # compute-bound: 2 * 1e6 * 10 / 1e9 s
    block = metric_block([sample(10, 40.0, (2.0, 4.0)), sample(10, 60.0, (6.0, 8.0), repeat=1)], floors)
    assert all(k in block for k in VLLM_KEYS)
    assert block["completed"] == 2 and block["num_itl"] == 4 and block["total_output_tokens"] == 6
    assert block["median_ttft_ms"] == 50.0 and block["median_itl_ms"] == 5.0
    assert block["median_ttft_floor_ratio"] == pytest.approx(2.5)  # 50 ms over a 20 ms prefill floor
    assert block["median_itl_floor_ratio"] == pytest.approx(2.5)  # 5 ms over a 2 ms decode floor
    assert block["mean_tpot_ms"] == pytest.approx((3.25 + 7.25) / 2)  # (e2el - ttft) / (tokens - 1)
    unknown = metric_block([sample()], Floors(None, None, None, None))
    assert unknown["median_itl_floor_ratio"] is None and unknown["median_itl_ms"] == 3.0


def test_the_steal_share_counts_only_requests_whose_cpu_time_was_read():
    floors = Floors(None, None, None, None)
    read = [sample(cpu_steal_ms=30.0, cpu_all_ms=1000.0), sample(cpu_steal_ms=0.0, cpu_all_ms=500.0, repeat=1)]
    assert metric_block(read, floors)["cpu_steal_pct"] == pytest.approx(2.0)  # 30 of 1500 ms
    assert metric_block([*read, sample(repeat=2)], floors)["cpu_steal_pct"] == pytest.approx(2.0)
    assert metric_block([sample()], floors)["cpu_steal_pct"] is None  # a platform without /proc/stat


def test_graph_labels():
    assert request_label({"pre": 64}, uses_graphs=True) == "Pre-captured"
    assert request_label({"background": 3, "inline": 1}, uses_graphs=True) == "Captured later"
    assert request_label({"eager": 64}, uses_graphs=True) == "Eager fallback"
    assert request_label({"eager": 64}, uses_graphs=False) == "Eager"
    assert request_label({"compiled": 64}, uses_graphs=False) == "Compiled"
    assert request_label({"pre": 60, "eager": 4}, uses_graphs=True) == "Mixed"
    both = [sample(sources={"pre": 3}), sample(sources={"inline": 3})]
    assert group_label(both, uses_graphs=True) == "Mixed"
    assert group_label(both[:1], uses_graphs=True) == "Pre-captured"


def test_token_agreement_compares_each_mode_with_the_first():
    a = ModeRun("eager", "server", samples=[sample(repeat=0), sample(repeat=1)])
    flipped = Sample(10, 1, 1.0, (1.0, 1.0), 3.0, (9, 9, 9))
    b = ModeRun("graphs", "server", samples=[sample(repeat=0), flipped])
    skipped = ModeRun("hf-static-compile", "peer", status="skipped")
    assert token_agreement([a, b, skipped]) == {"eager": 1.0, "graphs": 0.5, "hf-static-compile": None}


def test_token_prefix_counts_leading_tokens_shared_with_the_first_mode():
    a = ModeRun("eager", "server", samples=[sample(repeat=0, itl=(1.0,) * 4), sample(repeat=1, itl=(1.0,) * 4)])
    early = Sample(10, 0, 1.0, (1.0,) * 4, 5.0, (0, 1, 7, 3, 4))  # the first mode's is (0, 1, 2, 3, 4)
    at_once = Sample(10, 1, 1.0, (1.0,) * 4, 5.0, (9, 1, 2, 3, 4))
    b = ModeRun("graphs", "server", samples=[early, at_once])
    short = ModeRun("compile", "server", samples=[Sample(10, 0, 1.0, (1.0,), 2.0, (0, 1))])  # stopped early
    skipped = ModeRun("hf-static-compile", "peer", status="skipped")
    got = token_prefix([a, b, short, skipped])
    assert got == {"eager": 5, "graphs": 1, "compile": 2, "hf-static-compile": None}


# ---- settings and prompts --------------------------------------------------------------------------------------


def test_settings_map_flags_and_refuse_bad_values():
    s = parse_settings(
        ["--modes", "graphs,eager", "--prompt-lengths", "10,400", "--kv-bucket", "0", "--compare-peers",
         "--server-arg=--on-miss=capture", "--graph-memory", "512", "--client-wait", "spin"]
    )  # fmt: skip
    assert s.client_wait == "spin" and BenchSettings().client_wait == "block"
    assert parse_settings(["--client-wait", "near"]).client_wait == "near"
    assert s.all_modes == ("graphs", "eager", "hf-eager", "hf-static-compile")
    assert s.serve_flags() == ["--dtype", "auto", "--kv-bucket", "0", "--graph-memory", "512.0", "--on-miss=capture"]
    assert BenchSettings().prompt_lengths == (10, 50, 100, 150, 200, 250, 300, 350, 400)
    s = parse_settings(["--repeats", "6", "--peer-repeats", "3"])
    assert [s.measured(m) for m in ("graphs", "hf-eager", "hf-static-compile")] == [6, 3, 3]
    assert parse_settings(["--repeats", "6"]).measured("hf-eager") == 6
    for bad in (
        dict(modes=("fast",)),
        dict(prompt_lengths=()),
        dict(new_tokens=1),
        dict(max_seq_len=100),
        dict(client_wait="fast"),
        dict(repeats=3, peer_repeats=4),
        dict(peer_repeats=0),
    ):
        with pytest.raises(BenchError):
            BenchSettings(**bad)


def test_prompts_are_seeded_distinct_and_in_range():
    s = BenchSettings(prompt_lengths=(1, 30), repeats=20, warmup=2, seed=7)
    p = make_prompts(s, vocab=40)
    assert p == make_prompts(s, vocab=40) and p != make_prompts(BenchSettings(prompt_lengths=(1, 30), seed=8), 40)
    assert [(r.prompt_len, r.repeat, r.warmup) for r in p[:3]] == [(1, -2, True), (1, -1, True), (1, 0, False)]
    assert [r.repeat for r in p if r.prompt_len == 30] == list(range(-2, 20))
    assert all(len(r.ids) == r.prompt_len and all(3 <= t < 40 for t in r.ids) for r in p)
    firsts = [r.ids[0] for r in p]
    assert all(a != b for a, b in itertools.pairwise(firsts)), "consecutive prompts must not share a prefix"


# ---- the real thing --------------------------------------------------------------------------------------------


class _Bar:
    def update(self, n: int = 1) -> None:
        pass


def test_server_that_cannot_start_fails_its_mode_with_its_log(tmp_path):
    folder = tempfile.mkdtemp(dir="/tmp", prefix="rgt")
    try:
        s = BenchSettings(model="llama-tiny", modes=("eager",), server_args=("--max-graphs=0",), ready_timeout_s=60)
        run = run_server_mode(s, "eager", make_prompts(s, 320), f"{folder}/s", str(tmp_path / "eager.log"), _Bar())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert run.status == "failed" and not run.samples
    assert "exited with code" in run.error and "max_graphs" in run.error  # the tail of the server's own message


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    argv = ["--model", "llama-tiny", "--modes", ",".join(SMOKE["modes"]),
            "--prompt-lengths", ",".join(map(str, SMOKE["lengths"])), "--new-tokens", str(SMOKE["new_tokens"]),
            "--repeats", str(SMOKE["repeats"]), "--peer-repeats", str(SMOKE["peer_repeats"]), "--compare-peers",
            "--client-wait", "spin",
            "--out", str(out)]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "rollgraph", "bench", "--", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_smoke_outputs_are_complete_and_consistent(smoke):
    _proc, out = smoke
    results = json.loads((out / "results.json").read_text())
    modes = (*SMOKE["modes"], "hf-eager", "hf-static-compile")
    assert list(results["modes"]) == list(modes)
    assert results["model"] == "llama-tiny" and results["device"] == "cpu" and results["dtype"] == "float32"
    assert results["floors"]["decode_floor_ms"] is None and results["floors"]["weight_bytes"] > 0
    assert results["command"].startswith("rollgraph bench --model llama-tiny")
    assert all(results[k] for k in ("torch", "transformers", "date"))
    host = results["machine"]["host"]  # measured on CPU too: not a floor
    assert (
        0 < host["wake_after_1ms_us"]["median"] <= host["wake_after_1ms_us"]["p90"] and host["parse_400_tokens_us"] > 0
    )
    assert "Host: a process blocked for 1 ms ran again" in (out / "report.md").read_text()
    if os.path.exists("/proc/stat"):  # Linux, as CI: every request read the hypervisor's steal around it
        assert all(results["modes"][name]["cpu_steal_pct"] is not None for name in modes[:-1])
        measured = json.loads((out / "requests.json").read_text())
        assert all(s["client_runqueue_ms"] >= 0 and s["client_cpu_ms"] > 0 for s in measured["eager"])
        assert "the hypervisor stole" in (out / "report.md").read_text()
    n = SMOKE["new_tokens"]
    for name in modes[:-1]:
        per_len = SMOKE["peer_repeats"] if name.startswith("hf-") else SMOKE["repeats"]  # the peers measure fewer
        requests = len(SMOKE["lengths"]) * per_len
        m = results["modes"][name]
        assert m["status"] == "ok", m["error"]
        assert all(m[k] is not None for k in VLLM_KEYS)
        assert m["completed"] == requests and m["total_output_tokens"] == requests * n
        assert m["num_itl"] == requests * (n - 1)
        assert [r["prompt_len"] for r in m["rows"]] == list(SMOKE["lengths"])
        for row in m["rows"]:
            assert row["completed"] == per_len and row["num_itl"] == per_len * (n - 1)
            assert all(row[k] is not None for k in VLLM_KEYS) and row["prefix_reused_tokens"] == 0
            assert row["graphs_used"] == ("Eager" if name in ("eager", "hf-eager") else "Eager fallback")
            assert row["median_ttft_ms"] <= row["median_e2el_ms"]
        server_side = m["median_server_ttft_ms"], m["mean_server_decode_ms"]
        assert all(v is not None for v in server_side) == (name in SMOKE["modes"]), server_side
    assert results["modes"]["hf-static-compile"]["status"] == "skipped"
    samples = json.loads((out / "requests.json").read_text())
    transport = samples["eager"][0]["server_transport_ms"]
    assert set(transport) == {*TRANSPORT_KEYS, *CLOCK_KEYS}
    assert all(0 < transport[k] < 1000 for k in CLOCK_KEYS), transport  # one host, one clock: both hops positive
    assert samples["hf-eager"][0]["server_transport_ms"] is None
    # float32 on CPU: every server mode and transformers' own generate make the same greedy tokens
    assert results["token_agreement"] == {**dict.fromkeys(modes[:-1], 1.0), "hf-static-compile": None}
    assert results["token_prefix"] == {**dict.fromkeys(modes[:-1], SMOKE["new_tokens"]), "hf-static-compile": None}


def test_smoke_files_and_summary_line(smoke):
    proc, out = smoke
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(out) and set(summary["modes"]) >= {"eager", "seed", "hf-eager"}
    assert summary["modes"]["eager"]["median_itl_ms"] > 0
    report = (out / "report.md").read_text()
    assert report.count("| Prompt Length | TTFT (ms) | P99 ITL (ms) | Graphs Used | Memory (GB) |") == 3
    assert "Greedy tokens against those of `eager` for the same prompt" in report and "`seed` 100% (4)" in report
    assert "## `eager`" in report and "## `hf-eager` (transformers)" in report and "## Comparison" in report
    assert "| 20 tokens |" in report and "| **Average** |" in report
    assert "polls its socket without sleeping" in report  # the smoke run measures with --client-wait spin
    assert "then 2 measured (random token ids, seed 0; 1 measured for the transformers peers)" in report
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads((out / "requests.json").read_text())
    assert len(raw["seed"]) == len(SMOKE["lengths"]) * SMOKE["repeats"]
    assert sorted(os.listdir(out / "logs")) == ["eager.log", "hf-eager.log", "seed.log"]


def test_timed_regions_pause_the_collector_and_restore_it():
    import gc

    from rollgraph.gc_pause import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before, so it stays off
    finally:
        gc.enable()


def test_the_start_note_counts_kernel_builds_apart_from_capture():
    from rollgraph.bench_tables import _mode_note

    m = {"kind": "server", "graphs_enabled": True, "startup_s": 20.0, "capture_s": 1.9, "graphs": 17}
    m.update(kernel_build_s=5.6, graph_bytes=110 << 20)
    assert "(graph capture 1.90 s after 5.60 s of kernel builds, 17 graphs, 110.0 MiB)" in _mode_note(m)
    m["kernel_build_s"] = 0.0  # compile modes and CPU runs build nothing beforehand
    assert "(graph capture 1.90 s, 17 graphs, 110.0 MiB)" in _mode_note(m)
    assert "stole" not in _mode_note(m)
    m["cpu_steal_pct"] = 1.234
    assert _mode_note(m).endswith("; the hypervisor stole 1.23% of the host's CPU time during its measured requests.")
