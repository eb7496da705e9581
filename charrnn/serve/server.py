"""The server's life: load the run once, listen, start the engine and uvicorn, stop gracefully.

`started` runs uvicorn on a thread of its own (so the caller keeps its thread: a test, a script,
or `serve_until_signal`, which waits for SIGINT or SIGTERM). Stopping takes no new requests
(503), lets the streams in flight run on for --grace seconds, ends those still running with a
last event, then closes every connection: the process exits 0 within a few seconds.
"""

from __future__ import annotations

import ipaddress
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from charrnn.errors import CharrnnError
from charrnn.inference import Model
from charrnn.serve.app import create_app
from charrnn.serve.batcher import Engine
from charrnn.serve.limits import Limits
from charrnn.serve.protocol import with_head_timeout

START_TIMEOUT = 30.0  # seconds uvicorn may take to start listening


@dataclass
class Started:
    url: str
    name: str
    engine: Engine
    server: uvicorn.Server
    thread: threading.Thread


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, api_key: str | None) -> None:
    """Refuse a key that is empty, and an address other machines reach without a key."""
    if api_key is not None and not api_key:
        raise CharrnnError("the API key is empty: give a non-empty --api-key (or CHARRNN_API_KEY)")
    if api_key is None and not _loopback(host):
        raise CharrnnError(
            f"--host {host} is reachable from other machines: give an API key (--api-key or CHARRNN_API_KEY)"
        )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except (OSError, OverflowError) as exc:
        raise CharrnnError(f"cannot listen on {host}:{port}: {exc}") from None


def _load(run: str | Path) -> tuple[Model, dict]:
    """The run's model (as `charrnn.load` makes it, on the CPU) and its weights as numpy arrays,
    from one read of the checkpoint: the engine steps the arrays, /v1/score runs the model."""
    from charrnn.checkpoint import arrays_from_checkpoint, load_checkpoint, resolve_checkpoint

    if not isinstance(run, str | Path):
        raise CharrnnError(f"the run must be a path, got {type(run).__name__}")
    file = resolve_checkpoint(Path(run))
    payload = load_checkpoint(file, arrays=True)
    config, tokenizer, weights = arrays_from_checkpoint(payload)
    return Model(file, "cpu", config, tokenizer, weights, payload), weights


def model_name(run: str | Path) -> str:
    """The name the API gives the model: the run directory's (a checkpoint file's directory's)."""
    path = Path(run).resolve()
    return path.name if path.is_dir() else path.parent.name


@contextmanager
def started(run: str | Path, host: str, port: int, api_key: str | None, limits: Limits) -> Iterator[Started]:
    """The server of `run`, listening on host:port, while the block runs; stopped gracefully after."""
    check_host(host, api_key)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise CharrnnError(f"--port must be in 0..65535, got {port!r}")
    model, weights = _load(run)
    engine = Engine(model.config, weights, model.tokenizer, limits)
    name = model_name(run)
    sock = _listen(host, port)
    config = uvicorn.Config(
        create_app(model, engine, limits, name, api_key),
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=with_head_timeout(limits.body_timeout),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=math.ceil(limits.grace) + 2,
        limit_concurrency=limits.max_streams + limits.max_queue + 64,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="charrnn-serve", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        where = f"[{host}]" if ":" in host else host
        yield Started(f"http://{where}:{sock.getsockname()[1]}", name, engine, server, thread)
    finally:
        engine.stop_soon(limits.grace)
        server.should_exit = True
        thread.join(limits.grace + 10)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise CharrnnError("the server did not start")
        time.sleep(0.01)


def serve_until_signal(run: str | Path, host: str, port: int, api_key: str | None, limits: Limits) -> None:
    """Serve until SIGINT or SIGTERM (then stop gracefully and return), saying where in one line."""
    stop = threading.Event()
    with started(run, host, port, api_key, limits) as server:
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            print(f"charrnn: serving {server.name} at {server.url} (Ctrl-C stops)", flush=True)
            while not stop.wait(0.5):
                if not server.thread.is_alive():
                    raise CharrnnError("the server stopped unexpectedly")
            print(f"charrnn: stopping: streams in flight get {limits.grace:g} s to finish", file=sys.stderr, flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
