"""`rollgraph generate`: one request, in-process (--model) or through a running server (--socket)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from rollgraph.errors import RequestError
from rollgraph.params import GenerationParams, SamplingParams


def _sampling(a: argparse.Namespace) -> SamplingParams:
    return SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed)


def run_generate(a: argparse.Namespace) -> int:
    sampling = _sampling(a)  # validate before loading anything
    if a.socket:
        return _through_socket(a, sampling)
    return _in_process(a, sampling)


def _in_process(a: argparse.Namespace, sampling: SamplingParams) -> int:
    from rollgraph.cli import engine_config, model_config
    from rollgraph.engine import Engine
    from rollgraph.models import load_model

    ecfg = engine_config(a)
    model = load_model(model_config(a))
    if a.prompt is not None:
        if model.tokenizer is None:
            raise RequestError("--prompt needs a tokenizer and this model has none: pass --tokens", code="no_tokenizer")
        ids = model.tokenizer.encode(a.prompt)
    else:
        ids = list(a.tokens)
    engine = Engine(model, ecfg)
    engine.warm_up(progress=sys.stderr.isatty())
    params = GenerationParams(tuple(ids), a.max_new_tokens, sampling, tuple(a.stop_token_ids))
    start = time.perf_counter()
    gen = engine.generate(params)
    for tok in gen:
        if not a.json and model.tokenizer is not None:
            print(model.tokenizer.decode([tok]), end="", flush=True)
    result = gen.result.to_dict()
    result["e2e_ms"] = round((time.perf_counter() - start) * 1e3, 3)
    if model.tokenizer is not None:
        result["text"] = model.tokenizer.decode(result["output_tokens"])
    result["pool"] = {k: v for k, v in engine.stats()["pool"].items() if k != "per_graph"}
    _print_result(a, result, streamed=model.tokenizer is not None)
    return 0


def _through_socket(a: argparse.Namespace, sampling: SamplingParams) -> int:
    from rollgraph.client import Client

    with Client(a.socket) as c:
        gen = c.generate(
            input_tokens=list(a.tokens) if a.tokens else None,
            prompt=a.prompt,
            max_new_tokens=a.max_new_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop_token_ids=list(a.stop_token_ids),
        )
        for _ in gen:
            pass
        result = gen.result
    _print_result(a, result, streamed=False)
    return 0


def _print_result(a: argparse.Namespace, result: dict, streamed: bool) -> None:
    if a.json:
        print(json.dumps(result))
        return
    if streamed:
        print()
    elif "text" in result:
        print(result["text"])
    else:
        print(",".join(str(t) for t in result["output_tokens"]))
    print(
        f"[{len(result['output_tokens'])} tokens, finish: {result['finish_reason']}, "
        f"prefill {result['timings']['prefill_ms']} ms, decode mean {result['timings']['decode_ms_mean']} ms, "
        f"graphs {result['graphs']}]",
        file=sys.stderr,
    )
