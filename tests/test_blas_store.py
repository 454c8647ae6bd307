"""blas_store: blas_choice's choices kept in a JSON file between processes (the CPU side; the GPU test reloads real
cuBLASLt algorithms in another process, test_gpu.py)."""

import json
import os

from rollgraph import blas_store


def test_entries_are_kept_by_machine_and_a_write_adds_to_the_file(tmp_path):
    path = str(tmp_path / "sub" / "choices.json")  # the folder is made on the first write
    assert blas_store.load(path, "m1") == {}
    blas_store.save(
        path, "m1", {"400x24x16 bfloat16 add": {"library": "cublas", "algo": None, "bytes": None, "us": {}}}
    )
    blas_store.save(path, "m2", {"400x24x16 bfloat16 add": {"library": "cublaslt", "algo": None, "bytes": None}})
    blas_store.save(path, "m1", {"64x24x16 bfloat16 plain": {"library": "cublaslt"}})
    assert sorted(blas_store.load(path, "m1")) == ["400x24x16 bfloat16 add", "64x24x16 bfloat16 plain"]
    assert blas_store.load(path, "m2")["400x24x16 bfloat16 add"]["library"] == "cublaslt"
    assert blas_store.load(path, "m3") == {}
    assert [name for name in os.listdir(tmp_path / "sub")] == ["choices.json"]  # no temporary file left


def test_a_file_that_cannot_be_read_counts_as_empty_and_is_replaced_whole(tmp_path, caplog):
    path = tmp_path / "choices.json"
    path.write_text('{"format": 1, "machines": {"m1": ')  # cut short, as by a crash mid-write of another tool
    assert blas_store.load(str(path), "m1") == {}
    assert "ignoring the BLAS choices" in caplog.text
    path.write_text(json.dumps({"format": 0, "machines": {"m1": {"a": {}}}}))  # another format
    assert blas_store.load(str(path), "m1") == {}
    path.write_text(json.dumps({"format": 1, "machines": {"m1": ["not", "a", "dict"]}}))
    assert blas_store.load(str(path), "m1") == {}
    blas_store.save(str(path), "m1", {"a": {"library": "cublas"}})
    assert json.loads(path.read_text()) == {"format": 1, "machines": {"m1": {"a": {"library": "cublas"}}}}


def test_a_write_that_fails_is_logged_and_changes_nothing(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = str(blocker / "choices.json")  # its folder is a file: the write cannot happen
    blas_store.save(path, "m1", {"a": {"library": "cublas"}})
    assert "could not keep the BLAS choices" in caplog.text and blas_store.load(path, "m1") == {}


def test_the_default_file_sits_in_the_compile_cache_folder(tmp_path, monkeypatch):
    """--compile-cache-dir's folder, else inductor's own: TORCHINDUCTOR_CACHE_DIR, else <tmp>/torchinductor_<user>
    (worked out without importing torch._inductor)."""
    assert blas_store.default_path(str(tmp_path)) == str(tmp_path / blas_store.FILE_NAME)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert blas_store.default_path() == str(tmp_path / "inductor" / blas_store.FILE_NAME)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    folder = os.path.basename(os.path.dirname(blas_store.default_path()))
    assert folder.startswith("torchinductor_") and len(folder) > len("torchinductor_")
