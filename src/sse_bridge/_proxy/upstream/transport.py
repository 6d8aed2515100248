"""A fast httpx transport for the proxy's one upstream: asyncio protocols and httptools.

httpx's default transport (httpcore on anyio streams, h11 in pure Python) spends tens of
microseconds of Python per response chunk, several times what the rest of the bridge spends per
event (docs/benchmarks.md). Here one upstream socket read is one protocol callback, one call
into httptools' C parser, and one wake-up of the task that waits for the body: every body chunk
that arrived in that read is handed over joined, as one piece.

It is an ``httpx.AsyncBaseTransport``, so the proxy builds requests, applies timeouts and handles
failures exactly as with httpx's own transport, and gets httpx's exceptions. Scope: plain
``http://`` HTTP/1.1 to one upstream, a keep-alive pool with an expiry, the connect, read, write
and pool timeouts of each request, request bodies of known length or streamed (chunked).

Here: the pool, the request, and the answer's body; one connection, its protocol and its parser,
are ``connection.py``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import httpx

from sse_bridge._core.headers import request_framing
from sse_bridge._proxy.upstream.connection import Connection, wait_within


class _Body(httpx.AsyncByteStream):
    """The response body: each item is every body byte that arrived since the last one."""

    __slots__ = (
        "closed",
        "connection",
        "read_timeout",
    )

    def __init__(self, connection: Connection, read_timeout: float | None) -> None:
        self.connection = connection
        self.read_timeout = read_timeout
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def read(self) -> bytes:
        """Every body byte that arrived since the last call, waiting for one; b"" at the end."""
        connection = self.connection
        while True:
            if connection.chunks:
                return connection.take()
            if connection.response.complete:
                return b""
            if connection.error is not None:
                raise connection.error
            await connection.wait(self.read_timeout)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        connection = self.connection
        if not (connection.response.complete and not connection.chunks):
            # Not read to its end (the client left, or a failure): the connection cannot be
            # reused, and closing it is what tells the upstream to stop generating.
            connection.close()
        self.connection.pool.release(connection)


class Pool:
    """Keep-alive connections to one host and port, at most ``max_connections`` at once."""

    def __init__(self, host: str, port: int, limits: httpx.Limits) -> None:
        self.host = host
        self.port = port
        self.max_connections = limits.max_connections
        self.max_idle = limits.max_keepalive_connections
        self.expiry = limits.keepalive_expiry
        self.idle: deque[Connection] = deque()
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeouts: dict[str, float | None]) -> Connection:
        loop = asyncio.get_running_loop()
        while self.max_connections is not None and self.active >= self.max_connections:
            waiter = loop.create_future()
            self.waiters.append(waiter)
            try:
                await wait_within(waiter, timeouts.get("pool"), httpx.PoolTimeout)
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        self.active += 1
        try:
            return self.reuse() or await self.connect(timeouts.get("connect"))
        except BaseException:
            self.active -= 1
            self.wake_one()
            raise

    def reuse(self) -> Connection | None:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()  # the most recently used: the least likely to expire
            if connection.alive and (
                self.expiry is None or now - connection.idle_since < self.expiry
            ):
                return connection
            connection.close()
        return None

    async def connect(self, timeout: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self), self.host, self.port),
                timeout,
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout("timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return connection

    def release(self, connection: Connection) -> None:
        self.active -= 1
        room = self.max_idle is None or len(self.idle) < self.max_idle  # None: no limit, as httpx
        if connection.alive and room:
            connection.idle_since = time.monotonic()
            connection.headers_ready = None
            self.idle.append(connection)
        else:
            connection.close()
        self.wake_one()

    def forget(self, connection: Connection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    def wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class UpstreamResponse:
    """An answer as the proxy reads it: status, raw headers, and the body as it arrives."""

    __slots__ = ("_body", "raw_headers", "status_code")

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]], body: _Body):
        self.status_code = status_code
        self.raw_headers = raw_headers
        self._body = body

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self._body.__aiter__()

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); b"" at the end."""
        return await self._body.read()

    async def aclose(self) -> None:
        await self._body.aclose()


class HttptoolsTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 transport for ``httpx.AsyncClient(transport=...)`` (one pool per origin).

    :meth:`open` is the same without httpx's request and response objects, for the proxy: a
    stream's setup then costs a fraction of what httpx's client machinery costs per request.

    Args:
        limits: the pool's size, the idle connections kept and their expiry, as for httpx.
    """

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        self.limits = limits or httpx.Limits()
        self.pools: dict[tuple[str, int], Pool] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"this transport speaks plain http, not {url.scheme}")
        stream = request.stream
        content: bytes | AsyncIterable[bytes]
        if isinstance(stream, httpx.ByteStream):
            content = b"".join(stream)
        else:
            assert isinstance(stream, httpx.AsyncByteStream)
            content = stream
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        connection, body = await self.exchange(
            url.host,
            url.port or 80,
            request.method,
            url.raw_path,
            request.headers.raw,
            content,
            timeouts,
        )
        response = connection.response
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
        )

    async def open(
        self,
        host: str,
        port: int,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterable[bytes],
        timeouts: dict[str, float | None],
    ) -> UpstreamResponse:
        """Send one request; return once the answer's headers are in.

        ``headers`` go as they are, after ``Host`` and the body's framing: a ``Content-Length``
        for a ``bytes`` body, ``Transfer-Encoding: chunked`` for an iterable; they must carry
        no framing of their own (the proxy's never do).
        Errors are httpx's.
        """
        netloc = host.encode("idna") if port == 80 else b"%s:%d" % (host.encode("idna"), port)
        length = len(content) if isinstance(content, bytes) else None
        framing = request_framing(netloc, method, length)
        connection, body = await self.exchange(
            host, port, method, target, framing + headers, content, timeouts
        )
        return UpstreamResponse(connection.response.status, connection.response.headers, body)

    async def exchange(
        self,
        host: str,
        port: int,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterable[bytes],
        timeouts: dict[str, Any],
    ) -> tuple[Connection, _Body]:
        key = (host, port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(host, port, self.limits)
        connection = await pool.acquire(timeouts)
        try:
            headers_ready = connection.start(method == "HEAD")
            await self.send_request(
                connection, method, target, headers, content, timeouts.get("write")
            )
            await wait_within(headers_ready, timeouts.get("read"), httpx.ReadTimeout)
        except BaseException:
            connection.close()
            pool.release(connection)
            raise
        return connection, _Body(connection, timeouts.get("read"))

    async def send_request(
        self,
        connection: Connection,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterable[bytes],
        timeout: float | None,
    ) -> None:
        head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        chunked = False
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
            if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
                chunked = True
        head.append(b"\r\n")
        if isinstance(content, bytes):
            # The whole body is known: one write with the head.
            await connection.write(b"".join(head) + content, timeout)
            return
        await connection.write(b"".join(head), timeout)
        async for chunk in content:
            if chunk:
                data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
                await connection.write(data, timeout)
        if chunked:
            await connection.write(b"0\r\n\r\n", timeout)

    async def aclose(self) -> None:
        for pool in self.pools.values():
            pool.close()
