"""Test helpers: run a real `rollgraph serve` subprocess, or a `Server` with a stand-in engine in a thread.

AF_UNIX paths must stay under ~100 bytes, so sockets live in short directories made under /tmp.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from types import SimpleNamespace
from typing import Any

from rollgraph.client import server_listening
from rollgraph.config import ServerConfig
from rollgraph.errors import RequestError
from rollgraph.generation import GenerationResult
from rollgraph.params import GenerationParams
from rollgraph.server import Server


def short_dir() -> str:
    """A fresh directory short enough for a Unix socket path; the caller removes it."""
    return tempfile.mkdtemp(dir="/tmp", prefix="rg")


def accepts(path: str) -> bool:
    """True if something listens at `path`."""
    return server_listening(path)


def serve_command(socket_path: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "rollgraph", "serve", "--model", "llama-tiny", "--socket", socket_path,
            "--mode", "eager", *flags]  # fmt: skip


class ServerProcess:
    """A `rollgraph serve` subprocess on llama-tiny; its output goes to a log file beside the socket."""

    def __init__(self, socket_path: str, *flags: str) -> None:
        self.socket_path = socket_path
        self.log_path = socket_path + ".log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(serve_command(socket_path, *flags), stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the socket accepts; raises with the server's log if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket_path) and accepts(self.socket_path):
                return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


class ThreadServer:
    """A `Server` around a stand-in engine, run on an event loop in a background thread."""

    def __init__(self, engine: Any, **config: Any) -> None:
        self.dir = short_dir()
        self.socket_path = os.path.join(self.dir, "s.sock")
        self.server = Server(ServerConfig(socket_path=self.socket_path, **config), lambda: engine)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.exit_code: int | None = None

    def _main(self) -> None:
        async def run() -> int:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._started.set()
            return await self.server.run(self._stop)

        self.exit_code = asyncio.run(run())

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        self._started.wait(10)
        deadline = time.monotonic() + 10
        while not accepts(self.socket_path):
            assert time.monotonic() < deadline, "in-thread server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- a stand-in engine for in-thread servers ---------------------------------------------------------------


class FakeGeneration:
    def __init__(self, engine: FakeEngine, params: GenerationParams) -> None:
        self.result = GenerationResult(prompt_tokens=len(params.input_ids))
        self._it = self._run(engine, params)

    def _run(self, engine: FakeEngine, params: GenerationParams):
        for i in range(params.max_new_tokens):
            engine.threads.add(threading.current_thread().name)
            if 13 in params.input_ids:
                raise RuntimeError("boom in /secret/path/model.py at 0x7f00deadbeef")
            tok = (params.input_ids[-1] + i + 1) % 100
            self.result.output_tokens.append(tok)
            self.result.finish_reason = "length" if i == params.max_new_tokens - 1 else None
            yield tok

    def __iter__(self):
        return self._it

    def close(self) -> None:
        self._it.close()
        self.result.finish_reason = self.result.finish_reason or "cancelled"


class FakeEngine:
    """What the server needs of an Engine; ids containing 13 make the model step fail."""

    def __init__(self, captures: int = 0) -> None:
        self.model = SimpleNamespace(name="fake", tokenizer=None)
        self.config = SimpleNamespace(mode="eager")
        self.pending = captures
        self.threads: set[str] = set()

    def validate(self, params: GenerationParams) -> None:
        if any(t >= 100 for t in params.input_ids):
            raise RequestError("token id out of range: ids must be in [0, 100)", code="invalid_token")

    def generate(self, params: GenerationParams) -> FakeGeneration:
        self.validate(params)
        return FakeGeneration(self, params)

    def start(self, params: GenerationParams, validated: bool = False) -> FakeGeneration:
        if not validated:
            self.validate(params)
        return FakeGeneration(self, params)  # nothing to launch ahead: its steps are made as it is iterated

    def stats(self) -> dict:
        self.threads.add(threading.current_thread().name)
        return {"model": "fake", "pending": self.pending}

    def idle_work(self) -> bool:
        self.threads.add(threading.current_thread().name)
        if self.pending:
            self.pending -= 1
            return True
        return False
