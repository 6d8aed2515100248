"""The httptools transport's pool and answers, as httpx users see them: the status line, the pool's
bound after every way a body ends, read timeouts in the body, and a request's own framing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from sse_bridge._proxy.upstream.transport import HttptoolsTransport
from tests.test_upstream import HEAD_CHUNKED, Handler, answer_each, chunked, client, upstream

pytestmark = pytest.mark.anyio


def one_connection() -> HttptoolsTransport:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return HttptoolsTransport(limits=limits)


async def still_bounded(http: httpx.AsyncClient, url: str) -> None:
    """With one connection busy, a second request waits for it (and times out here)."""
    async with http.stream("GET", url) as busy:
        with pytest.raises(httpx.PoolTimeout):
            await http.get(url)
        await busy.aread()


async def test_the_status_line_reaches_httpx_even_split_across_reads() -> None:
    async def split(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Every")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"thing Fine\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with upstream(split) as (url, _), client() as http:
        response = await http.get(url)
    assert (response.http_version, response.reason_phrase) == ("HTTP/1.1", "Everything Fine")
    assert response.content == b"ok"


async def test_only_plain_http_is_spoken() -> None:
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol, match=r"speaks plain http, not https$"):
            await http.get("https://127.0.0.1:9/")


async def test_the_pool_stays_bounded_after_bodies_read_and_closed_twice() -> None:
    transport = one_connection()
    timeout = httpx.Timeout(5.0, pool=0.2)
    async with (
        upstream(answer_each) as (url, _),
        httpx.AsyncClient(transport=transport, timeout=timeout) as http,
    ):
        assert (await http.get(url)).status_code == 200
        await still_bounded(http, url)
        port = int(url.rsplit(":", 1)[1])
        timeouts: dict[str, float | None] = {"connect": 5, "read": 5, "write": 5, "pool": 0.2}
        answer = await transport.open("127.0.0.1", port, "GET", b"/", [], b"", timeouts)
        assert await answer.read() == b'{"a":1}\n{"b":2}\n'
        # A body closed twice gives its connection back once.
        await answer.aclose()
        await answer.aclose()
        await still_bounded(http, url)


async def test_a_body_that_stalls_past_the_read_timeout_raises() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD_CHUNKED + chunked(b"first\n")[:-5])
        await writer.drain()
        await asyncio.sleep(5)

    async with (
        upstream(stall) as (url, _),
        client(read=0.2) as http,
        http.stream("GET", url) as response,
    ):
        pieces = response.aiter_raw()
        assert await pieces.__anext__() == b"first\n"
        with pytest.raises(httpx.ReadTimeout):
            await asyncio.wait_for(pieces.__anext__(), 3)


async def test_a_streamed_body_of_declared_length_is_sent_as_it_is() -> None:
    received: list[bytes] = []

    async def read_ten(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.append(await reader.readexactly(10))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    async def parts() -> AsyncIterator[bytes]:
        yield b"01234"
        yield b"56789"

    # A header that merely mentions chunked is no Transfer-Encoding.
    headers = {"content-length": "10", "x-mode": "chunked"}
    async with upstream(read_ten) as (url, heads), client() as http:
        response = await http.post(url, content=parts(), headers=headers)
    assert response.status_code == 200
    assert b"transfer-encoding" not in heads[0].lower()
    assert received == [b"0123456789"]


async def test_an_idle_connection_the_upstream_closes_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # Then it closes the kept-alive connection (the helper closes on return).

    transport = HttptoolsTransport()
    async with upstream(once) as (url, heads), httpx.AsyncClient(transport=transport) as http:
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            assert (await http.get(url)).content == b"ok"
            (pool,) = transport.pools.values()
            for _ in range(200):  # until the close has reached the pool (bounded)
                if not pool.idle:
                    break
                await asyncio.sleep(0.01)
            assert not pool.idle
            assert (await http.get(url)).content == b"ok"
    assert len(heads) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_each_origin_has_a_pool_of_its_own() -> None:
    def answering(name: bytes) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n" + name)
                await writer.drain()

        return handler

    async with (
        upstream(answering(b"a")) as (a, _),
        upstream(answering(b"b")) as (b, _),
        httpx.AsyncClient(transport=HttptoolsTransport()) as http,
    ):
        # Kept-alive connections to one are never handed out for the other.
        answers = [(await http.get(url)).content for url in (a, b, a, b)]
    assert answers == [b"a", b"b", b"a", b"b"]


async def test_the_transport_answers_a_request_sent_without_a_client() -> None:
    """httpx's transport API on its own: a request with no timeouts in its extensions."""
    transport = HttptoolsTransport()
    async with upstream(answer_each) as (url, _):
        response = await transport.handle_async_request(httpx.Request("GET", url))
        assert response.status_code == 200
        assert await response.aread() == b'{"a":1}\n{"b":2}\n'
        await response.aclose()
    await transport.aclose()
