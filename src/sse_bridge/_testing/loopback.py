"""Servers on loopback ports: for the demo, the tests, the benchmarks and the load tests.

``listening_socket`` binds a port now (0: any free one), so nothing can take it before the
server starts; ``free_port`` finds one for another process to bind in a moment. uvicorn runs an
ASGI app on such a socket in a thread (``serve_in_thread``) or in a task of the running event
loop (``serve_in_task``) until its own ``started`` flag is up, never after a fixed sleep, and
stops it on exit. ``wait_until`` is the bounded poll for servers in other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from sse_bridge._types import ASGIApp

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
# uvicorn's own default backlog.
BACKLOG = 2048


def listening_socket(host: str = HOST, port: int = 0, *, backlog: int = BACKLOG) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (0: a free port the kernel picks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str = HOST) -> int:
    """A port that is free now, for a process that will bind it in a moment.

    It is drawn below the kernel's ephemeral range: a port the kernel handed out itself (bind to
    port 0) may be given again as the source port of some client connection before the server
    binds it, which then fails to start.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, max(10_001, low))
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(errno.EADDRINUSE, "no free port found below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def accepts(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host``:``port`` now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float = STARTUP_TIMEOUT,
    interval: float = 0.02,
    what: str = "the server",
) -> None:
    """Call ``ready`` every ``interval`` seconds until it is true; TimeoutError after ``timeout``.

    ``ready`` may raise to give up early (say, when the process it waits for has exited).
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} was not ready within {timeout:g} s")
        time.sleep(interval)


class Server(uvicorn.Server):
    """A uvicorn server that leaves signals to its caller, which may run several of them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: ASGIApp, **config: Any) -> Server:
    """uvicorn for ``app``, quiet, and (as ``sse-bridge serve`` runs) with proxy_headers off."""
    options: dict[str, Any] = {"log_level": "warning", "proxy_headers": False, **config}
    return Server(uvicorn.Config(app, **options))


def base_url(sock: socket.socket) -> str:
    return "http://{}:{}".format(*sock.getsockname())


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, *, startup_timeout: float = STARTUP_TIMEOUT, **config: Any
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yield its base URL.

    Yields once uvicorn is ready (RuntimeError if it does not start within ``startup_timeout``
    seconds) and stops the server on exit. ``config`` goes to ``uvicorn.Config``; the peer
    address stays the real one (``proxy_headers`` off). Works in sync and async tests alike:
    the server has its own event loop.
    """
    sock = listening_socket()
    uvicorn_server = server(app, **config)

    def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn's exit when its startup fails
            uvicorn_server.run(sockets=[sock])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        with contextlib.suppress(TimeoutError):
            wait_until(
                lambda: uvicorn_server.started or not thread.is_alive(),
                timeout=startup_timeout,
                interval=0.005,
            )
        if not uvicorn_server.started:
            raise RuntimeError("uvicorn did not start")
        yield base_url(sock)
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()


@contextlib.asynccontextmanager
async def serve_in_task(
    app: ASGIApp,
    *,
    sock: socket.socket | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
    **config: Any,
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in a task of this event loop; yield its base URL once ready.

    On ``sock`` if given (uvicorn closes it when it stops), else on a free 127.0.0.1 port.
    RuntimeError if uvicorn does not start within ``startup_timeout`` seconds. On exit the
    server stops and this waits for it: uvicorn first lets open responses finish.
    """
    listening = listening_socket() if sock is None else sock
    uvicorn_server = server(app, **config)

    async def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn's exit when its startup fails
            await uvicorn_server.serve(sockets=[listening])

    # A bare task rather than a task group: the caller's exceptions reach it unwrapped.
    task = asyncio.ensure_future(run())
    try:
        with anyio.move_on_after(startup_timeout):
            # uvicorn offers a flag, not an event, for readiness.
            while not (uvicorn_server.started or task.done()):  # noqa: ASYNC110
                await anyio.sleep(0.005)
        if not uvicorn_server.started:
            raise RuntimeError("uvicorn did not start")
        yield base_url(listening)
    finally:
        uvicorn_server.should_exit = True
        with anyio.CancelScope(shield=True):
            await task
        if sock is None:
            listening.close()
