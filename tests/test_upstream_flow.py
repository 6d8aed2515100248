"""The httptools transport's flow control, as the upstream sees it: a body nobody reads holds the
upstream back (TCP backpressure) and reading it lets the upstream go on, however often that
happens; a request body the upstream does not read ends in a write timeout.

"Held back" is what the upstream sees: its writes stop draining. Each test waits for that with
a bound that a working transport always exceeds (it holds the upstream for good), so a slow
machine can only make a broken transport look working, never the reverse.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from sse_bridge._proxy.upstream.connection import TAKE_LIMIT
from tests.test_upstream import HEAD_CHUNKED, chunked, client, upstream

pytestmark = pytest.mark.anyio

# How long a write of the upstream may wait to drain before the upstream counts as held back.
HELD = 0.5


class Producer:
    """An upstream that streams `size` bytes of chunked body in small chunks, and notes each time
    its writes stop draining (the client's transport stopped reading) and when it is done."""

    def __init__(self, size: int, chunk: int = 4096) -> None:
        self.size = size
        self.chunk = chunk
        self.held = asyncio.Event()
        self.holds = 0
        self.written = 0
        self.done = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # A small send buffer: what the client's transport reads frees room the upstream sees.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        writer.write(HEAD_CHUNKED)
        # Small chunks: the transport must count the body bytes of a read, not its last chunk.
        piece = chunked(b"x" * self.chunk)[:-5]
        high = writer.transport.get_write_buffer_limits()[1]
        for _ in range(self.size // self.chunk):
            writer.write(piece)
            self.written += self.chunk
            if writer.transport.get_write_buffer_size() <= high:
                continue  # the sockets take it: write on without letting the client read
            try:
                await asyncio.wait_for(writer.drain(), HELD)
            except TimeoutError:
                self.holds += 1
                self.held.set()
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.done.set()
        await reader.read()

    async def held_or_done(self) -> None:
        """Until the upstream is held back again, or has sent everything (bounded)."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self.held, self.done)]
        try:
            await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


async def test_a_body_nobody_reads_holds_the_upstream_back_each_time() -> None:
    producer = Producer(32 * 1024 * 1024)
    pieces: list[bytes] = []
    async with (
        upstream(producer) as (url, _),
        client() as http,
        http.stream("GET", url) as response,
    ):
        stream = response.aiter_raw()
        total = 0
        for _ in range(2):
            # Nobody reads (from the start, then again): the transport stops reading the
            # socket, and the upstream is held back.
            await producer.held_or_done()
            assert producer.held.is_set(), "the upstream sent its whole body to a stalled reader"
            producer.held.clear()
            # Reading lets it go on: 2 MB read, then nobody reads again.
            goal = total + 2 * 1024 * 1024
            while total < goal:
                pieces.append(await anext(stream))
                total += len(pieces[-1])
        assert producer.holds >= 2
        assert not producer.done.is_set()
        pieces += [piece async for piece in stream]
    assert producer.done.is_set()
    assert sum(map(len, pieces)) == producer.size
    # What the transport held while nobody read comes out in pieces of at most TAKE_LIMIT.
    assert max(map(len, pieces)) == TAKE_LIMIT


async def test_taking_one_piece_of_a_large_backlog_lets_the_upstream_send_nothing_more() -> None:
    """The transport reads the socket again only once what it holds is down to READ_HIGH_WATER."""
    producer = Producer(32 * 1024 * 1024)
    async with (
        upstream(producer) as (url, _),
        client() as http,
        http.stream("GET", url) as response,
    ):
        stream = response.aiter_raw()
        # The upstream wrote until the sockets were full: one read took far more than
        # READ_HIGH_WATER before the transport stopped reading.
        await producer.held_or_done()
        assert producer.held.is_set()
        written = producer.written
        pieces = [await anext(stream)]
        # Bounded: a transport that read on would let the upstream write within this.
        await asyncio.sleep(HELD)
        assert producer.written == written
        pieces += [piece async for piece in stream]
    assert sum(map(len, pieces)) == producer.size


class Deaf:
    """An upstream that reads nothing until the client has given up; then it reads everything the
    client had sent, to its end."""

    def __init__(self) -> None:
        self.given_up = asyncio.Event()
        self.read = 0
        self.finished = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.given_up.wait()
        try:
            while data := await reader.read(1 << 20):
                self.read += len(data)
        finally:
            self.finished.set()


# More than the sockets' buffers take: the rest waits in the transport.
LARGE = 16 * 1024 * 1024


async def parts() -> AsyncIterator[bytes]:
    for _ in range(LARGE // (1024 * 1024)):
        yield b"x" * (1024 * 1024)


@pytest.mark.parametrize("large", ["body", "streamed body", "head"])
async def test_a_request_the_upstream_does_not_read_times_out_on_write(
    large: str, caplog: pytest.LogCaptureFixture
) -> None:
    deaf = Deaf()
    content = b"x" * LARGE if large == "body" else parts()
    # A head is its own write when the body is streamed: the write timeout covers it too.
    headers = {"x-padding": "x" * LARGE} if large == "head" else {}
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        async with upstream(deaf) as (url, _), client(write=0.2, read=2) as http:
            with pytest.raises(httpx.WriteTimeout, match=r"^timed out$"):
                # Bounded: a write that waited with no timeout would hang here.
                await asyncio.wait_for(http.post(url, content=content, headers=headers), 10)
            deaf.given_up.set()
            # The upstream reads what was sent: the transport's buffer drains and the socket
            # closes, with nothing left waiting for it.
            await asyncio.wait_for(deaf.finished.wait(), 10)
    assert deaf.read > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("size", [TAKE_LIMIT - 1, TAKE_LIMIT, TAKE_LIMIT + 1, 2 * TAKE_LIMIT])
async def test_a_body_around_the_take_limit_arrives_whole(size: int) -> None:
    async def one_read_then_the_end(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (size + 3))
        writer.write(b"x" * size)  # read at once, as one piece of `size` bytes
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"end")
        await writer.drain()
        await reader.read()

    async with upstream(one_read_then_the_end) as (url, _), client() as http:
        response = await http.get(url)
    assert response.content == b"x" * size + b"end"
