"""Loopback servers: free ports, readiness without sleeps, and servers that stop."""

from __future__ import annotations

import errno
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from sse_bridge._cli.demo import bind
from sse_bridge._testing import loopback as _loopback
from sse_bridge._testing.loopback import (
    accepts,
    free_port,
    listening_socket,
    serve_in_task,
    wait_until,
)
from sse_bridge._types import Receive, Scope, Send
from sse_bridge.testing import serve_in_thread


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def fails_to_start(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no"})


def test_free_port_is_free_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < max(10_001, low) for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_accepts_tells_a_listening_port_from_a_closed_one() -> None:
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        assert sock.getsockname()[0] == "127.0.0.1"
        assert accepts(port)
    assert not accepts(port)


def test_wait_until_polls_until_ready_and_is_bounded() -> None:
    calls: list[float] = []

    def third_time() -> bool:
        calls.append(time.monotonic())
        return len(calls) == 3

    wait_until(third_time, interval=0.001)
    assert len(calls) == 3
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^the redis server was not ready within 0.05 s$"):
        wait_until(lambda: False, timeout=0.05, interval=0.01, what="the redis server")
    assert 0.05 <= time.monotonic() - started < 2


def test_serve_in_thread_serves_until_the_block_ends() -> None:
    with serve_in_thread(hello) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url).text == "hello"
        threads = threading.active_count()
    port = int(url.rsplit(":", 1)[1])
    assert not accepts(port)
    assert threading.active_count() == threads - 1


def test_serve_in_thread_says_when_uvicorn_does_not_start() -> None:
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="uvicorn did not start"),
        serve_in_thread(fails_to_start, lifespan="on", log_level="critical"),
    ):
        pass  # pragma: no cover - never reached
    assert time.monotonic() - started < 5  # it did not wait out the startup timeout


@pytest.mark.anyio
async def test_serve_in_task_serves_on_this_loop_and_stops() -> None:
    async with serve_in_task(hello) as url, httpx.AsyncClient() as client:
        assert (await client.get(url)).text == "hello"
    assert not accepts(int(url.rsplit(":", 1)[1]))


@pytest.mark.anyio
async def test_serve_in_task_takes_a_socket_and_reports_a_failed_start() -> None:
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with serve_in_task(hello, sock=sock) as served:
        assert served == url
    with pytest.raises(RuntimeError, match="uvicorn did not start"):
        async with serve_in_task(fails_to_start, lifespan="on", log_level="critical"):
            pass  # pragma: no cover - never reached


def test_the_demo_moves_to_a_free_port_when_its_own_is_taken() -> None:
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        sock, moved = bind("127.0.0.1", port)
        with sock:
            assert moved
            assert sock.getsockname()[1] not in (0, port)
        sock, moved = bind("127.0.0.1", 0)
        with sock:
            assert not moved
        with pytest.raises(OSError, match="in use") as taken_too:
            listening_socket("127.0.0.1", port)
    assert taken_too.value.errno == errno.EADDRINUSE
    # Any other failure is the user's to see (an address this machine does not have).
    with pytest.raises(OSError, match="assign") as elsewhere:
        bind("192.0.2.1", 18080)
    assert elsewhere.value.errno == errno.EADDRNOTAVAIL


def test_free_port_gives_up_when_nothing_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        monkeypatch.setattr(random, "randrange", lambda low, high: port)
        with pytest.raises(OSError, match="no free port found below the ephemeral range"):
            free_port()


def test_the_ephemeral_range_has_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unreadable:
        def __init__(self, path: str) -> None:
            pass

        def read_text(self) -> str:
            raise OSError("no /proc here")

    monkeypatch.setattr(_loopback, "Path", Unreadable)
    assert _loopback._ephemeral_low() == 32768
