"""The per-stream contract: the :class:`StreamContext` every layer of one request shares.

The front layer makes it, the middleware says whether it converts, the proxy reads that, and
each fills in what it knows; the metrics read it at the end. Also the scope keys it travels
under, the NDJSON media types and the histogram buckets the gaps between events are counted in.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

# The one contract between the layers of a request (front layer, middleware, proxy): a
# StreamContext on the scope under this key.
STREAM_KEY = "sse_bridge.stream"
# Set by the middleware on the scope it hands the app: True when a 200 NDJSON response will be
# converted into an event stream (documented for apps; the layers read the StreamContext).
EVENT_STREAM_KEY = "sse_bridge.event_stream"
# An ASGI extension a server may offer (``sse-bridge serve`` does): ``{"abort": callable}``,
# which drops the client's connection at once, unsent bytes and all. A stalled client is cut
# off with it, so that the write it blocks returns and the usual disconnect follows.
ABORT_EXTENSION = "sse_bridge.abort"
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

# The metrics' histogram buckets, in seconds: from a millisecond (a token relayed at once) to two
# minutes (a long answer, a slow model load).
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


class Outcome(str, Enum):
    """How a request ended, as logged (``outcome=...``)."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TRUNCATED = "upstream_truncated"
    # Stopped on purpose, by a DELETE of its resume endpoint.
    STOPPED = "stopped"
    # Ended by the bridge's own shutdown (SIGTERM, after the grace period): not the upstream's
    # failure, so not in the error ratio.
    SHUTDOWN = "shutdown"
    # Ended by another instance, which took this one for dead (the Redis resume store): the
    # store refused the rest of it, and its client got a terminal error saying so.
    TAKEN_OVER = "taken_over"
    # Disconnected by the bridge: the client accepted no bytes for send_timeout seconds.
    CLIENT_STALLED = "client_stalled"


@dataclass(slots=True)
class StreamContext:
    """One request as its layers see it: the pipeline's contract, at ``scope[STREAM_KEY]``.

    The front layer makes it and logs it; the middleware says whether it will convert the
    response and whether it watches the client; the proxy (which knows no SSE) reads that to
    decide on an early commit, and hears of a disconnect through ``on_disconnect`` instead of
    watching ``receive()`` a second time. Each layer fills in what it knows.
    """

    started: float = field(default_factory=time.monotonic)
    status: int = 0
    events: int = 0
    bytes: int = 0
    first_event: float | None = None
    outcome: Outcome | None = None
    # The middleware will turn a 200 NDJSON response into an event stream.
    converting: bool = False
    # ...and the client itself named text/event-stream in Accept (not only convert="always").
    client_accepts_events: bool = False
    # The middleware watches the client once the request body is read, and calls this when it
    # leaves (so the app need not watch as well).
    watched: bool = False
    on_disconnect: Callable[[], None] | None = None
    # The resumable stream's id, when resume is on.
    stream_id: str | None = None
    # For metrics: when the upstream's response headers arrived (the proxy), keepalives sent,
    # why the upstream failed ("unreachable", "timeout", "broken", "status"), and why the
    # request was refused ("max_streams", "body_too_large", "unauthorized").
    upstream_headers: float | None = None
    keepalives: int = 0
    upstream_error: str | None = None
    refused: str | None = None
    # Gaps between events, counted per histogram bucket, when metrics are on (None: off).
    gaps: list[int] | None = None
    gap_sum: float = 0.0
    last_event: float | None = None

    def settle(self, outcome: Outcome) -> None:
        """Record how the stream ended, unless a layer that knew more already did."""
        if self.outcome is None:
            self.outcome = outcome

    def count_gaps(self, gaps: list[int], now: float, events: int) -> None:
        """Count the gaps before ``events`` events sent together at ``now`` (the hot path,
        with metrics on: a bucket search and two increments)."""
        last = self.last_event
        if last is not None:
            gap = now - last
            # Prometheus buckets are "less than or equal": bisect_left finds that bucket.
            gaps[bisect_left(BUCKETS, gap)] += 1
            self.gap_sum += gap
        # Events that leave in one body message follow each other without a gap.
        gaps[0] += events - 1
        self.last_event = now

    def final_outcome(self) -> Outcome:
        """How it ended; a request no layer settled ended by its status."""
        if self.outcome is None:
            self.settle(Outcome.COMPLETED if self.status < 400 else Outcome.UPSTREAM_ERROR)
        assert self.outcome is not None
        return self.outcome
