"""The generator process: load the model, pre-capture, then serve the wire protocol on a Unix socket.

Threads: the asyncio loop (this module and `connection.py`) accepts connections, reads frames and streams
replies; the engine thread (`engine_thread.py`) does all torch work, one job at a time in arrival order, and
while it is idle reads the next generate request of an idle connection itself (`request_reads.py`). The
socket only opens once loading and pre-capture are done, so a client that can connect is served at full
speed.

The socket file is created with mode 0600 and removed on exit; parent directories that do not exist yet are
created with mode 0700 (and kept). A stale socket (nobody listening) is replaced; a live server's socket, or a
path that is not a socket, is never touched. SIGTERM/SIGINT stop accepting, let requests in flight finish (up
to the drain timeout), then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from rollgraph.config import ServerConfig
from rollgraph.connection import Connection, ServerContext, peer_uid, refuse
from rollgraph.engine_thread import EngineThread
from rollgraph.errors import RollgraphError

if TYPE_CHECKING:
    from rollgraph.config import EngineConfig, ModelConfig
    from rollgraph.engine import Engine

logger = logging.getLogger(__name__)

MAX_IDLE_SPIN_MS = 100.0
"""The longest idle poll `--idle-spin-ms` takes: past that a core burns for nothing a client would notice."""
ENGINE_STOP_TIMEOUT_S = 10.0
"""After draining, how long the engine thread gets to finish a step before the process exits without it."""


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The `serve` flags as a ServerConfig; RollgraphError (exit code 2) for a value out of range."""
    config = ServerConfig(
        socket_path=args.socket,
        max_frame_bytes=args.max_frame_bytes,
        max_connections=args.max_connections,
        frame_timeout_s=args.frame_timeout,
        drain_timeout_s=getattr(args, "drain_timeout", ServerConfig.drain_timeout_s),
        allowed_uids=tuple(args.allow_uid or ()),
        gc_freeze=getattr(args, "gc_freeze", ServerConfig.gc_freeze),
        token_writes=getattr(args, "token_writes", ServerConfig.token_writes),
        request_reads=getattr(args, "request_reads", ServerConfig.request_reads),
        idle_spin_ms=getattr(args, "idle_spin_ms", ServerConfig.idle_spin_ms),
    )
    checks = (
        ("--max-frame-bytes", config.max_frame_bytes >= 64, "an integer >= 64"),
        ("--max-connections", config.max_connections >= 1, "an integer >= 1"),
        ("--frame-timeout", config.frame_timeout_s > 0, "a number of seconds > 0"),
        ("--drain-timeout", config.drain_timeout_s >= 0, "a number of seconds >= 0"),
        ("--token-writes", config.token_writes in ("engine", "loop"), 'one of "engine", "loop"'),
        ("--request-reads", config.request_reads in ("engine", "loop"), 'one of "engine", "loop"'),
        ("--idle-spin-ms", 0 <= config.idle_spin_ms <= MAX_IDLE_SPIN_MS, f"from 0 to {MAX_IDLE_SPIN_MS:g} (ms)"),
        (
            "--socket",
            len(os.fsencode(config.socket_path)) < 108,
            "a path shorter than 108 bytes (AF_UNIX limit)",
        ),
    )
    for flag, ok, allowed in checks:
        if not ok:
            raise RollgraphError(f"{flag} must be {allowed}", code="invalid_value")
    if config.allowed_uids and not hasattr(socket, "SO_PEERCRED"):
        raise RollgraphError("--allow-uid needs SO_PEERCRED, which this platform lacks", code="invalid_value")
    return config


def check_socket_path(path: str) -> None:
    """Make `path` free for binding: remove a stale socket; raise RollgraphError for a live server's socket, a
    file that is not a socket, or a socket that cannot be probed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RollgraphError(
            f"{path} exists and is not a socket; refusing to replace it: remove it or pass another --socket",
            code="socket_in_use",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        logger.info("removed the stale socket %s (no server was listening)", path)
        return
    except OSError as exc:
        raise RollgraphError(f"cannot check the socket {path}: {exc.strerror or exc}", code="socket_in_use") from None
    finally:
        probe.close()
    raise RollgraphError(
        f"a server is already listening at {path}; stop it first or pass another --socket",
        code="socket_in_use",
    )


def make_socket_dir(path: str) -> None:
    """Create the socket's missing parent directories with mode 0700, so that a directory this server made is
    private to its user whatever the umask; an existing directory is left as it is. Raises RollgraphError."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent):
        return
    old_umask = os.umask(0o077)  # every directory makedirs creates, not only the last, gets 0700
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise RollgraphError(
            f"cannot create the socket's directory {parent}: {exc.strerror or exc}", code="socket_in_use"
        ) from None
    finally:
        os.umask(old_umask)
    logger.info("created the socket directory %s (mode 0700)", parent)


def bind_socket(path: str, backlog: int) -> socket.socket:
    """A listening socket at `path`, created with mode 0600 (the umask covers the moment between bind and
    chmod). Raises RollgraphError if the path is taken or cannot be bound."""
    make_socket_dir(path)
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise RollgraphError(f"cannot bind the socket {path}: {exc.strerror or exc}", code="socket_in_use") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    return sock


def remove_socket(path: str, inode: int) -> None:
    """Unlink `path` if it is still the socket this process bound (not one a later server put there)."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def load_engine(model_config: ModelConfig, engine_config: EngineConfig, gc_freeze: bool = False) -> Engine:
    """Runs on the engine thread: load the model, build the engine, pre-capture, then (ServerConfig.gc_freeze)
    freeze what is alive out of the garbage collector's reach. Raises ModelLoadError."""
    from rollgraph.engine import Engine
    from rollgraph.models import load_model

    start = time.perf_counter()
    engine = Engine(load_model(model_config), engine_config)
    engine.warm_up(progress=sys.stderr.isatty())
    logger.info("model %s loaded and pre-captured in %.1f s", model_config.name, time.perf_counter() - start)
    if gc_freeze:
        gc.collect()
        gc.freeze()
        logger.info("gc: %d objects frozen out of the collector's reach", gc.get_freeze_count())
    return engine


class Server:
    """One generator process's serving life: load (on the engine thread), listen, serve, drain, clean up.

    `load` is called once, on the engine thread, and returns the engine (tests pass a stand-in). `run(stop)`
    returns 0 after `stop` is set and the drain is over; a load error is raised from `run`.
    """

    def __init__(self, config: ServerConfig, load: Callable[[], Any]) -> None:
        self.config = config
        self.engine_thread = EngineThread(load, spin_s=config.idle_spin_ms / 1e3)
        self._conns: dict[Connection, asyncio.Task] = {}
        self.ctx: ServerContext | None = None

    async def run(self, stop: asyncio.Event) -> int:
        self.engine_thread.start()
        engine = await self._wait_loaded(stop)
        if engine is None:
            logger.info("stopped while loading")
            return 0
        self.ctx = ctx = ServerContext(self.config, engine, self.engine_thread)
        path = self.config.socket_path
        sock = bind_socket(path, max(128, self.config.max_connections))
        inode = os.lstat(path).st_ino
        try:
            server = await asyncio.start_unix_server(partial(self._on_connect, ctx), sock=sock)
            logger.info("ready: serving %s (mode %s) on %s", engine.model.name, engine.config.mode, path)
            await stop.wait()
            logger.info("stopping: no new connections; draining requests in flight")
            server.close()
            await self._drain(ctx)
        finally:
            sock.close()
            remove_socket(path, inode)
        logger.info("stopped")
        return 0

    async def _wait_loaded(self, stop: asyncio.Event) -> Any:
        """The engine once loaded, None if `stop` came first; the load error is raised."""
        loaded = asyncio.wrap_future(self.engine_thread.ready)
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not loaded.done():
            loaded.cancel()
            return None
        return loaded.result()

    async def _on_connect(self, ctx: ServerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ctx.counters.connections_total += 1
        refusal = self._refusal(ctx, writer)
        if refusal is not None:
            logger.info("refused a connection: %s", refusal.message)
            await refuse(reader, writer, refusal, ctx.counters)
            return
        conn = Connection(ctx, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._conns[conn] = task
        ctx.counters.connections_open += 1
        try:
            await conn.serve()
        finally:
            del self._conns[conn]
            ctx.counters.connections_open -= 1

    def _refusal(self, ctx: ServerContext, writer: asyncio.StreamWriter) -> RollgraphError | None:
        """Why this connection is not served, or None."""
        if ctx.stopping:
            return RollgraphError("the server is shutting down", code="overloaded")
        if len(self._conns) >= self.config.max_connections:
            return RollgraphError(
                f"too many connections: this server serves at most {self.config.max_connections} at once; "
                "retry later or close idle connections",
                code="overloaded",
            )
        if self.config.allowed_uids:
            try:
                uid: int | None = peer_uid(writer.get_extra_info("socket"))
            except OSError:
                uid = None
            if uid not in self.config.allowed_uids:
                return RollgraphError(
                    f"user id {uid} may not use this server (--allow-uid allows "
                    f"{', '.join(map(str, self.config.allowed_uids))})",
                    code="forbidden",
                )
        return None

    async def _drain(self, ctx: ServerContext) -> None:
        """Close idle connections, let busy ones finish their request (up to the drain timeout), then stop
        the engine thread."""
        # Connections are closed, never task.cancel()ed: Python 3.11's stream callback logs a cancelled
        # handler task as an error.
        ctx.stopping = True
        for conn in list(self._conns):
            if not conn.busy:
                conn.close()
        tasks = list(self._conns.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.drain_timeout_s)
            if pending:
                logger.warning(
                    "drain timeout (%g s): cancelling %d requests", self.config.drain_timeout_s, len(pending)
                )
                for conn in list(self._conns):
                    conn.abort()
                await asyncio.wait(pending, timeout=ENGINE_STOP_TIMEOUT_S)
        self.engine_thread.stop()
        stopped = await asyncio.to_thread(self.engine_thread.join, ENGINE_STOP_TIMEOUT_S)
        if not stopped:
            logger.warning("the engine thread did not stop within %g s; exiting without it", ENGINE_STOP_TIMEOUT_S)


async def serve_until_signalled(server: Server) -> int:
    """Run `server` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, partial(_on_signal, sig, stop))
    return await server.run(stop)


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    logger.info("received %s", sig.name)
    stop.set()


def run_server(args: argparse.Namespace) -> int:
    """`rollgraph serve`: returns the exit code; RollgraphError (exit code 2 in the CLI) for a taken socket
    path, a bad flag or a model that cannot be loaded."""
    from rollgraph.cli import engine_config, model_config

    config = server_config(args)
    load = partial(load_engine, model_config(args), engine_config(args), gc_freeze=config.gc_freeze)
    make_socket_dir(config.socket_path)  # fail before spending time on the model
    check_socket_path(config.socket_path)
    return asyncio.run(serve_until_signalled(Server(config, load)))
