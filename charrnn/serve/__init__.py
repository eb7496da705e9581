"""charrnn serve: one model kept loaded behind an OpenAI-compatible HTTP API, every concurrent
stream stepped in one batch (docs/serving.md). The web stack (starlette, uvicorn) is the `serve`
extra: `serve` and `running` say in one line how to install it where it is missing."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from charrnn.errors import CharrnnError
from charrnn.serve.limits import Limits

__all__ = ["Limits", "running", "serve"]


def check_installed() -> None:
    """A CharrnnError saying what to pip install where the serve extra is missing."""
    missing = []
    for name in ("starlette", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CharrnnError(f"charrnn serve needs {' and '.join(missing)}: pip install 'charrnn[serve]'")


def one_blas_thread() -> None:
    """Matrix products on one thread, unless the environment says otherwise (before numpy loads):
    the event loop needs a core of its own. On two cores, BLAS threads that spin beside the loop
    took 32 clients from 14,909 to 487 characters a second (docs/serving.md)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          limits: Limits | None = None) -> None:  # fmt: skip
    """Serve `run` until SIGINT or SIGTERM, then stop gracefully (server.py)."""
    check_installed()
    one_blas_thread()
    from charrnn.serve.server import serve_until_signal

    serve_until_signal(run, host, port, api_key, limits or Limits())


@contextmanager
def running(run: str | Path, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
            limits: Limits | None = None) -> Iterator[str]:  # fmt: skip
    """Serve `run` on a thread of this process while the block runs; gives the server's base URL
    (http://127.0.0.1:PORT; port 0 takes a free one). For scripts and tests."""
    check_installed()
    from charrnn.serve.server import started

    with started(run, host, port, api_key, limits or Limits()) as server:
        yield server.url
