"""A raw-socket HTTP/1.1 streaming client that timestamps every read and counts events.

No HTTP library sits between the socket and the clock: an asyncio protocol gets each read as the
kernel hands it over, a tiny chunked decoder takes the framing off, and events are counted by
their terminators (``\\n`` for NDJSON, a blank line for SSE, which sse-starlette writes as
``\\r\\n\\r\\n``) with ``bytes.count``, so that the client costs a few microseconds per read
rather than per byte. Exact parsing happens afterwards, on a kept copy of the body, when the
caller asks for it.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from typing import cast

HOST = "127.0.0.1"
# The sidecar answers 503 past max_streams (1,000 by default); the sweep goes past that. Here, not
# in _fleet.py: _stream_servers.py runs with an earlier checkout's sse_bridge too (--before), so
# it imports nothing that reaches into the package's private modules.
SIDECAR_MAX_STREAMS = 4000


class ProtocolError(Exception):
    pass


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoding: ``feed(data)`` returns body bytes."""

    def __init__(self) -> None:
        self._pending = b""
        self._left = 0  # data bytes still to come in the current chunk
        self._skip = 0  # CRLF bytes still to skip after a chunk's data
        self.chunks = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self._pending:
            data, self._pending = self._pending + data, b""
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self._left:
                take = min(self._left, end - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._skip = 2
            elif self._skip:
                take = min(self._skip, end - pos)
                pos += take
                self._skip -= take
            else:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    self._pending = data[pos:]
                    break
                try:
                    size = int(data[pos:line_end].split(b";", 1)[0], 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {data[pos:line_end]!r}") from None
                pos = line_end + 2
                if size == 0:
                    # The trailer section is empty in every response here: nothing to read.
                    self.done = True
                else:
                    self._left = size
                    self.chunks += 1
        return b"".join(out)


class EventCounter:
    """Counts event terminators (``\\n``, ``\\n\\n`` or ``\\r\\n\\r\\n``) across chunk boundaries.

    Only the part of the body after the last terminator that could still begin one is carried
    over to the next call, so that nothing is counted twice.
    """

    def __init__(self, terminator: bytes) -> None:
        self.terminator = terminator
        self._tail = b""

    def count(self, body: bytes) -> int:
        term = self.terminator
        if len(term) == 1:
            return body.count(term)
        data = self._tail + body if self._tail else body
        found = data.count(term)
        last = data.rfind(term) + len(term) if found else 0
        start = max(last, len(data) - len(term) + 1)
        tail = data[start:]
        while tail and not term.startswith(tail):
            tail = tail[1:]
        self._tail = tail
        return found


def raise_fd_limit() -> None:
    """Allow as many open sockets as the hard limit does: 1,000 streams need 2,000 or more."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    """A request as a browser's fetch to an event stream would send it."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Accept: text/event-stream"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class StreamResult:
    status: int = 0
    content_type: str = ""
    started: float = 0.0  # perf_counter() before connecting
    first_event: float | None = None
    ended: float | None = None
    events: int = 0
    reads: int = 0
    chunks: int = 0
    event_times: list[float] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)


class StreamProtocol(asyncio.Protocol):
    """One request, one streamed response; see :func:`open_stream`."""

    def __init__(
        self,
        request: bytes,
        *,
        terminator: bytes,
        keep_body: bool,
        keep_times: bool,
        started: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.keep_body = keep_body
        self.keep_times = keep_times
        self.result = StreamResult(started=started)
        self.first_event: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[StreamResult] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._decoder: ChunkedDecoder | None = None
        self._counter = EventCounter(terminator)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        result = self.result
        result.reads += 1
        try:
            if self._decoder is None:
                data = self._read_head(data)
                if self._decoder is None:
                    return
            body = self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if self.keep_body:
            result.body.append(body)
        events = self._counter.count(body)
        if events:
            result.events += events
            if self.keep_times:
                result.event_times.extend([now] * events)
            if result.first_event is None:
                result.first_event = now
                if not self.first_event.done():
                    self.first_event.set_result(None)
        if self._decoder.done:
            result.ended = now
            result.chunks = self._decoder.chunks
            if not self.finished.done():
                self.finished.set_result(result)
            assert self.transport is not None
            self.transport.close()

    def _read_head(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self._head[:end].decode("latin-1"), self._head[end + 4 :]
        status_line, *header_lines = head.split("\r\n")
        self.result.status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.result.content_type = headers.get("content-type", "")
        if self.result.status != 200 or headers.get("transfer-encoding") != "chunked":
            raise ProtocolError(f"expected a 200 chunked stream, got: {head!r} {rest[:300]!r}")
        self._decoder = ChunkedDecoder()
        return rest

    def _fail(self, exc: Exception) -> None:
        for future in (self.first_event, self.finished):
            if not future.done():
                future.set_exception(exc)
                # Mark it retrieved: a caller waiting on only one of the two must not get
                # "exception was never retrieved" for the other.
                future.exception()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self._fail(ConnectionError(f"connection closed before the stream ended: {exc!r}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_stream(
    port: int,
    request: bytes,
    *,
    terminator: bytes,
    keep_body: bool = False,
    keep_times: bool = False,
) -> StreamProtocol:
    """Connect, send ``request`` and return the protocol; await its ``finished`` for the end."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    _, protocol = await loop.create_connection(
        lambda: StreamProtocol(
            request,
            terminator=terminator,
            keep_body=keep_body,
            keep_times=keep_times,
            started=started,
        ),
        HOST,
        port,
    )
    return protocol
