"""Run real uvicorn servers on free loopback ports for end-to-end tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from sse_bridge._types import ASGIApp

STARTUP_TIMEOUT = 10.0


@contextlib.contextmanager
def serve(app: ASGIApp, **config: Any) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread; yield its base URL; stop it on exit.

    The socket is bound before the server starts (port 0), so there is no race for the port, and
    readiness is uvicorn's own `started` flag, never a sleep.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    # proxy_headers off, as `sse-bridge serve` runs: the peer address stays the real one.
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "auto", "proxy_headers": False}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT)
        sock.close()
