"""r += x @ w.T in place through cuBLASLt with an algorithm chosen here, called through ctypes on the cuBLASLt that
torch itself loaded.

Why: torch's cuBLASLt path runs the first algorithm cuBLASLt's heuristic ranks for a shape, and cuBLAS's own path
its own heuristic's kernel. At prefill row counts (~400) on an H100 the two products that add into the residual
(llama-2-7b's output and down projections, N = 4096) ran at ~530-555 TFLOP/s in the step, against ~736 for the
wider QKV and gate/up products (perf-notes v60): one wave of small tiles. cuBLASLt's heuristic returns a ranked list
of algorithms (other tiles, split-K, stages, cluster shapes); timing that list on the real shape is how its own
documentation and the serving engines that profile cuBLASLt choose among them. `Product.candidates` lists them and
`Product.run` launches one on torch's current stream, so a CUDA graph capture records it like any other kernel.

One workspace per device is shared by every launch: it is safe because the engine launches products on one stream
at a time (the eager warm-up threads all use the default stream, captures and replays one stream). Pointers must be
ALIGNMENT-byte aligned, as torch's allocator gives them (the heuristic is told so, as torch's own cuBLASLt path tells
it for such pointers); `Product.fits` checks a call's tensors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from dataclasses import dataclass

import torch

WORKSPACE_BYTES = 32 << 20
"""The most workspace an algorithm may use (split-K and stream-K keep partial sums there)."""
ALIGNMENT = 256
_COMPUTE_32F = 68  # cublasComputeType_t CUBLAS_COMPUTE_32F
_R_32F = 0  # cudaDataType CUDA_R_32F
_TYPES = {torch.float16: 2, torch.bfloat16: 14, torch.float32: 0}  # CUDA_R_16F, CUDA_R_16BF, CUDA_R_32F
_DESC_TRANSA = 3  # cublasLtMatmulDescAttributes_t
_OP_T = 1  # cublasOperation_t CUBLAS_OP_T
_PREF_MAX_WORKSPACE = 1  # cublasLtMatmulPreferenceAttributes_t; MIN_ALIGNMENT_{A,B,C,D}_BYTES are 5-8
_PREF_ALIGNMENTS = (5, 6, 7, 8)
_CONFIG = {"id": 0, "tile": 1, "split_k": 2, "reduction": 3, "swizzle": 4, "custom": 5, "stages": 6, "cluster": 8}
"""cublasLtMatmulAlgoConfigAttributes_t: what `Candidate.describe` reads back for the logs."""
_CONFIG_BYTES = {"tile": 4, "split_k": 4, "reduction": 4, "swizzle": 4, "custom": 4, "stages": 4, "cluster": 2}
"""Each settable attribute's size (`Product.configured`): cuBLASLt checks it."""
_CAPS = {"split_k": 0, "reductions": 1, "swizzle": 2, "tiles": 6, "custom_max": 7, "stages": 13}
"""cublasLtMatmulAlgoCapAttributes_t that `capabilities` reads; tiles and stages are arrays of uint32."""


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _Heuristic(ctypes.Structure):
    _fields_ = [
        ("algo", _Algo),
        ("workspace", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


class CublasLtError(RuntimeError):
    """A cuBLASLt call returned a status other than success."""


@dataclass(frozen=True)
class Candidate:
    """One algorithm of the heuristic's list: its rank there, the workspace it needs and its predicted waves."""

    rank: int
    algo: _Algo
    workspace: int
    waves: float

    def describe(self) -> dict:
        """The algorithm's configuration as cuBLASLt reports it (id, tile, split-K, stages, ...), for logs."""
        lib, _ = _lib()
        out: dict = {"rank": self.rank, "workspace": self.workspace, "waves": round(self.waves, 3)}
        for name, attr in _CONFIG.items():
            value, written = ctypes.c_uint64(0), ctypes.c_size_t(0)
            size = ctypes.c_size_t(0)
            if lib.cublasLtMatmulAlgoConfigGetAttribute(ctypes.byref(self.algo), attr, None, 0, ctypes.byref(size)):
                continue
            if 0 < size.value <= 8 and not lib.cublasLtMatmulAlgoConfigGetAttribute(
                ctypes.byref(self.algo), attr, ctypes.byref(value), size.value, ctypes.byref(written)
            ):
                out[name] = value.value
        return out


def _check(status: int, call: str) -> None:
    if status != 0:
        raise CublasLtError(f"{call} returned cuBLAS status {status}")


@functools.cache
def _lib() -> tuple[ctypes.CDLL, ctypes.c_void_p]:
    """The cuBLASLt that this process loaded (torch's, found in /proc/self/maps) and one handle on it."""
    torch.cuda.init()
    path = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libcublasLt.so" in line:
                path = line.split()[-1]
                break
    path = path or ctypes.util.find_library("cublasLt")
    if path is None:
        raise CublasLtError("no cuBLASLt library is loaded in this process or found on the library path")
    lib = ctypes.CDLL(path)
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, sz, vp]
    lib.cublasLtMatrixLayoutCreate.argtypes = [vp, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64]
    lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, sz]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int, vp, vp]
    lib.cublasLtMatmulAlgoConfigGetAttribute.argtypes = [vp, ctypes.c_int, vp, sz, vp]
    lib.cublasLtMatmulAlgoCheck.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp]
    i = ctypes.c_int
    lib.cublasLtMatmulAlgoGetIds.argtypes = [vp, i, i, i, i, i, i, i, vp, vp]
    lib.cublasLtMatmulAlgoInit.argtypes = [vp, i, i, i, i, i, i, i, vp]
    lib.cublasLtMatmulAlgoCapGetAttribute.argtypes = [vp, i, vp, sz, vp]
    lib.cublasLtMatmulAlgoConfigSetAttribute.argtypes = [vp, i, vp, sz]
    handle = ctypes.c_void_p()
    _check(lib.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    return lib, handle


_ONE = ctypes.c_float(1.0)  # alpha and beta (host pointers, read at launch: a capture records the value)
_ZERO = ctypes.c_float(0.0)
_workspaces: dict[torch.device, torch.Tensor] = {}
_workspace_lock = threading.Lock()
_launch_lock = threading.Lock()  # warm-up threads share the one handle and workspace (module docstring)


def _workspace(device: torch.device) -> torch.Tensor:
    with _workspace_lock:
        ws = _workspaces.get(device)
        if ws is None:
            ws = _workspaces[device] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return ws


def available() -> bool:
    """Whether cuBLASLt can be called here (a CUDA device and the library found)."""
    if not torch.cuda.is_available():
        return False
    try:
        _lib()
    except (CublasLtError, OSError):
        return False
    return True


def version() -> int:
    """The loaded cuBLASLt's version number (cublasLtGetVersion: e.g. 130100 for 13.1.0)."""
    lib, _ = _lib()
    lib.cublasLtGetVersion.restype = ctypes.c_size_t
    return int(lib.cublasLtGetVersion())


def _types(dtype: torch.dtype) -> tuple[int, ...]:
    """(compute, scale, A, B, C, D) types of a product of `dtype` operands, as cuBLASLt's id calls take them."""
    t = _TYPES[dtype]
    return (_COMPUTE_32F, _R_32F, t, t, t, t)


def algorithm_ids(dtype: torch.dtype, most: int = 128) -> list[int]:
    """Every algorithm id cuBLASLt has for products of `dtype` with float32 accumulation (not only the heuristic's
    picks): what `capabilities` and `Product.configured` take."""
    lib, handle = _lib()
    ids, found = (ctypes.c_int * most)(), ctypes.c_int(0)
    _check(lib.cublasLtMatmulAlgoGetIds(handle, *_types(dtype), most, ids, ctypes.byref(found)), "MatmulAlgoGetIds")
    return list(ids[: found.value])


def _init(algo_id: int, dtype: torch.dtype) -> _Algo:
    lib, handle = _lib()
    algo = _Algo()
    _check(lib.cublasLtMatmulAlgoInit(handle, *_types(dtype), algo_id, ctypes.byref(algo)), "MatmulAlgoInit")
    return algo


def capabilities(algo_id: int, dtype: torch.dtype) -> dict:
    """What algorithm `algo_id` can be configured with: {"tiles": [tile ids], "stages": [stage ids], "split_k":
    0/1, "reductions": mask, "swizzle": 0/1, "custom_max": n} (cublasLtMatmulTile_t and cublasLtMatmulStages_t ids)."""
    lib, _ = _lib()
    algo = _init(algo_id, dtype)
    out: dict = {}
    for name, attr in _CAPS.items():
        size = ctypes.c_size_t(0)
        _check(lib.cublasLtMatmulAlgoCapGetAttribute(ctypes.byref(algo), attr, None, 0, ctypes.byref(size)), "cap")
        if name in ("tiles", "stages"):
            buf = (ctypes.c_uint32 * max(1, size.value // 4))()
            _check(lib.cublasLtMatmulAlgoCapGetAttribute(ctypes.byref(algo), attr, buf, size.value, None), "cap")
            out[name] = list(buf[: size.value // 4])
        else:
            value = ctypes.c_uint32(0)
            _check(lib.cublasLtMatmulAlgoCapGetAttribute(ctypes.byref(algo), attr, ctypes.byref(value), 4, None), "cap")
            out[name] = value.value
    return out


class Product:
    """The descriptors of r[m, n] += x[m, k] @ w[n, k].T for one shape and dtype, row-major and contiguous, with r
    read and written in place (cuBLASLt's C and D are r). Made once per shape (`product`)."""

    def __init__(self, m: int, n: int, k: int, dtype: torch.dtype) -> None:
        if dtype not in _TYPES:
            raise ValueError(f"cuBLASLt products take float16, bfloat16 or float32, not {dtype}")
        lib, self._handle = _lib()
        self.m, self.n, self.k, self.dtype = m, n, k, dtype
        t = _TYPES[dtype]
        self._desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(ctypes.byref(self._desc), _COMPUTE_32F, _R_32F), "MatmulDescCreate")
        op = ctypes.c_int32(_OP_T)
        _check(lib.cublasLtMatmulDescSetAttribute(self._desc, _DESC_TRANSA, ctypes.byref(op), 4), "DescSetAttribute")
        # cuBLASLt is column-major: r^T (n x m) = w (k x n, transposed) . x^T (k x m)
        self._a, self._b, self._c = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        for layout, rows, cols in ((self._a, k, n), (self._b, k, m), (self._c, n, m)):
            _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), t, rows, cols, rows), "MatrixLayoutCreate")

    def candidates(self, count: int = 32, borrow_rows: tuple[int, ...] = ()) -> list[Candidate]:
        """Up to `count` algorithms in the heuristic's order for this shape (its first is what torch's cuBLASLt path
        runs for aligned tensors), then those it ranks for the same product at each of `borrow_rows` row counts that
        also run this shape (cublasLtMatmulAlgoCheck), each once; every one needs at most WORKSPACE_BYTES."""
        found = self._heuristic(count)
        seen = {bytes(c.algo) for c in found}
        for m in borrow_rows:
            if m == self.m:
                continue
            for c in product(m, self.n, self.k, self.dtype)._heuristic(count):
                if bytes(c.algo) not in seen and (checked := self._check(c, len(found))) is not None:
                    seen.add(bytes(c.algo))
                    found.append(checked)
        return found

    def _heuristic(self, count: int) -> list[Candidate]:
        lib, _ = _lib()
        pref = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "PreferenceCreate")
        try:
            ws = ctypes.c_uint64(WORKSPACE_BYTES)
            _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE, ctypes.byref(ws), 8), "pref")
            align = ctypes.c_uint32(ALIGNMENT)
            for attr in _PREF_ALIGNMENTS:
                _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, attr, ctypes.byref(align), 4), "pref")
            results = (_Heuristic * count)()
            found = ctypes.c_int(0)
            status = lib.cublasLtMatmulAlgoGetHeuristic(
                self._handle, self._desc, self._a, self._b, self._c, self._c, pref, count, results, ctypes.byref(found)
            )
            _check(status, "MatmulAlgoGetHeuristic")
        finally:
            lib.cublasLtMatmulPreferenceDestroy(pref)
        return [
            Candidate(i, _Algo.from_buffer_copy(res.algo), int(res.workspace), float(res.waves))
            for i, res in enumerate(results[: found.value])
            if res.state == 0
        ]

    def _check(self, c: Candidate, rank: int) -> Candidate | None:
        """`c`'s algorithm as a candidate of this shape (its workspace and waves here), or None if it cannot run it."""
        lib, _ = _lib()
        res = _Heuristic()
        status = lib.cublasLtMatmulAlgoCheck(
            self._handle, self._desc, self._a, self._b, self._c, self._c, ctypes.byref(c.algo), ctypes.byref(res)
        )
        if status != 0 or res.workspace > WORKSPACE_BYTES:
            return None
        return Candidate(rank, c.algo, int(res.workspace), float(res.waves))

    def configured(self, base: int | Candidate, **config: int) -> Candidate:
        """An algorithm configured by hand as a candidate of this shape (rank -1): algorithm id `base` from its
        defaults, or a copy of candidate `base` (the heuristic's, with everything it set), with the given attributes
        set on it (tile, stages, split_k, reduction, swizzle, custom, cluster: cuBLASLt's ids; `capabilities` lists
        what an algorithm takes). Raises CublasLtError, naming the call and status, where cuBLASLt refuses an
        attribute, or its check refuses the configuration for this shape, or it needs more than WORKSPACE_BYTES.
        Configurations outside the heuristic's list are how a tile that fits the row count (128 x 104 for 400 rows)
        is reached."""
        lib, _ = _lib()
        algo = _init(base, self.dtype) if isinstance(base, int) else _Algo.from_buffer_copy(base.algo)
        for name, value in config.items():
            size = _CONFIG_BYTES[name]
            buf = (ctypes.c_uint16 if size == 2 else ctypes.c_int32 if name == "split_k" else ctypes.c_uint32)(value)
            status = lib.cublasLtMatmulAlgoConfigSetAttribute(
                ctypes.byref(algo), _CONFIG[name], ctypes.byref(buf), size
            )
            _check(status, f"AlgoConfigSetAttribute({name}={value})")
        return self._checked(algo)

    def restore(self, data: bytes) -> Candidate:
        """A candidate from the bytes of one this process or another made for this shape (`Candidate.algo`, kept by
        blas_store between processes), as a configured one (rank -1); CublasLtError where cuBLASLt's check refuses
        it for this shape, ValueError where `data` is not an algorithm's size."""
        if len(data) != ctypes.sizeof(_Algo):
            raise ValueError(f"a cuBLASLt algorithm is {ctypes.sizeof(_Algo)} bytes, got {len(data)}")
        return self._checked(_Algo.from_buffer_copy(data))

    def _checked(self, algo: _Algo) -> Candidate:
        lib, _ = _lib()
        res = _Heuristic()
        status = lib.cublasLtMatmulAlgoCheck(
            self._handle, self._desc, self._a, self._b, self._c, self._c, ctypes.byref(algo), ctypes.byref(res)
        )
        _check(status, "MatmulAlgoCheck")
        if res.workspace > WORKSPACE_BYTES:
            raise CublasLtError(f"the configuration needs {res.workspace} bytes of workspace, over {WORKSPACE_BYTES}")
        return Candidate(-1, algo, int(res.workspace), float(res.waves))

    def fits(self, r: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> bool:
        """Whether this call's tensors are the shape's, contiguous and aligned, on CUDA."""
        return (
            r.is_cuda
            and r.shape == (self.m, self.n)
            and x.shape == (self.m, self.k)
            and w.shape == (self.n, self.k)
            and r.dtype == x.dtype == w.dtype == self.dtype
            and r.is_contiguous()
            and x.is_contiguous()
            and w.is_contiguous()
            and all(t.data_ptr() % ALIGNMENT == 0 for t in (r, x, w))
        )

    def run(
        self, candidate: Candidate, r: torch.Tensor, x: torch.Tensor, w: torch.Tensor, accumulate: bool = True
    ) -> None:
        """r += x @ w.T with `candidate`'s algorithm, on torch's current stream (callers check `fits` first); with
        `accumulate` off, r = x @ w.T (beta 0: r is not read)."""
        lib, _ = _lib()
        ws = _workspace(r.device)
        stream = torch.cuda.current_stream(r.device).cuda_stream
        with _launch_lock:
            status = lib.cublasLtMatmul(
                self._handle,
                self._desc,
                ctypes.byref(_ONE),
                w.data_ptr(),
                self._a,
                x.data_ptr(),
                self._b,
                ctypes.byref(_ONE if accumulate else _ZERO),
                r.data_ptr(),
                self._c,
                r.data_ptr(),
                self._c,
                ctypes.byref(candidate.algo),
                ws.data_ptr(),
                WORKSPACE_BYTES,
                stream,
            )
        _check(status, "cublasLtMatmul")


@functools.cache
def product(m: int, n: int, k: int, dtype: torch.dtype) -> Product:
    """The one Product of a shape in this process (descriptors are kept for the process's life)."""
    return Product(m, n, k, dtype)
