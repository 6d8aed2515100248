"""Read an HTTP response off a real socket, timestamping every read.

No block-buffering reader sits in between (FIELD_NOTES: `requests`' iter_lines lags a line and
geventhttpclient waits for 1024 bytes), so what is measured is what the server wrote and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import h11

from sse_bridge._sse_parser import ParsedEvent, SSEParser


@dataclass
class Arrival:
    at: float
    events: list[ParsedEvent]


@dataclass
class WireResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reads: list[Arrival] = field(default_factory=list)
    started: float = 0.0
    complete: bool = False
    parser: SSEParser = field(default_factory=SSEParser)

    @property
    def events(self) -> list[ParsedEvent]:
        return [event for arrival in self.reads for event in arrival.events]

    @property
    def event_times(self) -> list[float]:
        return [arrival.at for arrival in self.reads for _ in arrival.events]


async def fetch(
    url: str,
    *,
    method: str = "POST",
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    stop_after_events: int | None = None,
    deadline: float = 10.0,
) -> WireResponse:
    """Send one request and read the response as it arrives (chunked framing undone by h11)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    assert host.startswith("127."), "tests talk to loopback only"
    request_headers = {
        "host": f"{host}:{port}",
        "content-length": str(len(body)),
        **(headers or {}),
    }
    connection = h11.Connection(h11.CLIENT)
    response = WireResponse(started=time.monotonic())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        writer.write(
            connection.send(
                h11.Request(
                    method=method, target=target or "/", headers=list(request_headers.items())
                )
            )
            + (connection.send(h11.Data(data=body)) or b"")
            + (connection.send(h11.EndOfMessage()) or b"")
        )
        with anyio.fail_after(deadline):
            while True:
                data = await reader.read(65536)
                now = time.monotonic()
                connection.receive_data(data)
                events: list[ParsedEvent] = []
                while True:
                    try:
                        event = connection.next_event()
                    except h11.RemoteProtocolError:
                        # The server dropped the connection mid-body: `complete` stays False.
                        return response
                    if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                        break
                    if isinstance(event, h11.Response):
                        response.status = event.status_code
                        response.headers = {k.decode(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        response.body += event.data
                        events += response.parser.feed(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        response.complete = True
                if data:
                    response.reads.append(Arrival(now, events))
                if response.complete or not data:
                    return response
                if stop_after_events is not None and len(response.events) >= stop_after_events:
                    return response
    finally:
        # Close for real before returning: a caller that then blocks its loop must not keep
        # the connection open by accident.
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
