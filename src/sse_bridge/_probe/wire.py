"""The probe's side of the wire: one HTTP/1.1 (h11) or HTTP/2 (h2) exchange, reads timestamped.

No block-buffering reader sits in between (``requests``' ``iter_lines`` lags a line;
geventhttpclient waits for 1024 bytes), so what is recorded is what the last hop wrote and when.
Each stream records the protocol its response actually came in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import h11

from sse_bridge._core.sse_parser import ParsedEvent, SSEParser

if TYPE_CHECKING:
    import h2.connection

# Headers HTTP/2 forbids (RFC 9113, 8.2.2); host travels as :authority.
_NOT_IN_HTTP2 = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"transfer-encoding",
        b"te",
    }
)


@dataclass
class Stream:
    """One response as it arrived. Times are seconds since the request was sent."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reads: list[float] = field(default_factory=list)
    events: list[ParsedEvent] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)
    time_to_headers: float | None = None
    # The HTTP version the response came in: "HTTP/1.1" (or "HTTP/1.0") or "HTTP/2".
    protocol: str | None = None
    complete: bool = False
    error: str | None = None
    parser: SSEParser = field(default_factory=SSEParser)

    @property
    def time_to_first_event(self) -> float | None:
        return self.event_times[0] if self.event_times else None


class _Body:
    """Turns a response's bytes into events as they arrive, timestamped with their read.

    Events are SSE events for ``text/event-stream`` and non-blank lines otherwise (NDJSON).
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.sse = False
        self.tail = b""

    def head(self, status: int, headers: dict[str, str], protocol: str, now: float) -> None:
        stream = self.stream
        stream.status = status
        stream.headers = headers
        stream.protocol = protocol
        stream.time_to_headers = now
        self.sse = headers.get("content-type", "").startswith("text/event-stream")

    def data(self, chunk: bytes, now: float) -> None:
        stream = self.stream
        stream.body += chunk
        if self.sse:
            new = stream.parser.feed(chunk)
        else:
            lines = (self.tail + chunk).split(b"\n")
            self.tail = lines.pop()
            new = [ParsedEvent(line.decode("utf-8", "replace")) for line in lines if line.strip()]
        stream.events += new
        stream.event_times += [now] * len(new)

    def end(self, now: float) -> None:
        if not self.sse and self.tail.strip():
            # A last NDJSON line without its newline is still a line.
            self.stream.events.append(ParsedEvent(self.tail.decode("utf-8", "replace")))
            self.stream.event_times.append(now)
        self.stream.complete = True


async def exchange_h1(
    connection: anyio.abc.ByteStream,
    request: h11.Request,
    body: bytes,
    stream: Stream,
    started: float,
    stop_after_events: int | None,
) -> None:
    """Send ``request`` and its body in HTTP/1.1, and read the response into ``stream``."""
    client = h11.Connection(h11.CLIENT)
    data = client.send(request) or b""
    if body:
        data += client.send(h11.Data(data=body)) or b""
    await connection.send(data + (client.send(h11.EndOfMessage()) or b""))
    receiver = _Body(stream)
    while True:
        try:
            data = await connection.receive(65536)
        except anyio.EndOfStream:
            data = b""
        now = time.monotonic() - started
        if data:
            stream.reads.append(now)
        client.receive_data(data)
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                stream.error = f"the connection closed mid-response ({exc})"
                return
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Response):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                protocol = f"HTTP/{event.http_version.decode()}"
                receiver.head(event.status_code, headers, protocol, now)
            elif isinstance(event, h11.Data):
                receiver.data(bytes(event.data), now)
            elif isinstance(event, h11.EndOfMessage):
                receiver.end(now)
                return
        if not data:
            return
        if stop_after_events is not None and len(stream.events) >= stop_after_events:
            return


async def exchange_h2(
    connection: anyio.abc.ByteStream,
    request: h11.Request,
    tls: bool,
    body: bytes,
    stream: Stream,
    started: float,
    stop_after_events: int | None,
) -> None:
    """The same exchange in HTTP/2: one stream on its own connection, read as it arrives."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    client = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, _h2_headers(request, tls, body), end_stream=not body)
    pending = _send_h2_body(client, stream_id, body)
    await connection.send(client.data_to_send())
    receiver = _Body(stream)
    head = b""  # the first bytes received: an HTTP/1 answer starts with b"HTTP/"
    spoke = False  # whether the server has sent a frame
    no_h2c = "it does not take HTTP/2 without TLS (prior knowledge): use https://, or HTTP/1.1"
    while True:
        try:
            data = await connection.receive(65536)
        except anyio.EndOfStream:
            if not spoke:
                stream.error = (
                    f"the server closed the connection without a word of HTTP/2; {no_h2c}"
                )
            elif stream.time_to_headers is None:
                stream.error = "the connection closed before the response"
            else:
                stream.error = "the connection closed mid-response (the HTTP/2 stream did not end)"
            return
        now = time.monotonic() - started
        head = (head + data)[:5]
        if not spoke and head.startswith(b"HTTP/"):
            # h2 would wait for the rest of a "frame" that long (b"HTT" is 4.7 MB).
            stream.error = f"the server answered in HTTP/1; {no_h2c}"
            return
        try:
            events = client.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            stream.error = f"HTTP/2 protocol error: {exc}"
            return
        spoke = spoke or bool(events)
        ours = False
        for event in events:
            # Frames of other streams are not ours; those of the connection (0) may be.
            if getattr(event, "stream_id", 0) not in (0, stream_id):
                continue
            if isinstance(event, h2.events.ResponseReceived):
                ours = True
                fields = {bytes(k).decode(): bytes(v).decode() for k, v in event.headers or ()}
                status = int(fields.pop(":status", "0"))
                receiver.head(status, fields, "HTTP/2", now)
            elif isinstance(event, h2.events.DataReceived):
                ours = True
                receiver.data(event.data or b"", now)
                # Hand the window back as data is consumed, or a long stream stalls at 64 KiB.
                client.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ours = True
                receiver.end(now)
            elif isinstance(event, h2.events.StreamReset):
                code = _h2_error(event.error_code)
                stream.error = f"the server reset the HTTP/2 stream ({code})"
            elif isinstance(event, h2.events.ConnectionTerminated) and not stream.complete:
                code = _h2_error(event.error_code)
                stream.error = f"the server closed the HTTP/2 connection (GOAWAY, {code})"
            elif isinstance(event, h2.events.WindowUpdated) and pending:
                pending = _send_h2_body(client, stream_id, pending)
        if ours:
            stream.reads.append(now)
        outgoing = client.data_to_send()
        if outgoing:
            await connection.send(outgoing)
        if stream.complete or stream.error:
            return
        if stop_after_events is not None and len(stream.events) >= stop_after_events:
            return


def _h2_headers(request: h11.Request, tls: bool, body: bytes) -> list[tuple[bytes, bytes]]:
    fields = dict(request.headers)
    pseudo = [
        (b":method", request.method),
        (b":scheme", b"https" if tls else b"http"),
        (b":authority", fields[b"host"]),
        (b":path", request.target),
    ]
    rest = [
        (name, value)
        for name, value in request.headers
        if name not in _NOT_IN_HTTP2 and not (name == b"content-length" and not body)
    ]
    return pseudo + rest


def _h2_error(code: int | None) -> str:
    import h2.errors

    try:
        return f"error code {code}, {h2.errors.ErrorCodes(code or 0).name}"
    except ValueError:  # a code HTTP/2 does not define
        return f"error code {code}"


def _send_h2_body(client: h2.connection.H2Connection, stream_id: int, body: bytes) -> bytes:
    """Send what flow control allows of ``body``, ending the stream with its last byte."""
    while body:
        size = min(
            len(body), client.local_flow_control_window(stream_id), client.max_outbound_frame_size
        )
        if size <= 0:
            break
        client.send_data(stream_id, body[:size], end_stream=size == len(body))
        body = body[size:]
    return body
