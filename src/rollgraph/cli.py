"""The `rollgraph` command: serve, generate, stats, bench, models. Logging is configured here and nowhere else."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rollgraph.config import ATTENTION, DTYPES, MATMUL, MODES, ON_MISS, RUNNERS, EngineConfig, ModelConfig, PoolConfig
from rollgraph.errors import RollgraphError

logger = logging.getLogger("rollgraph")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, help="local Hugging Face folder or built-in name (`rollgraph models`)")
    g.add_argument("--dtype", default="auto", choices=DTYPES)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--trust-remote-code", action="store_true", help="run code shipped in the model folder")
    g.add_argument("--weights-seed", type=int, default=0, help="seed of a built-in model's random weights")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine and graph pool")
    g.add_argument("--mode", default="graphs", choices=MODES)
    g.add_argument("--runner", default="auto", choices=RUNNERS)
    g.add_argument(
        "--attention",
        default="auto",
        choices=ATTENTION,
        help="attention of the native runner, decode and prefill: triton (fused with RoPE and the cache write), "
        "sdpa, or auto",
    )
    g.add_argument(
        "--matmul",
        default="auto",
        choices=MATMUL,
        help="native runner's matmuls of at most 32 rows: triton (skinny_linear), torch (cuBLAS), or auto",
    )
    g.add_argument("--max-seq-len", type=int, default=2048)
    g.add_argument("--prefill-buckets", type=_ints, default=EngineConfig.prefill_buckets)
    g.add_argument("--kv-bucket", type=int, default=256, help="decode KV-length bucket; 0 = whole cache")
    g.add_argument("--no-precapture", action="store_true", help="capture nothing before serving")
    g.add_argument("--precapture-sampling", action="store_true", help="also pre-capture sampling decode graphs")
    g.add_argument("--max-graphs", type=int, default=None, help="pool count bound (default 64; seed mode 50)")
    g.add_argument("--graph-memory", type=float, default=None, help="pool byte budget in MiB (default 2048)")
    g.add_argument("--on-miss", default=None, choices=ON_MISS, help="default eager (seed mode: capture)")
    g.add_argument(
        "--share-prefill-pool",
        action=argparse.BooleanOptionalAction,
        default=PoolConfig.share_prefill_pool,
        help="all prefill graphs in one memory pool (default: on)",
    )
    g.add_argument("--max-new-tokens-cap", type=int, default=4096)
    g.add_argument("--compile-cache-dir", default=None, help="torch.compile's on-disk cache (default: torch's own)")
    g.add_argument(
        "--blas-store",
        default="auto",
        help="JSON file keeping the prefill products' timed BLAS choices for later starts on this machine; auto: "
        "next to the compile cache; none: time them at every start",
    )


def model_config(a: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        name=a.model,
        dtype=a.dtype,
        device=a.device,
        trust_remote_code=a.trust_remote_code,
        seed=a.weights_seed,
    )


def engine_config(a: argparse.Namespace) -> EngineConfig:
    seed = a.mode == "seed"
    pool = PoolConfig(
        max_graphs=a.max_graphs if a.max_graphs is not None else (50 if seed else 64),
        max_bytes=int(a.graph_memory * 2**20) if a.graph_memory is not None else (1 << 62 if seed else 2 << 30),
        on_miss=a.on_miss or ("capture" if seed else "eager"),
        share_prefill_pool=a.share_prefill_pool,
    )
    return EngineConfig(
        mode=a.mode,
        runner=a.runner,
        attention=a.attention,
        matmul=a.matmul,
        max_seq_len=a.max_seq_len,
        prefill_buckets=a.prefill_buckets,
        kv_bucket=a.kv_bucket,
        precapture=not a.no_precapture,
        precapture_sampling=a.precapture_sampling,
        max_new_tokens_cap=a.max_new_tokens_cap,
        compile_cache_dir=a.compile_cache_dir,
        blas_store=blas_store_path(a.blas_store, a.compile_cache_dir),
        pool=pool,
    )


def blas_store_path(value: str, compile_cache_dir: str | None) -> str | None:
    """`--blas-store`: "auto" -> next to the compile cache (blas_store.default_path), "none" -> None, else the path."""
    if value == "auto":
        from rollgraph import blas_store

        return blas_store.default_path(compile_cache_dir)
    return None if value == "none" else value


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", type=_ints, help="prompt as comma-separated token ids")
    src.add_argument("--prompt", help="prompt text (needs a tokenizer)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop-token-ids", type=_ints, default=())
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rollgraph", description="LLM generation from a rolling pool of CUDA graphs, over a Unix socket."
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the generator process on a Unix socket")
    add_model_args(s)
    add_engine_args(s)
    s.add_argument("--socket", required=True)
    s.add_argument("--max-connections", type=int, default=64)
    s.add_argument("--max-frame-bytes", type=int, default=1 << 20)
    s.add_argument("--frame-timeout", type=float, default=30.0)
    s.add_argument("--allow-uid", type=int, action="append", default=[], help="serve only these user ids")
    s.add_argument("--drain-timeout", type=float, default=30.0, help="on SIGTERM, seconds requests get to finish")
    s.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after start-up, keep the objects then alive out of Python's garbage collector (default: on)",
    )
    s.add_argument(
        "--token-writes",
        choices=("engine", "loop"),
        default="engine",
        help="who writes streamed token frames: the engine thread, straight into the socket (default), or the "
        "asyncio loop",
    )
    s.add_argument(
        "--request-reads",
        choices=("engine", "loop"),
        default="engine",
        help="who reads a generate request that arrives while the engine is idle: the engine thread, which starts it "
        "at once (default), or the asyncio loop, which queues it",
    )
    s.add_argument(
        "--idle-spin-ms",
        type=float,
        default=0.0,
        help="after each reply, how long the idle engine thread polls for the connection's next request before it "
        "sleeps (one core busy meanwhile; a request within the window skips the thread's wake-up); 0: off (default)",
    )

    g = sub.add_parser("generate", help="generate in-process (--model) or through a server (--socket)")
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket")
    where.add_argument("--model", help="local Hugging Face folder or built-in name (`rollgraph models`)")
    g.add_argument("--dtype", default="auto", choices=DTYPES)
    g.add_argument("--device", default="auto")
    g.add_argument("--trust-remote-code", action="store_true")
    g.add_argument("--weights-seed", type=int, default=0)
    add_engine_args(g)
    add_sampling_args(g)

    st = sub.add_parser("stats", help="engine and pool figures of a running server")
    st.add_argument("--socket", required=True)

    b = sub.add_parser("bench", help="benchmark execution modes through a real server (`rollgraph bench --help`)")
    b.add_argument("rest", nargs=argparse.REMAINDER)

    sub.add_parser("models", help="list the built-in architectures")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench = argv[:1] == ["bench"]  # bench parses its own flags (argparse's REMAINDER refuses a leading --flag)
    args = None if bench else build_parser().parse_args(argv)
    level = logging.INFO if bench or args.command == "serve" else logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if bench:
            from rollgraph.bench import main as bench_main

            return bench_main(argv[1:])
        return _dispatch(args)
    except RollgraphError as exc:
        print(f"rollgraph: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "models":
        return _cmd_models()
    if args.command == "generate":
        from rollgraph.generate_cmd import run_generate

        return run_generate(args)
    if args.command == "serve":
        from rollgraph.server import run_server

        # The engine thread holds the GIL while it launches eager kernels; a short switch interval lets the
        # asyncio thread send each token frame as it is made rather than in bursts every 5 ms.
        sys.setswitchinterval(0.0005)
        return run_server(args)
    if args.command == "stats":
        from rollgraph.client import Client

        with Client(args.socket) as c:
            print(json.dumps(c.stats(), indent=2))
        return 0
    raise AssertionError(args.command)


def _cmd_models() -> int:
    from rollgraph.architectures import BUILTINS, param_count

    for name, spec in BUILTINS.items():
        n = param_count(spec)
        size = f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e3:.0f} K"
        print(f"{name:14s} {spec.model_type:8s} {size:>9s}  {spec.note}")
    return 0
