"""Small ASGI helpers shared by the proxy and the sidecar's front layer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._types import Send

STATS_KEY = "sse_bridge.stats"
# Set by the middleware on the scope it hands the app: True when a 200 NDJSON response will be
# converted into an event stream.
EVENT_STREAM_KEY = "sse_bridge.event_stream"
# Set with it when the client itself named text/event-stream in Accept (not only convert="always").
ACCEPTS_EVENTS_KEY = "sse_bridge.accepts_event_stream"
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    """The first value of a header (names compared case-insensitively), or ""."""
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def media_type(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The Content-Type without its parameters, lower-cased: "application/x-ndjson"."""
    return header(headers, b"content-type").split(";")[0].strip().lower()


def without_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including any the Connection header names."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


async def send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


@dataclass
class StreamStats:
    """What one request did, filled in by the layers that know, logged when it ends."""

    started: float = field(default_factory=time.monotonic)
    status: int = 0
    events: int = 0
    bytes: int = 0
    first_event: float | None = None
    outcome: str | None = None

    def settle(self, outcome: str) -> None:
        """Record how the stream ended, unless a layer that knew more already did."""
        if self.outcome is None:
            self.outcome = outcome
