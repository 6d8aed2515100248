"""One connection to the upstream: an asyncio protocol that feeds httptools' C parser.

One socket read is one ``data_received`` call, one call into the parser and one wake-up of the
task that reads the body, which then takes every body byte of that read joined, as one piece. A
connection reads one response at a time, and tells its pool (``transport.py``) when it is lost.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import httptools
import httpx

from sse_bridge._core.headers import body_ends_with_close

# Body bytes held for a consumer that has not read them yet before the socket stops being read:
# the upstream then waits (TCP backpressure), as it would behind a slow client.
READ_HIGH_WATER = 16 * 1024
# The most body one read hands the consumer: what a stalled client's stream holds in flight
# between the upstream and the client's socket is a few of these (docs/reliability.md).
TAKE_LIMIT = 16 * 1024


class Pool(Protocol):
    """The pool that opened a connection, as the connection and its body see it."""

    def release(self, connection: Connection) -> None:
        """A response is over: keep the connection for the next request, unless it closed."""

    def forget(self, connection: Connection) -> None:
        """The connection is lost: it is never handed out again."""


class Response:
    """The state of the one response a connection is reading."""

    __slots__ = ("body_ends_with_close", "complete", "headers", "reason", "status")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        # No Content-Length and not chunked: the body ends when the connection closes.
        self.body_ends_with_close = False


class Connection(asyncio.Protocol):
    """One upstream connection; it reads one response at a time."""

    __slots__ = (
        "alive",
        "buffered",
        "chunks",
        "drained",
        "error",
        "head_request",
        "headers_ready",
        "idle_since",
        "loop",
        "parser",
        "paused",
        "pool",
        "response",
        "transport",
        "waiter",
        "write_paused",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.alive = True
        self.idle_since = 0.0
        self.response = Response()
        self.head_request = False
        self.headers_ready: asyncio.Future[None] | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            # httptools' HttpParserError and its subclasses, caught by their base: under pytest
            # with coverage the parser was seen raising an HttpParserError class other than
            # httptools.HttpParserError (its errors module loaded twice).
            self.fail(httpx.RemoteProtocolError(f"upstream sent a malformed response: {exc}"))
            return
        if len(self.chunks) > 1:
            # One piece per read rather than one per chunk of the chunked encoding (a token
            # each): a consumer that does not read, such as a stalled client's stream, holds
            # one object instead of hundreds scattered over the allocator's arenas.
            self.chunks = [b"".join(self.chunks)]
        if self.buffered > READ_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self.wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.pool.forget(self)
        response = self.response
        if self.headers_ready is None or response.complete:
            return  # idle, or its last response was whole
        if self.headers_ready.done() and response.body_ends_with_close and exc is None:
            response.complete = True
            self.wake()
            return
        if exc is not None:
            self.fail(httpx.ReadError(str(exc) or type(exc).__name__))
        elif self.headers_ready.done():
            self.fail(
                httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            )
        else:
            self.fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # httptools callbacks

    def on_status(self, status: bytes) -> None:
        self.response.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        response.status = self.parser.get_status_code()
        if 100 <= response.status < 200:
            return  # informational (say 100 Continue): the real response follows
        response.body_ends_with_close = body_ends_with_close(
            response.headers, response.status, self.head_request
        )
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_result(None)
        if self.head_request:
            # httptools does not know the request was HEAD and would wait for the body its
            # Content-Length announces: the response is whole now, and the connection unusable.
            response.complete = True
            self.alive = False

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        response = self.response
        if 100 <= response.status < 200:
            self.response = Response()
            return
        response.complete = True
        if not self.parser.should_keep_alive():
            self.alive = False

    # used by the pool and the body

    def fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self.alive = False
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            self.headers_ready.exception()  # retrieved: the request may be gone already
        self.wake()
        self.close()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def start(self, head_request: bool) -> asyncio.Future[None]:
        self.response = Response()
        self.head_request = head_request
        self.chunks = []
        self.buffered = 0
        self.headers_ready = self.loop.create_future()
        return self.headers_ready

    def take(self) -> bytes:
        data = self.chunks[0]
        if len(data) > TAKE_LIMIT:
            rest = data[TAKE_LIMIT:]
            data = data[:TAKE_LIMIT]
            self.chunks = [rest]
            self.buffered = len(rest)
        else:
            self.chunks = []
            self.buffered = 0
        if self.paused and self.buffered <= READ_HIGH_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.error is not None:
            raise self.error
        if self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("the upstream connection is closed")
        self.transport.write(data)
        if self.write_paused:
            self.drained = self.loop.create_future()
            try:
                await wait_within(self.drained, timeout, httpx.WriteTimeout)
            finally:
                self.drained = None
            if self.error is not None:
                raise self.error

    async def wait(self, timeout: float | None) -> None:
        """Wait until the response has more body, has ended, or failed."""
        self.waiter = self.loop.create_future()
        try:
            await wait_within(self.waiter, timeout, httpx.ReadTimeout)
        finally:
            self.waiter = None


async def wait_within(
    future: asyncio.Future[None], timeout: float | None, error: type[httpx.TimeoutException]
) -> None:
    if timeout is None:
        await future
        return
    # A timer handle rather than asyncio.wait_for, which would start a task per wait.
    handle = future.get_loop().call_later(timeout, _expire, future, error)
    try:
        await future
    finally:
        handle.cancel()


def _expire(future: asyncio.Future[None], error: type[httpx.TimeoutException]) -> None:
    if not future.done():
        future.set_exception(error("timed out"))
