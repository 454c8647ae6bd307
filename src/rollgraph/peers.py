"""The peers: plain transformers generation, measured with the bench's prompts, so rollgraph's ratios have company.

`python -m rollgraph.peers --model M --peer hf-eager --prompts FILE --new-tokens N` builds the model exactly as a
rollgraph server does (`models.load_model`, same seeded weights), runs every prompt of FILE (the bench's, in its
order: `[{prompt_len, repeat, ids}]`, warm-ups with a negative repeat) through `model.generate` (greedy,
end-of-sequence ignored so every request makes N tokens), and writes JSON lines to stdout: `ready`, one `warmup` per
warm-up request, one `sample` per measured request, then `done` (or `error`, or `skipped`).

- hf-eager: `generate` with its default dynamic cache, eager forward: what a user gets by default.
- hf-static-compile: `generate(cache_implementation="static", compile_config=CompileConfig(mode="reduce-overhead"))`:
  transformers compiles the decode forward and inductor captures it in CUDA graphs. CUDA only; on CPU it reports
  `skipped` (it would time C++ compilation, not the peer a GPU user picks). transformers sizes the static cache for
  the longest request so far, so a longer prompt recompiles: the warm-ups of each length take that cost.

Timing: a `BaseStreamer` timestamps each `put()`. transformers hands it `tokens.cpu()`, a host copy, so the GPU
has finished that step when the stamp is taken; the first `put()` is the prompt and is skipped. TTFT therefore
includes `generate`'s own set-up, as it does for a user.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import asdict

import torch
from transformers.generation.streamers import BaseStreamer

from rollgraph.bench_report import PEER_MODES, Sample
from rollgraph.config import ModelConfig
from rollgraph.gc_pause import gc_paused
from rollgraph.host_probe import request_fields, request_readings
from rollgraph.models import load_model

logger = logging.getLogger(__name__)


class TimingStreamer(BaseStreamer):
    """Records when each generated token reaches the host (the prompt's own `put()` is skipped)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.tokens: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        now = time.perf_counter()
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.stamps.append(now)
        self.tokens += value.reshape(-1).tolist()

    def end(self) -> None:
        pass


def generate_kwargs(peer: str) -> dict:
    """`generate` arguments that make `peer`; ValueError for a name not in PEER_MODES."""
    if peer == "hf-eager":
        return {}
    if peer == "hf-static-compile":
        from transformers import CompileConfig

        return {"cache_implementation": "static", "compile_config": CompileConfig(mode="reduce-overhead")}
    raise ValueError(f"peer must be one of {', '.join(PEER_MODES)}; got {peer!r}")


def prepare(model: torch.nn.Module) -> None:
    """Greedy and no end-of-sequence stop, so every request makes exactly max_new_tokens tokens (as the server's
    requests do: the bench sends no stop ids)."""
    cfg = model.generation_config
    cfg.eos_token_id = None
    cfg.do_sample = False
    cfg.temperature, cfg.top_p, cfg.top_k = None, None, None
    if cfg.pad_token_id is None:
        cfg.pad_token_id = 0


def timed_generate(model: torch.nn.Module, ids: list[int], new_tokens: int, kwargs: dict) -> dict:
    """One request: the Sample fields (without prompt_len/repeat). RuntimeError if streamed and returned ids differ."""
    inputs = torch.tensor([ids], device=model.device)
    streamer = TimingStreamer()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    before = request_readings()  # outside the timed span, as bench_server.timed_request does
    with gc_paused():  # the same rule as rollgraph's timed requests (gc_pause.py)
        start = time.perf_counter()
        out = model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=new_tokens,
            do_sample=False,
            streamer=streamer,
            **kwargs,
        )
        end = time.perf_counter()
    host = request_fields(before)
    tokens = out[0, len(ids) :].tolist()
    if tokens != streamer.tokens:
        raise RuntimeError(f"streamed tokens {streamer.tokens[:8]}... differ from returned {tokens[:8]}...")
    stamps = streamer.stamps
    return {
        "ttft_ms": (stamps[0] - start) * 1e3,
        "itl_ms": [(b - a) * 1e3 for a, b in itertools.pairwise(stamps)],
        "e2el_ms": (end - start) * 1e3,
        "output_tokens": tokens,
        **host,
    }


def _memory(kind: str) -> int | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_reserved() if kind == "reserved" else torch.cuda.max_memory_allocated()


def _emit(kind: str, **fields: object) -> None:
    print(json.dumps({"type": kind, **fields}), flush=True)


def run_peer(args: argparse.Namespace) -> None:
    """Load, warm up, measure; every result goes to stdout as a JSON line."""
    kwargs = generate_kwargs(args.peer)
    with open(args.prompts, encoding="utf-8") as f:
        prompts = json.load(f)
    start = time.perf_counter()
    loaded = load_model(ModelConfig(args.model, dtype=args.dtype, seed=args.weights_seed))
    model = loaded.model
    if args.peer == "hf-static-compile" and loaded.device.type != "cuda":
        _emit("skipped", error="hf-static-compile needs CUDA (reduce-overhead captures CUDA graphs); skipped on CPU")
        return
    prepare(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    _emit("ready", load_s=time.perf_counter() - start, memory_after_start_bytes=_memory("reserved"),
          weight_bytes=weight_bytes, dtype=str(loaded.dtype).removeprefix("torch."))  # fmt: skip
    with torch.inference_mode():
        memory_by_length = {}
        for req in prompts:
            fields = timed_generate(model, req["ids"], args.new_tokens, kwargs)
            memory_by_length[req["prompt_len"]] = _memory("reserved")
            if req["repeat"] < 0:
                _emit("warmup")
                continue
            sources = {"compiled" if kwargs else "eager": len(fields["output_tokens"])}
            sample = Sample.from_dict({"prompt_len": req["prompt_len"], "repeat": req["repeat"], **fields,
                                       "sources": sources})  # fmt: skip
            _emit("sample", sample=asdict(sample))
    _emit("done", memory_peak_bytes=_memory("peak"), memory_by_length=memory_by_length)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rollgraph.peers", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--peer", required=True, choices=PEER_MODES)
    p.add_argument("--prompts", required=True, help="JSON file: [{prompt_len, repeat, ids}], warm-ups with repeat < 0")
    p.add_argument("--new-tokens", type=int, required=True)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--weights-seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_peer(args)
    except Exception as exc:
        logger.exception("peer %s failed", args.peer)
        _emit("error", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
