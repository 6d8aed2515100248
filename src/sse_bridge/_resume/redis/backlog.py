"""The bound on what waits for Redis over all streams: ``max_pending_bytes``.

While Redis is away each recording keeps its events for the writer (each within
``max_stream_bytes``). Without a total, 300 finished 1 MiB streams kept 292 MiB through an
outage. Past the bound, whole streams stop being resumable, the oldest finished ones first, then
the oldest live ones: their waiting events go, and their keys are deleted when Redis is back (a
resume then gets "unknown stream" rather than a stream with a hole). Live clients never notice:
what waits here is only the copy for resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

logger = logging.getLogger("sse_bridge")

DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024


class Droppable(Protocol):
    """A recording as the backlog sees it (``writer.RedisRecording``)."""

    ended: bool
    dropped: bool
    pending_bytes: int

    def drop(self) -> int: ...


class Backlog:
    """The bytes waiting for Redis over all of a store's streams, and their bound."""

    def __init__(self, limit: int, outages: Callable[[], int]) -> None:
        self.limit = limit
        self.outages = outages
        self.bytes = 0
        # Events dropped so far, and the hook the metrics set (sse_bridge_resume_dropped_total).
        self.dropped = 0
        self.on_dropped: Callable[[int], object] | None = None
        self.logged_in: int | None = None

    def grow(self, size: int) -> None:
        self.bytes += size

    def bound(self, recordings: Iterable[Droppable]) -> None:
        """Drop whole streams, oldest finished first, until the backlog is within its bound."""
        if self.bytes <= self.limit:
            return
        kept = [r for r in recordings if r.pending_bytes and not r.dropped]
        events = streams = 0
        for finished in (True, False):
            for recording in kept:
                if self.bytes <= self.limit:
                    break
                if recording.ended == finished and not recording.dropped:
                    events += recording.drop()
                    streams += 1
        self.dropped += events
        if self.on_dropped is not None:
            self.on_dropped(events)
        outage = self.outages()
        if self.logged_in != outage:
            # Once per outage: the count is in the metrics.
            self.logged_in = outage
            logger.warning(
                "sse_bridge: resume store backlog over max_pending_bytes=%d while Redis is away: "
                "%d stream(s) are no longer resumable (%d events dropped; live clients get "
                "every event); more may follow until Redis is back",
                self.limit,
                streams,
                events,
            )
