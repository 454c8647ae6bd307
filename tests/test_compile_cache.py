"""A second start reuses the first one's compiled code: two processes with the same --compile-cache-dir, the second
finds every compiled graph in inductor's on-disk cache (issue 5's start-up target; the GPU timing is in perf-notes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollgraph.steps import static_launcher_keeps_tuning

SRC = Path(__file__).resolve().parents[1] / "src"
START = """
import json, sys
from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model
from rollgraph.params import GenerationParams
config = EngineConfig(mode="compile", max_seq_len=128, compile_cache_dir=sys.argv[1])
eng = Engine(load_model(ModelConfig("llama-tiny")), config)
tokens = list(eng.generate(GenerationParams((1, 2, 3), 4)))
print(json.dumps({"tokens": tokens, "cache": eng.stats()["compile_cache"]}))
"""


def start(cache_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run(
        [sys.executable, "-c", START, str(cache_dir)], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_second_start_finds_every_compiled_graph_in_the_cache(tmp_path):
    first = start(tmp_path / "inductor")
    second = start(tmp_path / "inductor")
    assert first["cache"]["miss"] > 0 and first["cache"]["hit"] == 0, first
    assert second["cache"] == {"hit": first["cache"]["miss"], "miss": 0, "bypass": 0}, second
    assert second["tokens"] == first["tokens"]
    assert any((tmp_path / "inductor").iterdir())


@pytest.mark.parametrize(
    ("version", "keeps"),
    [("2.11.0+cu130", False), ("2.11.1", False), ("2.12.0", True), ("2.13.0+cpu", True), ("3.0.0a0", True)],
)
def test_the_static_launcher_is_trusted_with_tuned_configs_from_torch_2_12(version, keeps):
    """torch 2.11's static launcher forgets tuned configs of cached kernels (perf-notes v18); the engine turns it off
    there, and only there."""
    assert static_launcher_keeps_tuning(version) is keeps
