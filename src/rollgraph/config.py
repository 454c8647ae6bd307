"""Typed settings for the model, the engine, the graph pool and the server; the CLI maps its flags onto these."""

from __future__ import annotations

from dataclasses import dataclass, field

from rollgraph.errors import RequestError

MODES = ("eager", "graphs", "compile", "compile+graphs", "seed")
ON_MISS = ("eager", "capture")
DTYPES = ("auto", "float16", "bfloat16", "float32")
RUNNERS = ("auto", "native", "hf")
ATTENTION = ("auto", "triton", "sdpa")
MATMUL = ("auto", "triton", "torch")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_buckets(name: str, buckets: tuple[int, ...]) -> None:
    if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets):
        raise RequestError(f"{name} must be a non-empty list of integers >= 1; got {buckets!r}")
    if list(buckets) != sorted(set(buckets)):
        raise RequestError(f"{name} must be strictly increasing; got {buckets!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how."""

    name: str
    """A local Hugging Face folder or a built-in architecture name (`rollgraph models` lists them)."""
    dtype: str = "auto"
    """Weights' dtype: auto = bfloat16 on CUDA (float16 where the GPU lacks bf16), float32 on CPU."""
    device: str = "auto"
    """auto = cuda when available, else cpu."""
    trust_remote_code: bool = False
    """Run code shipped inside the model folder; off unless the user opts in."""
    seed: int = 0
    """Seed of a built-in architecture's random weights: same name and seed, same weights."""

    def __post_init__(self) -> None:
        _check_choice("dtype", self.dtype, DTYPES)


@dataclass(frozen=True)
class PoolConfig:
    """Bounds and policy of the rolling graph pool."""

    max_graphs: int = 64
    """At most this many graphs are held; the least recently used is evicted first."""
    max_bytes: int = 2 << 30
    """At most this many bytes of graph memory (measured at capture) are held."""
    on_miss: str = "eager"
    """eager = a missing key runs eagerly and is queued for background capture; capture = capture inline first."""
    share_prefill_pool: bool = True
    """Capture every prefill graph into one shared memory pool: it costs about the largest prefill graph instead of
    the sum of all; evicting one prefill graph evicts them all (only then does the memory come back). Measured on an
    H100 (perf-notes v7): llama-3.2-1b's default set 488 -> 80 MiB with prefill buckets up to 512, same TTFT."""

    def __post_init__(self) -> None:
        _check_choice("on_miss", self.on_miss, ON_MISS)
        if self.max_graphs < 1:
            raise RequestError(f"max_graphs must be >= 1; got {self.max_graphs}")
        if self.max_bytes < 1:
            raise RequestError(f"graph memory budget must be > 0 bytes; got {self.max_bytes}")


@dataclass(frozen=True)
class EngineConfig:
    """How steps execute and which shapes are captured."""

    mode: str = "graphs"
    """eager, graphs, compile, compile+graphs, or seed (the original algorithm, for comparison)."""
    max_seq_len: int = 2048
    """Longest prompt + generation; capped by the model's own maximum."""
    max_batch: int = 1
    """Rows of the static KV cache (one request per row)."""
    prefill_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 320, 384, 400, 432, 512)
    """A prompt is padded to the smallest bucket that holds it; longer prompts run at their exact length without a
    graph (eager, or compiled in the compile modes). Past ~512 tokens a prefill is compute-bound, so a graph saves
    little there and would hold the largest activations (perf-notes v5-v7). Above 256 the buckets sit where cuBLAS's
    time per row count steps down on the H100 (perf-notes v16-v18: its matmuls for 7B and 1B take as long at 192
    rows as at 256, and less at 432 rows than at 448), so padding costs little compute there. 400 is a bucket since
    its down projection runs through cuBLASLt (blas_choice): on one H100, 7B's 400-token prefill took 0.40 ms less in
    it than in the 432 bucket (perf-notes v57); the prefill graphs share one memory pool, so it adds no graph memory."""
    kv_bucket: int = 256
    """Decode attention reads the live KV rounded up to a multiple of this; 0 = always the whole cache."""
    batch_buckets: tuple[int, ...] = (1,)
    """Batch sizes that get their own graphs."""
    precapture: bool = True
    """Capture the default key set before serving."""
    precapture_sampling: bool = False
    """Also pre-capture the sampling (non-greedy) decode graphs."""
    seed_precapture: int = 50
    """Mode seed: lengths 1..N are pre-captured, as the original did."""
    max_new_tokens_cap: int = 4096
    """Largest max_new_tokens a request may ask for."""
    compile_cache_dir: str | None = None
    """Where torch.compile keeps its cache between runs (None = torch's default)."""
    blas_store: str | None = None
    """A JSON file where the prefill products' BLAS choices (blas_choice) are kept between processes on one machine,
    so a later start takes them instead of timing them again (blas_store.py); None keeps none. The CLI's
    `--blas-store` puts it next to the compile cache by default."""
    runner: str = "auto"
    """auto = rollgraph's native Llama-family runner where the architecture allows, else transformers' forward."""
    attention: str = "auto"
    """Native runner's attention: triton (RoPE + cache write + attention in one kernel, for decode and for a prompt's
    prefill), sdpa, or auto (triton where it can run: CUDA with Triton installed)."""
    matmul: str = "auto"
    """Native runner's matmuls of at most 32 rows (short prefills; decode outside the compile modes): triton (the
    skinny_linear kernel), torch (F.linear, i.e. cuBLAS), or auto (triton where it can run)."""
    pool: PoolConfig = field(default_factory=PoolConfig)

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_choice("matmul", self.matmul, MATMUL)
        _check_choice("runner", self.runner, RUNNERS)
        _check_choice("attention", self.attention, ATTENTION)
        _check_buckets("prefill_buckets", self.prefill_buckets)
        _check_buckets("batch_buckets", self.batch_buckets)
        if self.max_seq_len < 2:
            raise RequestError(f"max_seq_len must be >= 2; got {self.max_seq_len}")
        if self.kv_bucket < 0:
            raise RequestError(f"kv_bucket must be >= 0; got {self.kv_bucket}")
        if self.max_batch < max(self.batch_buckets):
            raise RequestError(f"max_batch ({self.max_batch}) must be >= the largest batch bucket")

    @property
    def uses_graphs(self) -> bool:
        return self.mode in ("graphs", "compile+graphs", "seed")

    @property
    def uses_compile(self) -> bool:
        return self.mode in ("compile", "compile+graphs")


@dataclass(frozen=True)
class ServerConfig:
    """The generator process's socket and its limits."""

    socket_path: str
    max_frame_bytes: int = 1 << 20
    max_connections: int = 64
    frame_timeout_s: float = 30.0
    """A frame that is begun must be finished within this many seconds."""
    drain_timeout_s: float = 30.0
    """On SIGTERM, requests in flight get this long to finish."""
    allowed_uids: tuple[int, ...] = ()
    """If set, only peers with these user ids (SO_PEERCRED) are served."""
    gc_freeze: bool = True
    """Once the model is loaded and pre-captured, put every object then alive out of the cyclic garbage collector's
    reach (gc.freeze): torch, transformers and inductor leave millions of long-lived objects that a full collection
    would otherwise walk while tokens are being served."""
    token_writes: str = "engine"
    """Who writes streamed token frames: "engine" (the engine thread sends each frame into the socket itself the
    moment it has the token, falling back to the loop when the socket is full) or "loop" (every frame goes through
    the asyncio loop)."""
    request_reads: str = "engine"
    """Who reads a request frame that arrives while the engine thread is idle: "engine" (the engine thread waits on
    idle connections' sockets itself, takes a generate or inference request off the socket and starts it at once;
    everything else goes back to the loop unread, request_reads.py) or "loop" (the asyncio loop reads every frame
    and queues the job)."""
    idle_spin_ms: float = 0.0
    """After a connection's reply is out and its socket lent to the idle engine thread (request_reads="engine"), how
    long that thread polls the socket without sleeping before it blocks: a request sent within this window starts
    without the thread's wake-up (perf-notes v90). One core is busy for up to this long after each reply; 0: off."""
