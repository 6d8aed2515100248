"""The httptools transport against scripted upstreams on real loopback sockets.

Each upstream is a small asyncio server whose handler reads the request head and writes exactly
the bytes a test gives it, so framing, reuse and every failure are under the test's control.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from sse_bridge import create_proxy
from sse_bridge._proxy.upstream.connection import READ_HIGH_WATER
from sse_bridge._proxy.upstream.transport import HttptoolsTransport
from tests._servers import serve
from tests._wire import fetch

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Serve `handler` on a free loopback port; yield the URL and the request heads seen."""
    heads: list[bytes] = []

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        original = reader.readuntil

        async def readuntil(separator: bytes = b"\n") -> bytes:
            data = await original(separator)
            if separator == b"\r\n\r\n":
                heads.append(data)
            return data

        reader.readuntil = readuntil  # type: ignore[method-assign,assignment]
        await connection(reader, writer)

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def client(**timeouts: float | None) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=4.0)
    timeout = httpx.Timeout(5.0, **timeouts)
    return httpx.AsyncClient(transport=HttptoolsTransport(limits=limits), timeout=timeout)


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
HEAD_CHUNKED += b"transfer-encoding: chunked\r\n\r\n"


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive: answer every request on the connection with a small chunked body."""
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD_CHUNKED + chunked(b'{"a":1}\n', b'{"b":2}\n'))
        await writer.drain()


async def test_a_body_is_read_and_the_connection_reused() -> None:
    async with upstream(answer_each) as (url, heads), client() as http:
        for _ in range(3):
            response = await http.get(url + "/api/tags?x=1")
            assert response.status_code == 200
            assert response.content == b'{"a":1}\n{"b":2}\n'
            assert response.headers["content-type"] == "application/x-ndjson"
    assert len(heads) == 3
    assert heads[0].startswith(b"GET /api/tags?x=1 HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:" in heads[0].lower()


async def test_the_chunks_of_one_read_arrive_as_one_piece() -> None:
    async def three_chunks_at_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD_CHUNKED + chunked(b"1\n", b"2\n", b"3\n")[:-5])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")

    async with (
        upstream(three_chunks_at_once) as (url, _),
        client() as http,
        http.stream("GET", url) as response,
    ):
        pieces = [piece async for piece in response.aiter_raw()]
    assert pieces == [b"1\n2\n3\n"]


async def test_a_body_that_ends_with_the_connection_is_whole() -> None:
    connections = 0

    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n1\n2\n")

    async with upstream(close_delimited) as (url, _), client() as http:
        for _ in range(2):
            response = await http.get(url)
            assert response.content == b"1\n2\n"
    # Its connection is gone with it: the next request opens another.
    assert connections == 2


BODY_CUT = "^peer closed connection without sending complete message body$"


@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        (b"", httpx.RemoteProtocolError, r"^Server disconnected without sending a response\.$"),
        (HEAD_CHUNKED + b"5\r\n12", httpx.RemoteProtocolError, BODY_CUT),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12", httpx.RemoteProtocolError, BODY_CUT),
        (b"NOT HTTP\r\n\r\n", httpx.RemoteProtocolError, "^upstream sent a malformed response: "),
    ],
)
async def test_a_broken_response_raises_httpx_errors(
    reply: bytes, error: type[Exception], text: str
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)

    async with upstream(broken) as (url, _), client() as http:
        with pytest.raises(error, match=text):
            await http.get(url)


async def test_informational_responses_are_skipped_and_head_has_no_body() -> None:
    async def head_and_continue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(5)
        else:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n")
            writer.write(b"content-length: 2\r\n\r\nok")

    async with upstream(head_and_continue) as (url, _), client() as http:
        head = await asyncio.wait_for(http.head(url), 3)
        assert head.status_code == 200
        assert head.content == b""
        created = await http.post(url, content=b"x")
        assert (created.status_code, created.content) == (201, b"ok")


async def test_timeouts_and_refused_connections_raise_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    async with upstream(silent) as (url, _), client(read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url)
    with socket_closed_port() as port:
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/")
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("https://127.0.0.1:1/")


class socket_closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


async def test_a_streamed_request_body_is_sent_chunked() -> None:
    received: list[bytes] = []

    async def read_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    async def parts() -> AsyncIterator[bytes]:
        # 12 and 16 bytes: sizes that read differently in hexadecimal (c, 10) and decimal.
        yield b"hello, world"
        yield b""
        yield b"0123456789abcdef"

    async with upstream(read_body) as (url, heads), client() as http:
        response = await http.post(url, content=parts())
    assert response.status_code == 200
    assert b"transfer-encoding: chunked" in heads[0].lower()
    assert received == [b"c\r\nhello, world\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"]


async def test_a_response_with_connection_close_is_not_reused() -> None:
    connections = 0

    async def close_announced(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        # It says close but leaves the socket open, and would answer a second request: only
        # the header tells the client not to send one.
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async with upstream(close_announced) as (url, heads), client() as http:
        for _ in range(3):
            response = await http.get(url)
            assert response.content == b"ok"
    assert len(heads) == connections == 3


async def test_the_pool_waits_for_a_free_connection_and_times_out() -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    transport = HttptoolsTransport(limits=limits)
    async with (
        upstream(answer_each) as (url, heads),
        httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=0.2)) as http,
    ):
        async with http.stream("GET", url) as first:
            with pytest.raises(httpx.PoolTimeout):
                await http.get(url)
            await first.aread()
        # Released: the next request gets the one connection back.
        assert (await http.get(url)).status_code == 200
    assert len(heads) == 2


async def test_an_unread_body_closes_its_connection_and_a_slow_reader_pauses_the_socket() -> None:
    sent = asyncio.Event()
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD_CHUNKED)
        block = b"x" * 65536
        try:
            for _ in range(200):  # 13 MB at most: the transport must stop reading well before
                writer.write(chunked(block)[:-5])
                await asyncio.wait_for(writer.drain(), 1)
        except (TimeoutError, ConnectionError):
            pass
        sent.set()
        try:
            await reader.read()  # EOF, or a reset (it left data unread), once the client closes
        finally:
            closed.set()

    transport = HttptoolsTransport()
    async with upstream(endless) as (url, _), httpx.AsyncClient(transport=transport) as http:
        async with http.stream("GET", url) as response:
            stream = response.aiter_raw()
            first = await anext(stream)
            await asyncio.wait_for(sent.wait(), 10)
            (pool,) = transport.pools.values()
            assert pool.active == 1
        await asyncio.wait_for(closed.wait(), 5)
    assert first
    assert READ_HIGH_WATER < 1 << 20


async def test_the_sidecar_cancels_an_upstream_when_its_client_leaves() -> None:
    """The stale-connection retry and disconnects, end to end through a real sidecar."""
    closed = asyncio.Event()
    requests = 0

    async def first_drops_then_streams(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        if requests == 1:
            return  # closed with no response: what a stale pooled connection looks like
        writer.write(HEAD_CHUNKED + chunked(b'{"response":"a","done":false}\n')[:-5])
        await writer.drain()
        await reader.read()
        closed.set()

    async with upstream(first_drops_then_streams) as (url, _):
        with serve(create_proxy(upstream=url, dialect="ollama")) as bridge:
            stream = await fetch(
                bridge + "/api/generate",
                headers={"accept": "text/event-stream"},
                stop_after_events=1,
                deadline=5,
            )
            assert json.loads(stream.events[0].data) == {"token": "a"}
            await asyncio.wait_for(closed.wait(), 2)
    assert requests == 2


async def test_a_body_larger_than_the_socket_buffers_waits_for_the_upstream() -> None:
    """Backpressure on the request side: writes pause until the upstream reads again."""
    size = 8 * 1024 * 1024

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.3)  # the client's writes fill the buffers meanwhile
        body = await reader.readexactly(size)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%d" % (len(str(len(body))), len(body))
        )

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * (1024 * 1024)

    transport = HttptoolsTransport()
    async with upstream(slow_reader) as (url, _), client() as http:
        response = await http.post(url, content=parts(), headers={"content-length": str(size)})
    assert response.content == str(size).encode()
    await transport.aclose()


async def test_a_reset_or_a_closed_connection_raises_httpx_errors() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD_CHUNKED + b"5\r\nhello\r\n")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async def parts() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(0.3)  # the upstream has closed by now
        for _ in range(50):
            yield b"x" * 65536

    async with upstream(reset) as (url, _), client() as http:
        with pytest.raises(httpx.ReadError):
            async with http.stream("GET", url) as response:
                await response.aread()
    async with upstream(close_at_once) as (url, _), client() as http:
        with pytest.raises((httpx.WriteError, httpx.RemoteProtocolError)):
            await http.post(url, content=parts())


async def test_a_waiting_request_gets_the_connection_a_finished_one_releases() -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    transport = HttptoolsTransport(limits=limits)
    async with (
        upstream(answer_each) as (url, heads),
        httpx.AsyncClient(transport=transport) as http,
    ):
        async with http.stream("GET", url) as first:
            second = asyncio.ensure_future(http.get(url))
            await asyncio.sleep(0.05)
            assert not second.done()  # waiting for the pool
            await first.aread()
        assert (await asyncio.wait_for(second, 5)).status_code == 200
    assert len(heads) == 2


async def test_open_frames_the_body_and_names_the_host() -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            received.append(head)
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            received.append(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    transport = HttptoolsTransport()
    async with upstream(record) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        timeouts: dict[str, float | None] = {"connect": 5, "read": 5, "write": 5, "pool": 5}
        for method, content in [("POST", b""), ("POST", b"abc"), ("GET", b"")]:
            answer = await transport.open(
                "127.0.0.1", port, method, b"/x", [(b"x-a", b"1")], content, timeouts
            )
            assert answer.status_code == 204
            assert await answer.read() == b""
            await answer.aclose()
    await transport.aclose()
    heads = received[0::2]
    assert heads[0].startswith(b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n" % port)
    assert b"content-length: 0\r\n" in heads[0]
    assert b"content-length: 3\r\n" in heads[1]
    assert received[3] == b"abc"
    assert b"content-length" not in heads[2]


def late(answer: bytes, *, then_close: bool = False) -> Handler:
    """An upstream that answers only after the sidecar has committed its own 200 stream."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.4)
        writer.write(answer)
        await writer.drain()
        if not then_close:
            await reader.read()

    return handler


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (HEAD_CHUNKED + chunked(b'{"response":"a","done":false}\n'), {"token": "a"}),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n"
            + b'{"response":"'
            + b"x" * 26,
            "upstream connection lost",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 300\r\n\r\n"
            + b'{"response":"'
            + b"x" * 273
            + b'","done":true}',
            "upstream answered with JSON over 200 bytes",
        ),
    ],
)
async def test_an_answer_after_the_commit_is_fitted_into_the_stream(
    answer: bytes, expected: dict[str, str] | str
) -> None:
    async with upstream(late(answer, then_close=True)) as (url, _):
        app = create_proxy(upstream=url, dialect="ollama", commit_after=0.05, max_line_bytes=200)
        with serve(app) as bridge:
            stream = await fetch(
                bridge + "/api/generate",
                body=b'{"model":"m"}',
                headers={"accept": "text/event-stream"},
                deadline=5,
            )
    assert stream.status == 200
    assert stream.time_to_headers is not None
    first = json.loads(stream.events[0].data)
    if isinstance(expected, dict):
        assert first == expected
    else:
        assert first["error"].startswith(expected)


async def test_idle_connections_are_kept_without_a_limit_and_none_with_a_zero_limit() -> None:
    for keep, expected in [(None, 1), (0, 0)]:
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=keep)
        transport = HttptoolsTransport(limits=limits)
        async with (
            upstream(answer_each) as (url, _),
            httpx.AsyncClient(transport=transport) as http,
        ):
            assert (await http.get(url)).status_code == 200
            (pool,) = transport.pools.values()
            assert len(pool.idle) == expected
