"""The `rollgraph` command in a real subprocess: in-process generate, models, and bad arguments."""

import json
import subprocess
import sys


def rollgraph(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "rollgraph", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_generate_json_in_process():
    r = rollgraph("generate", "--model", "llama-tiny", "--tokens", "1,2,3", "--max-new-tokens", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out["output_tokens"]) == 5 and out["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}
    assert "RANDOM weights" in r.stderr and "CUDA graphs are off" in r.stderr


def test_generate_text_prompt_streams_text():
    r = rollgraph("generate", "--model", "llama-tiny", "--prompt", "hi", "--max-new-tokens", "4", "--mode", "eager")
    assert r.returncode == 0, r.stderr
    assert "4 tokens, finish: length" in r.stderr


def test_models_lists_builtins():
    r = rollgraph("models")
    assert r.returncode == 0
    for name in ("llama-tiny", "llama-3.2-1b", "llama-2-7b", "qwen2-0.5b"):
        assert name in r.stdout
    assert "1.24 B" in r.stdout and "6.74 B" in r.stdout


def test_bad_arguments_are_clear_errors(qwen2_dir):
    cases = [
        (["--model", "llama-tiny", "--tokens", "1", "--temperature", "-1"], "invalid_value", "temperature"),
        (["--model", "no-such-model", "--tokens", "1"], "model_load", "built-in"),
        (["--model", "llama-tiny", "--tokens", "1,999"], "invalid_token", "[0, 320)"),
        (["--model", "llama-tiny", "--tokens", "1", "--max-new-tokens", "5000"], "invalid_value", "cap"),
        (["--model", qwen2_dir, "--prompt", "hello"], "no_tokenizer", "--tokens"),
        (["--model", "llama-tiny", "--tokens", "1", "--mode", "turbo"], None, "invalid choice"),
    ]
    for args, code, text in cases:
        r = rollgraph("generate", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert text in r.stderr, (args, r.stderr)
        if code:
            assert f"[{code}]" in r.stderr


def test_the_blas_store_defaults_next_to_the_compile_cache_and_none_turns_it_off(tmp_path):
    """`--blas-store` (blas_store.py): auto puts the file in --compile-cache-dir (or torch's own cache folder), none
    keeps no file, a path is taken as given; the engine's config carries it."""
    from rollgraph import blas_store, cli

    def config(*args):
        argv = ["serve", "--model", "llama-tiny", "--socket", str(tmp_path / "s.sock"), *args]
        return cli.engine_config(cli.build_parser().parse_args(argv))

    assert config("--compile-cache-dir", str(tmp_path)).blas_store == str(tmp_path / blas_store.FILE_NAME)
    assert config().blas_store == blas_store.default_path()
    assert config("--blas-store", "none").blas_store is None
    assert config("--blas-store", str(tmp_path / "b.json")).blas_store == str(tmp_path / "b.json")
