"""The soak script, small: a real server on llama-tiny (CPU) takes a few hundred mixed requests, and the script's
own checks (nothing lost or wrong, pool within budget, memory flat, clean exit) must all hold."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from serverproc import short_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
REQUESTS = 300


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def summary():
    folder = short_dir()
    out = os.path.join(folder, "soak.json")
    cmd = [sys.executable, str(SCRIPT), "--requests", str(REQUESTS), "--socket-dir", folder, "--window", "75",
           "--max-prompt", "200", "--max-new-tokens", "24", "--time-limit", "120", "--out", out]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.stdout.strip(), done.stderr
        last = json.loads(done.stdout.strip().splitlines()[-1])
        with open(out) as f:
            assert json.load(f) == last
        print(f"soak: {last['requests_done']} requests in {last['elapsed_s']} s, memory {last['memory']}")
        yield {**last, "returncode": done.returncode}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_soak_on_cpu_loses_nothing_and_stays_flat(summary):
    failed = [name for name, ok in summary["checks"].items() if not ok]
    assert not failed, (failed, summary["failures"], summary["memory"])
    assert summary["ok"] and summary["returncode"] == 0
    assert summary["requests_done"] == REQUESTS and summary["lost"] == 0 and summary["wrong"] == 0
    kinds = summary["by_kind"]
    assert all(kinds.get(k, 0) > 0 for k in ("greedy", "sampled", "resend", "disconnect")), kinds
    assert summary["greedy_checked"] > 100 and summary["seeded_repeats_checked"] > 5
    assert summary["server"]["cancelled"] >= 1  # some disconnects stopped a generation in flight
    assert len(summary["memory"]["samples"]) == REQUESTS // 75 + 1
    assert summary["server_exit"] == {"exit_code": 0, "socket_removed": True}


def test_soak_checks_can_fail():
    """The checks are not vacuous: leaks, an over-budget sample and a wrong token each fail theirs."""
    soak = load_soak()
    leaking = [{"request": i, "rss_mib": 300.0 + i, "gpu_beyond_pool_max_mib": 900.0 + i} for i in range(0, 5000, 1000)]
    assert soak.growth(leaking, "rss_mib") == 3000.0
    assert soak.growth(leaking[:2], "rss_mib") is None  # the start sample (before warm-up) is never compared
    args = soak.parse_args(["--socket", "/nowhere"])
    ref = SimpleNamespace(seconds=0.0, kernels={})
    fake = SimpleNamespace(tally=soak.Tally(done=10, wrong=1), samples=leaking, ref=ref)
    fake.pool = {"bytes_max_seen": 9, "max_bytes": 8, "graphs_max_seen": 1, "over_budget_samples": 1}
    checks = soak.summarize(args, fake, {}, {}, "done", 1.0)["checks"]
    assert {name for name, ok in checks.items() if not ok} == {
        "nothing_wrong", "pool_within_budget", "rss_flat", "gpu_memory_flat"
    }  # fmt: skip
