"""blas_choice: which BLAS library runs each prefill product that adds into the residual (the CPU side; the timing
and both libraries' products run in test_gpu.py)."""

import contextlib
import functools
import json

import pytest
import torch

from rollgraph import blas_choice
from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model


@pytest.fixture(autouse=True)
def clean():
    blas_choice.forget()
    yield
    blas_choice.forget()


def spy_on_using(monkeypatch) -> list[str]:
    """Record the libraries add_product_ asks for (this CPU build of torch has no cuBLASLt to switch to)."""
    asked: list[str] = []

    @contextlib.contextmanager
    def using(library):
        asked.append(library)
        yield

    monkeypatch.setattr(blas_choice, "using", using)
    return asked


def test_an_untimed_shape_keeps_the_default_library_and_the_product_is_added_in_place(monkeypatch):
    asked = spy_on_using(monkeypatch)
    g = torch.Generator().manual_seed(1)
    r, x, w = torch.randn(40, 24, generator=g), torch.randn(40, 16, generator=g), torch.randn(24, 16, generator=g)
    want = r + x @ w.T
    storage = r.data_ptr()
    blas_choice.add_product_(r, x, w)
    torch.testing.assert_close(r, want)
    assert r.data_ptr() == storage and asked == [] and blas_choice.library_for(x, w) is None


def test_a_chosen_shape_runs_through_its_library_unless_the_knob_is_off(monkeypatch):
    asked = spy_on_using(monkeypatch)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 16, generator=g)
    x40, x48 = torch.randn(40, 16, generator=g), torch.randn(48, 16, generator=g)
    blas_choice._chosen[blas_choice._key(40, w)] = "cublaslt"
    blas_choice._chosen[blas_choice._key(48, w)] = "cublas"
    for x in (x40, x48, torch.randn(56, 16, generator=g)):
        r = torch.randn(x.shape[0], 24, generator=g)
        want = r + x @ w.T
        blas_choice.add_product_(r, x, w)
        torch.testing.assert_close(r, want)
    assert asked == ["cublaslt", "cublas"]  # 56 rows were never timed: the default, with no switch
    assert blas_choice.choices() == {(40, 24, 16): "cublaslt", (48, 24, 16): "cublas"}
    monkeypatch.setattr(blas_choice, "ENABLED", False)
    blas_choice.add_product_(torch.zeros(40, 24), x40, w)
    assert asked == ["cublaslt", "cublas"] and blas_choice.library_for(x40, w) is None


def test_nothing_is_timed_off_cuda(monkeypatch, tmp_path):
    """choose() times only CUDA products; on this CPU the engine's warm-up asks nothing and chooses nothing, and a
    store file is neither read nor written."""
    asked = spy_on_using(monkeypatch)
    w = torch.randn(24, 16)
    assert blas_choice.choose([64, 400], [w], store=str(tmp_path / "choices.json")) == {}
    assert list(tmp_path.iterdir()) == []
    engine = Engine(load_model(ModelConfig("llama-tiny")), EngineConfig(max_seq_len=256, prefill_buckets=(16, 64)))
    engine.warm_up(progress=False)
    assert engine.blas_timings == {} and blas_choice.choices() == {} and asked == []
    assert engine.stats()["cublaslt_products"] == []


def test_each_shape_is_timed_once_a_process_and_the_faster_library_within_the_margin_is_kept(monkeypatch):
    """A second engine in the process (another mode, a test's eager reference) keeps the first engine's choices:
    the libraries round differently, so choosing again on a near-tie could change its bf16 tokens."""
    spy_on_using(monkeypatch)
    monkeypatch.setattr(blas_choice, "_can_time", lambda w: True)  # this CPU build has nothing to time
    # µs per product by (rows, library): cuBLASLt clearly ahead at 400 rows, within the margin at 64
    table = {(64, "cublas"): 10.0, (64, "cublaslt"): 9.8, (400, "cublas"): 70.0, (400, "cublaslt"): 60.0}
    timed = []

    def fake_time_us(fn, calls):  # fn: functools.partial(_library_product, library, r, x, w)
        library, rows = fn.args[0], fn.args[2].shape[0]
        timed.append((rows, library))
        return table[rows, library]

    monkeypatch.setattr(blas_choice, "_time_us", fake_time_us)
    w = torch.randn(24, 16)
    first = blas_choice.choose([400, 64], [w], rounds=3)
    assert first == {(64, 24, 16): {"cublas": 10.0, "cublaslt": 9.8}, (400, 24, 16): {"cublas": 70.0, "cublaslt": 60.0}}
    assert sorted(timed) == sorted([(m, lib) for m in (64, 400) for lib in blas_choice.LIBRARIES] * 3)
    assert blas_choice.choices() == {(64, 24, 16): "cublas", (400, 24, 16): "cublaslt"}
    # a second timing would now choose otherwise; 128 rows is new, and a tie keeps the default
    table.update({(64, "cublaslt"): 1.0, (400, "cublaslt"): 700.0, (128, "cublas"): 20.0, (128, "cublaslt"): 20.0})
    timed.clear()
    assert blas_choice.choose([64, 400, 128], [w], rounds=3)[(400, 24, 16)] == first[(400, 24, 16)]
    assert {m for m, _ in timed} == {128}  # only the new shape was timed
    assert blas_choice.choices() == {(64, 24, 16): "cublas", (400, 24, 16): "cublaslt", (128, 24, 16): "cublas"}


def test_switches_from_many_threads_never_interleave(monkeypatch):
    """Warm-up runs steps from several threads at once: each chosen product must run under its own library, and the
    process must end on its default. torch's process-wide setting is stood in for by a value whose switch sleeps, to
    widen the window in which two unlocked switches would interleave (this CPU build cannot select cuBLASLt)."""
    import threading
    import time

    setting = {"now": "cublas"}

    def preferred(library=None):
        if library is not None:
            time.sleep(0.0005)
            setting["now"] = library
        return setting["now"]

    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", preferred)
    seen = []  # (rows, the library set when the product was launched)
    addmm_ = torch.Tensor.addmm_
    record = lambda r, *a: seen.append((r.shape[0], setting["now"])) or addmm_(r, *a)  # noqa: E731
    monkeypatch.setattr(torch.Tensor, "addmm_", record)
    w = torch.randn(8, 4)
    wanted = {40: "cublaslt", 48: "cublas"}
    for rows, library in wanted.items():
        blas_choice._chosen[blas_choice._key(rows, w)] = library

    def work(rows):
        x = torch.randn(rows, 4)
        for _ in range(20):
            blas_choice.add_product_(torch.zeros(rows, 8), x, w)

    threads = [threading.Thread(target=work, args=(rows,)) for rows in (40, 48) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 160 and all(library == wanted[rows] for rows, library in seen)
    assert setting["now"] == "cublas"


class FakeProduct:
    """Stands in for lt_matmul.Product on this CPU: `fits` says whether a chosen algorithm may run, `run` records."""

    def __init__(self, fits: bool) -> None:
        self.ok, self.ran, self.refuse = fits, [], False

    def fits(self, r, x, w) -> bool:
        return self.ok

    def restore(self, data: bytes):
        """lt_matmul.Product.restore: a candidate from kept bytes, or refused as cuBLASLt's check would."""
        from rollgraph import lt_matmul

        if self.refuse:
            raise lt_matmul.CublasLtError("MatmulAlgoCheck returned cuBLAS status 15")
        return lt_matmul.Candidate(-1, lt_matmul._Algo.from_buffer_copy(data), 0, 1.0)

    def run(self, algo, r, x, w, accumulate=True) -> None:
        self.ran.append(algo.rank if accumulate else (algo.rank, "plain"))
        if accumulate:
            r.addmm_(x, w.t())
        else:
            torch.mm(x, w.t(), out=r)


def fake_algorithms(monkeypatch, count: int) -> tuple[list[str], FakeProduct]:
    """Timing on (`_can_time`), cuBLASLt's list as `count` candidates algo0..., products by a FakeProduct that fits;
    returns the libraries asked for (spy_on_using) and that product."""
    from rollgraph import lt_matmul

    asked = spy_on_using(monkeypatch)
    monkeypatch.setattr(blas_choice, "_can_time", lambda w: True)
    algos = {}
    for i in range(count):
        algo = lt_matmul._Algo()
        algo.data[0] = i + 1  # each its own bytes
        algos[f"algo{i}"] = lt_matmul.Candidate(i, algo, 0, 1.0)
    monkeypatch.setattr(blas_choice, "_algorithms", lambda m, w: dict(algos))
    prod = FakeProduct(fits=True)
    monkeypatch.setattr(lt_matmul, "product", lambda *shape: prod)
    return asked, prod


def test_an_algorithm_of_cublaslts_list_is_taken_only_past_the_margin_and_the_knob_turns_it_off(monkeypatch):
    """perf-notes v65: from ALGORITHM_ROWS rows, the screened algorithms' finalists are timed with the libraries; one
    is taken where it beats the better library by MARGIN, and runs in place of the library unless ALGORITHMS is off
    or its call's tensors do not fit it."""

    asked, prod = fake_algorithms(monkeypatch, 6)
    # µs: at 400 rows algo4 is past the margin against cuBLASLt (60); at 512 the best algorithm is within it
    table = {(400, "cublas"): 70.0, (400, "cublaslt"): 60.0, (512, "cublas"): 50.0, (512, "cublaslt"): 55.0}
    table |= {(64, "cublas"): 10.0, (64, "cublaslt"): 11.0}
    table |= {(400, f"algo{i}"): 80.0 - i * 5 for i in range(6)}  # algo5 55.0 screens fastest, then algo4 60.0
    table |= {(512, f"algo{i}"): 49.0 + i for i in range(6)}
    screened, timed = [], []

    def fake_time_us(fn, calls):
        if isinstance(fn, functools.partial) and fn.func is blas_choice._library_product:
            rows, name = fn.args[2].shape[0], fn.args[0]
        else:  # prod.run bound to a candidate: partial(prod.run, candidate, r, x, w)
            rows, name = fn.args[2].shape[0], f"algo{fn.args[0].rank}"
        (screened if calls == blas_choice.SCREEN_CALLS else timed).append((rows, name))
        return table[rows, name] - (0.1 if calls == blas_choice.SCREEN_CALLS else 0.0)

    monkeypatch.setattr(blas_choice, "_time_us", fake_time_us)
    w = torch.randn(24, 16)
    timings = blas_choice.choose([400, 512, 64], [w], rounds=1)
    assert set(timings[(400, 24, 16)]) == {"cublas", "cublaslt", "algo5", "algo4", "algo3"}  # three finalists
    assert set(timings[(64, 24, 16)]) == {"cublas", "cublaslt"}  # under ALGORITHM_ROWS: the libraries only
    assert sorted(screened) == sorted((m, f"algo{i}") for m in (400, 512) for i in range(6))
    assert blas_choice.choices() == {(64, 24, 16): "cublas", (400, 24, 16): "algo5", (512, 24, 16): "cublas"}
    x = torch.randn(400, 16)
    blas_choice.add_product_(torch.zeros(400, 24), x, w)
    assert prod.ran == [5] and asked == []
    prod.ok = False  # the call's tensors do not fit the algorithm: the chosen library runs it
    blas_choice.add_product_(torch.zeros(400, 24), x, w)
    assert prod.ran == [5] and asked == ["cublaslt"]
    prod.ok = True
    monkeypatch.setattr(blas_choice, "ALGORITHMS", False)
    r = torch.randn(400, 24)
    want = r + x @ w.T
    blas_choice.add_product_(r, x, w)
    torch.testing.assert_close(r, want)
    assert prod.ran == [5] and asked == ["cublaslt", "cublaslt"]


def test_fitted_tiles_cover_the_rows_in_one_wave_with_little_padding():
    """perf-notes v82: at 400 rows of llama-2-7b's residual products (n = 4096) on 132 multiprocessors, 64 x 200 (two
    tiles of rows, 128 CTAs) and 128 x 104 (416 rows) fit; 128 x 128 (512 rows) and 64 x 136 (192 CTAs, two waves)
    do not; the best fitting comes first and at most `most` are named."""
    from rollgraph import lt_tiles

    ids = {lt_tiles.name(t): t for t in lt_tiles.TILE}
    tiles = [ids[name] for name in ("128x128", "64x136", "128x104", "64x200", "64x208", "32x64", "8x512")]
    got = [lt_tiles.name(t) for t in lt_tiles.fitted(tiles, 400, 4096, 132)]
    assert got == ["64x200", "64x208", "128x104"]  # the last two tie: 416 rows, 128 CTAs; then by id
    assert lt_tiles.fitted(tiles, 400, 4096, 132, most=1) == [ids["64x200"]]
    assert lt_tiles.fitted(tiles, 512, 4096, 132) == [ids["128x128"]]  # 4 x 32 = 128 CTAs, no padding
    assert lt_tiles.fitted(tiles, 400, 4096, 64, waves=1) == []  # 128 CTAs are two waves on 64 multiprocessors
    assert lt_tiles.fitted([9999, *tiles], 400, 4096, 132)[0] == ids["64x200"]  # ids the table lacks are left out


def test_fitted_tiles_of_a_wide_product_fill_two_waves():
    """perf-notes v85: llama-2-7b's gate/up (n = 22016) at 400 rows cannot be one wave of 132; 256 x 136 covers it in
    258 CTAs with 408 rows (then 192 x 208: 230 CTAs, 416 rows), where the library's 256 x 144 pads to 432 (8%) and
    256 x 104 needs three waves; at 320 rows 256 x 112 (336 rows, 5%) fits and at 432 rows 256 x 144 itself."""
    from rollgraph import lt_tiles

    ids = {lt_tiles.name(t): t for t in lt_tiles.TILE}
    tiles = [ids[name] for name in ("256x144", "256x136", "256x104", "256x112", "192x208", "128x128")]
    assert [lt_tiles.name(t) for t in lt_tiles.fitted(tiles, 400, 22016, 132)] == ["256x136", "192x208"]
    assert lt_tiles.fitted(tiles, 400, 22016, 132, waves=1) == []
    assert [lt_tiles.name(t) for t in lt_tiles.fitted(tiles, 320, 22016, 132)] == ["256x112"]
    assert lt_tiles.fitted(tiles, 432, 22016, 132)[:1] == [ids["256x144"]]
    narrow = [ids[name] for name in ("64x200", "128x104", "128x128")]
    assert lt_tiles.fitted(narrow, 400, 4096, 64) == narrow[:2]  # 128 CTAs fill two waves of 64; 512 rows pad too much


def test_plain_products_are_chosen_apart_and_run_through_their_choice(monkeypatch):
    """perf-notes v85: choose(accumulate=False) times r = x @ w.T apart from the residual product of the same weight
    (its own key and name, "plain"), and `product` runs the plain choice: the algorithm with beta 0, the chosen
    library where the algorithm does not fit, torch's own product for an untimed shape or with PLAIN off."""

    asked, prod = fake_algorithms(monkeypatch, 3)
    kinds = []

    def fake_time_us(fn, calls):  # both partials end with `accumulate`: the plain product's algo2 is far ahead
        kinds.append(fn.args[4])
        name = fn.args[0] if isinstance(fn.args[0], str) else f"algo{fn.args[0].rank}"
        return {"cublas": 50.0, "cublaslt": 50.0}.get(name, 30.0 if name == "algo2" and not fn.args[4] else 60.0)

    monkeypatch.setattr(blas_choice, "_time_us", fake_time_us)
    w = torch.randn(24, 16)
    plain = blas_choice.choose([400], [w], rounds=1, accumulate=False)
    assert set(plain) == {(400, 24, 16, "plain")} and set(kinds) == {False}
    assert blas_choice.choose([400], [w], rounds=1).keys() == {(400, 24, 16)} and set(kinds) == {False, True}
    assert blas_choice.choices() == {(400, 24, 16, "plain"): "algo2", (400, 24, 16): "cublas"}
    assert blas_choice.describe((400, 24, 16)) is None
    x = torch.randn(400, 16)
    torch.testing.assert_close(blas_choice.product(x, w), x @ w.T)
    assert prod.ran == [(2, "plain")] and asked == []
    blas_choice.add_product_(torch.zeros(400, 24), x, w)  # the residual product kept its own choice, cuBLAS
    assert prod.ran == [(2, "plain")] and asked == ["cublas"]
    prod.ok = False  # the algorithm does not fit this call's tensors: the chosen library
    torch.testing.assert_close(blas_choice.product(x, w), x @ w.T)
    assert asked == ["cublas", "cublas"]
    prod.ok = True
    monkeypatch.setattr(blas_choice, "PLAIN", False)
    torch.testing.assert_close(blas_choice.product(x, w), x @ w.T)
    x48 = torch.randn(48, 16)
    monkeypatch.setattr(blas_choice, "PLAIN", True)
    torch.testing.assert_close(blas_choice.product(x48, w), torch.nn.functional.linear(x48, w))  # never timed
    assert prod.ran == [(2, "plain")] and asked == ["cublas", "cublas"]


def stand_in(describe):
    """cand(rank, carried, tag=0): stand-ins for lt_matmul.Candidate whose describe() is describe(carried), a value the
    test carries in the `waves` field; `tag` makes two stand-ins' algorithm bytes differ."""
    from rollgraph import lt_matmul

    class Cand(lt_matmul.Candidate):
        def describe(self) -> dict:
            return describe(self.waves)

    def cand(rank, carried, tag=0):
        algo = lt_matmul._Algo()
        algo.data[0], algo.data[1] = rank + 1, tag
        return Cand(rank, algo, 0, carried)

    return cand


def test_fitted_configurations_copy_the_first_candidates_and_one_as_wide(monkeypatch):
    """perf-notes v85: each fitted tile is configured on copies of the first FIT_BASES candidates and of the list's
    first candidate with a tile as wide on the weight's side, each with its cluster shape and with none, taking the
    first stage count cuBLASLt's check accepts; refused configurations are left out. Here the check accepts a tile
    only on a base as wide (gate/up's 256 x 112 at 320 rows on an H200) and with 35 stages."""
    from rollgraph import lt_matmul, lt_tiles

    ids = {lt_tiles.name(t): t for t in lt_tiles.TILE}
    tiles = {"128x160": ids["128x160"], "448x64": ids["448x64"], "256x96": ids["256x96"], "256x112": ids["256x112"]}

    cand = stand_in(lambda carried: {"id": 66, "tile": carried})  # the base's tile id

    tried = []

    class Prod:
        m, n, dtype = 320, 22016, torch.bfloat16

        def configured(self, base, **config):
            tried.append((base.rank, config))
            base_width = lt_tiles.TILE[int(base.waves)][0]
            if base_width != lt_tiles.TILE[config["tile"]][0] or config.get("stages") != 35:
                raise lt_matmul.CublasLtError("MatmulAlgoCheck returned cuBLAS status 15")
            return cand(base.rank, config["tile"], tag=1 + len(config))

    caps = {"tiles": list(tiles.values()), "stages": [33, 35]}
    monkeypatch.setattr(blas_choice, "_capabilities", lambda algo_id, dtype: caps)
    cands = [cand(0, tiles["128x160"]), cand(1, tiles["448x64"]), cand(2, tiles["256x96"])]
    out = blas_choice._fitted(Prod(), cands, 132)
    # 448 x 64 fits too (250 CTAs) and its base is among the first; 256 x 112 only on the 256-wide third
    assert sorted(out) == ["fit256x112/algo2", "fit256x112/algo2/c1", "fit448x64/algo1", "fit448x64/algo1/c1"]
    assert {r for r, _ in tried} == {0, 1, 2}
    assert (2, {"tile": ids["256x112"], "cluster": lt_tiles.CLUSTER_1X1, "stages": 35}) in tried
    assert out["fit256x112/algo2"].rank == 2 and bytes(out["fit256x112/algo2"].algo) != bytes(cands[2].algo)


def test_a_split_k_base_is_also_copied_without_its_split(monkeypatch):
    """perf-notes v86: `fitted` counts the waves of an unsplit product, so a base that splits K is copied as it is and
    with split-K 1 and no reduction; an unsplit base is copied once."""
    from rollgraph import lt_tiles

    tile = {lt_tiles.name(t): t for t in lt_tiles.TILE}["128x104"]

    cand = stand_in(lambda carried: {"id": 66, "tile": tile, "split_k": int(carried)})  # the base's split

    tried = []

    class Prod:
        m, n, dtype = 400, 4096, torch.bfloat16

        def configured(self, base, **config):
            tried.append((base.rank, config))
            return cand(base.rank, config.get("split_k", base.waves), tag=len(tried))

    monkeypatch.setattr(blas_choice, "_capabilities", lambda algo_id, dtype: {"tiles": [tile], "stages": []})
    out = blas_choice._fitted(Prod(), [cand(0, 2), cand(1, 1)], 132)
    assert sorted(out) == [
        "fit128x104/algo0",
        "fit128x104/algo0/c1",
        "fit128x104/algo0/c1/k1",
        "fit128x104/algo0/k1",
        "fit128x104/algo1",
        "fit128x104/algo1/c1",
    ]
    assert (0, {"tile": tile, **blas_choice.UNSPLIT}) in tried
    assert all("split_k" not in config for rank, config in tried if rank == 1)
    assert out["fit128x104/algo0/k1"].describe()["split_k"] == 1


def test_choices_kept_in_a_store_are_taken_by_a_later_process_instead_of_timing(monkeypatch, tmp_path):
    """blas_store: shapes timed with `store` are written to the file; a later process (here: after forget()) on the
    same machine takes them, algorithm bytes and all, without timing; an algorithm cuBLASLt's check refuses, or
    another machine, is timed again, and the file then holds both machines' entries."""
    from rollgraph import blas_store

    asked, prod = fake_algorithms(monkeypatch, 3)
    machine = ["m1"]
    monkeypatch.setattr(blas_choice, "_machine", lambda device: machine[0])
    timed = []

    def fake_time_us(fn, calls):  # algo2 far ahead at 400 rows; cuBLASLt ahead at 64
        rows = fn.args[2].shape[0]
        name = fn.args[0] if isinstance(fn.args[0], str) else f"algo{fn.args[0].rank}"
        timed.append((rows, name))
        return {"cublas": 50.0, "cublaslt": 40.0, "algo2": 20.0}.get(name, 45.0)

    monkeypatch.setattr(blas_choice, "_time_us", fake_time_us)
    store, w = str(tmp_path / "choices.json"), torch.randn(24, 16)
    first = blas_choice.choose([400, 64], [w], rounds=1, store=store)
    chosen = blas_choice.choices()
    assert chosen == {(64, 24, 16): "cublaslt", (400, 24, 16): "algo2"} and timed
    kept = blas_store.load(store, "m1")
    assert kept["400x24x16 float32 add"]["algo"] == "algo2" and kept["64x24x16 float32 add"]["bytes"] is None
    algo_bytes = bytes(blas_choice._algos[blas_choice._key(400, w)][1].algo)

    blas_choice.forget()
    timed.clear()
    assert blas_choice.choose([400, 64], [w], rounds=1, store=store) == first
    assert timed == [] and blas_choice.choices() == chosen
    assert bytes(blas_choice._algos[blas_choice._key(400, w)][1].algo) == algo_bytes
    blas_choice.add_product_(torch.zeros(400, 24), torch.randn(400, 16), w)
    assert prod.ran == [-1] and asked == []  # the restored algorithm runs

    blas_choice.forget()
    prod.refuse = True  # cuBLASLt's check refuses the kept algorithm here: that shape alone is timed again
    blas_choice.choose([400, 64], [w], rounds=1, store=store)
    assert {m for m, _ in timed} == {400} and blas_choice.choices() == chosen

    blas_choice.forget()
    timed.clear()
    machine[0] = "m2"  # another GPU or library version: everything is timed, and kept beside m1's
    blas_choice.choose([400, 64], [w], rounds=1, store=store)
    assert {m for m, _ in timed} == {400, 64}
    with open(store) as f:
        assert sorted(json.load(f)["machines"]) == ["m1", "m2"]


def test_a_kept_entry_without_both_libraries_medians_is_timed_again(monkeypatch, tmp_path):
    """A file that parses but whose entry lacks a library's median (edited by hand, or written by another version)
    must not stop start-up: that shape is timed again and the file is mended."""
    from rollgraph import blas_store

    fake_algorithms(monkeypatch, 1)
    monkeypatch.setattr(blas_choice, "_machine", lambda device: "m1")
    monkeypatch.setattr(blas_choice, "_time_us", lambda fn, calls: 50.0 if fn.args[0] == "cublas" else 40.0)
    store, w = str(tmp_path / "choices.json"), torch.randn(24, 16)
    blas_store.save(
        store,
        "m1",
        {"64x24x16 float32 add": {"library": "cublaslt", "algo": None, "bytes": None, "us": {"cublaslt": 40.0}}},
    )
    timings = blas_choice.choose([64], [w], rounds=1, store=store)
    assert timings == {(64, 24, 16): {"cublas": 50.0, "cublaslt": 40.0}}
    assert blas_store.load(store, "m1")["64x24x16 float32 add"]["us"] == {"cublas": 50.0, "cublaslt": 40.0}
