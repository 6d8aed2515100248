"""The httptools transport as an httpx user meets it when things go wrong, and where it connects:
the exact words of each error, the pool's count after a failed connect, interim responses, the
reuse and expiry of idle connections, and the port a URL without one names (80)."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sse_bridge._proxy.upstream.transport import HttptoolsTransport
from tests.test_upstream import HEAD_CHUNKED, answer_each, client, socket_closed_port, upstream

pytestmark = pytest.mark.anyio

TIMEOUTS: dict[str, float | None] = {"connect": 5, "read": 5, "write": 5, "pool": 5}


def exactly(text: str) -> str:
    return f"^{re.escape(text)}$"


async def test_each_timeout_says_it_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()

    async with upstream(silent) as (url, _), client(read=0.1) as http:
        with pytest.raises(httpx.ReadTimeout, match=exactly("timed out")):
            await http.get(url)

    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(5.0, pool=0.1)
    async with (
        upstream(answer_each) as (url, _),
        httpx.AsyncClient(transport=HttptoolsTransport(limits=limits), timeout=timeout) as http,
        http.stream("GET", url),  # the pool's one connection, busy
    ):
        with pytest.raises(httpx.PoolTimeout, match=exactly("timed out")):
            await http.get(url)

    loop = asyncio.get_running_loop()

    async def hang(*args: object, **kwargs: object) -> object:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    monkeypatch.setattr(loop, "create_connection", hang)
    async with client(connect=0.1) as http:
        with pytest.raises(httpx.ConnectTimeout, match=exactly("timed out")):
            await http.get("http://127.0.0.1:9/")


async def test_a_refused_connection_says_why() -> None:
    with socket_closed_port() as port:
        async with client() as http:
            with pytest.raises(httpx.ConnectError) as raised:
                await http.get(f"http://127.0.0.1:{port}/")
    # The system's words: "[Errno 111] Connect call failed ('127.0.0.1', …)" on Linux.
    assert str(raised.value).startswith(f"[Errno {errno.ECONNREFUSED}] ")


async def test_a_reset_says_so() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD_CHUNKED + b"5\r\nhello\r\n")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async with upstream(reset) as (url, _), client() as http:
        with pytest.raises(httpx.ReadError) as raised:
            async with http.stream("GET", url) as response:
                await response.aread()
    assert str(raised.value) == f"[Errno {errno.ECONNRESET}] Connection reset by peer"


async def test_a_failed_connect_gives_its_place_in_the_pool_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    connect = loop.create_connection
    failures = [ConnectionRefusedError()]  # an error with no words of its own

    async def refused_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await connect(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", refused_once)
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    timeout = httpx.Timeout(5.0, pool=0.1)
    async with (
        upstream(answer_each) as (url, heads),
        httpx.AsyncClient(transport=HttptoolsTransport(limits=limits), timeout=timeout) as http,
    ):
        # An error without words is named by its type rather than left blank.
        with pytest.raises(httpx.ConnectError, match=exactly("ConnectionRefusedError")):
            await http.get(url)
        # Two requests at once, as the limit allows, and not a third.
        async with http.stream("GET", url) as first, http.stream("GET", url) as second:
            with pytest.raises(httpx.PoolTimeout):
                await http.get(url)
            await first.aread()
            await second.aread()
    assert len(heads) == 2


async def test_a_url_without_a_port_goes_to_port_80_and_its_host_header_names_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Port 80 is privileged: the connection to it is pointed at the test's upstream instead."""
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            received.append(head)
            if b"transfer-encoding: chunked" in head:
                received.append(await reader.readuntil(b"0\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def streamed() -> AsyncIterator[bytes]:
        yield b"abc"

    loop = asyncio.get_running_loop()
    connect = loop.create_connection
    asked: list[tuple[str, int]] = []
    async with upstream(record) as (url, _):
        port = int(url.rsplit(":", 1)[1])

        async def to_the_test_upstream(factory: Any, host: str, to: int, **kwargs: Any) -> Any:
            asked.append((host, to))
            return await connect(factory, "127.0.0.1", port, **kwargs)

        monkeypatch.setattr(loop, "create_connection", to_the_test_upstream)
        async with client() as http:
            assert (await http.get("http://127.0.0.1/a")).content == b"ok"
        transport = HttptoolsTransport()
        answer = await transport.open("127.0.0.1", 80, "POST", b"/b", [], streamed(), TIMEOUTS)
        assert await answer.read() == b"ok"
        await answer.aclose()
        await transport.aclose()
    assert asked == [("127.0.0.1", 80), ("127.0.0.1", 80)]
    assert received[1].startswith(b"POST /b HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    # A body of unknown length, as open() promises: chunked.
    assert b"transfer-encoding: chunked\r\n" in received[1]
    assert received[2] == b"3\r\nabc\r\n0\r\n\r\n"


async def test_a_write_after_the_upstream_has_answered_and_closed_says_it_is_closed() -> None:
    closed = asyncio.Event()

    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(b"5\r\nfirst\r\n"))  # all it was sent: a FIN, not a RST
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nearly")
        writer.close()
        await writer.wait_closed()
        closed.set()

    async def parts() -> AsyncIterator[bytes]:
        yield b"first"
        await closed.wait()
        await asyncio.sleep(0.1)  # the client's transport has seen the close by now
        yield b"second"

    async with upstream(answer_and_close) as (url, _), client() as http:
        with pytest.raises(httpx.WriteError, match=exactly("the upstream connection is closed")):
            await http.post(url, content=parts())


async def test_an_interim_response_read_on_its_own_is_skipped() -> None:
    async def continue_then_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the interim response is a read of its own
        writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"ok")
        await writer.drain()
        await reader.read()

    async with upstream(continue_then_answer) as (url, _), client() as http:
        created = await http.post(url, content=b"x")
    assert (created.status_code, created.reason_phrase, created.content) == (201, "Created", b"ok")
    assert "x-interim" not in created.headers


@pytest.mark.parametrize("expiry", [None, 60.0])
async def test_an_idle_connection_is_reused_until_it_expires(expiry: float | None) -> None:
    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer_each(reader, writer)

    limits = httpx.Limits(max_connections=4, keepalive_expiry=expiry)
    async with (
        upstream(counted) as (url, heads),
        httpx.AsyncClient(transport=HttptoolsTransport(limits=limits)) as http,
    ):
        for _ in range(3):
            assert (await http.get(url)).status_code == 200
    assert (len(heads), connections) == (3, 1)

    connections = 0
    limits = httpx.Limits(max_connections=4, keepalive_expiry=0.05)
    async with (
        upstream(counted) as (url, heads),
        httpx.AsyncClient(transport=HttptoolsTransport(limits=limits)) as http,
    ):
        assert (await http.get(url)).status_code == 200
        await asyncio.sleep(0.2)  # past the expiry
        assert (await http.get(url)).status_code == 200
    assert (len(heads), connections) == (2, 2)
