"""The in-process store: every stream's events in this process's memory, within two bounds.

One stream keeps at most ``max_stream_bytes`` of events and all streams together ``max_bytes``;
past either, the oldest events go first, those of finished streams before those of live ones.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from itertools import islice

import anyio

from sse_bridge._core.validate import check_count, check_seconds
from sse_bridge._resume.store import (
    ATTENDED_FOR,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_STREAM_BYTES,
    DEFAULT_TTL,
    BadPositionError,
    Batch,
    EventsGoneError,
    UnknownStreamError,
    new_stream_id,
)


class _MemoryRecording:
    __slots__ = (
        "bound_to",
        "changed",
        "ended",
        "ended_at",
        "events",
        "first",
        "left_at",
        "readers",
        "size",
        "sizes",
        "stop",
        "store",
        "stream_id",
    )

    def __init__(
        self,
        store: MemoryStore,
        stream_id: str,
        stop: Callable[[], None],
        bound_to: str | None = None,
    ) -> None:
        self.store = store
        self.stream_id = stream_id
        self.bound_to = bound_to
        self.stop: Callable[[], None] | None = stop
        self.events: deque[bytes] = deque()
        # The sequence number of events[0]; the first event of a stream is 1.
        self.first = 1
        self.size = 0
        self.ended = False
        self.ended_at = 0.0
        self.readers = 0
        self.left_at = -ATTENDED_FOR
        # Made when a reader waits; set (and dropped) at the next append or at the end.
        self.changed: anyio.Event | None = None

    @property
    def last(self) -> int:
        return self.first + len(self.events) - 1

    def append(self, events: list[bytes]) -> None:
        if self.ended or not events:
            return
        self.events.extend(events)
        # Most reads carry one event: a fifth of what recording costs, without the sum.
        added = len(events[0]) if len(events) == 1 else sum(map(len, events))
        self.size += added
        store = self.store
        store.total += added
        if self.size > store.max_stream_bytes or store.total > store.max_bytes:
            store.make_room(self)
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    def drop_oldest(self) -> None:
        size = len(self.events.popleft())
        self.first += 1
        self.size -= size
        self.store.total -= size

    def finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.stop = None
        self.ended_at = time.monotonic()
        self.store.ended(self)
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    async def attended(self) -> bool:
        # A reader that came and went since the owner last asked counts too.
        return self.readers > 0 or time.monotonic() - self.left_at < ATTENDED_FOR


class _MemoryFollower:
    __slots__ = ("closed", "next_seq", "recording")

    def __init__(self, recording: _MemoryRecording, after: int) -> None:
        self.recording = recording
        self.next_seq = after + 1
        self.closed = False
        recording.readers += 1

    async def next(self, wait: float) -> Batch | None:
        recording = self.recording
        while True:
            if self.next_seq < recording.first:
                raise EventsGoneError(self.next_seq - 1, recording.first)
            last = recording.last
            if self.next_seq <= last:
                start = self.next_seq
                self.next_seq = last + 1
                # Counted from the end: a follower at the top of a long stream reads its few
                # new events without walking the deque from the oldest (docs/benchmarks.md).
                newest = list(islice(reversed(recording.events), last - start + 1))
                newest.reverse()
                return list(enumerate(newest, start))
            if recording.ended:
                return None
            if recording.changed is None:
                recording.changed = anyio.Event()
            with anyio.move_on_after(wait):
                await recording.changed.wait()
                continue
            return []

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.recording.readers -= 1
            self.recording.left_at = time.monotonic()


class MemoryStore:
    """Streams kept in this process (the default store): one process, no persistence.

    Args:
        ttl: seconds a finished stream stays resumable.
        max_stream_bytes: events one stream keeps; past it, its oldest events go.
        max_bytes: events all streams keep; past it, the oldest finished streams go first, then
            the oldest events of the stream that is growing.
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        check_seconds("resume ttl", ttl, "how long a finished stream stays resumable")
        check_count("max_stream_bytes", max_stream_bytes, 1, "bytes of events one stream keeps")
        check_count("max_bytes", max_bytes, 1, "bytes of events all streams keep")
        self.ttl = ttl
        self.max_stream_bytes = max_stream_bytes
        self.max_bytes = max_bytes
        self.total = 0
        self.streams: dict[str, _MemoryRecording] = {}
        # Finished streams, oldest first (dicts keep insertion order).
        self.finished: dict[str, _MemoryRecording] = {}

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def record(self, stop: Callable[[], None], bound_to: str | None = None) -> _MemoryRecording:
        self.expire()
        recording = _MemoryRecording(self, new_stream_id(), stop, bound_to)
        self.streams[recording.stream_id] = recording
        return recording

    async def follow(self, stream_id: str, after: int) -> _MemoryFollower:
        recording = self.find(stream_id)
        if recording.ended and after > recording.last:
            raise BadPositionError(
                f"stream {stream_id!r} sent {recording.last} events, so none after {after}"
            )
        if after + 1 < recording.first:
            raise EventsGoneError(after, recording.first)
        return _MemoryFollower(recording, after)

    async def bound_to(self, stream_id: str) -> str | None:
        return self.find(stream_id).bound_to

    async def finished_at(self, stream_id: str, after: int) -> bool:
        recording = self.find(stream_id)
        return recording.ended and after == recording.last

    async def stop(self, stream_id: str) -> None:
        recording = self.find(stream_id)
        stop, recording.stop = recording.stop, None
        if stop is not None:
            stop()

    async def finish_orphan(self, stream_id: str, last_seq: int, events: list[bytes]) -> None:
        # In one process the owner cannot die without the store; kept for the protocol.
        recording = self.find(stream_id)
        if not recording.ended and recording.last == last_seq:
            recording.append(events)
            recording.finish()

    def find(self, stream_id: str) -> _MemoryRecording:
        self.expire()
        recording = self.streams.get(stream_id)
        if recording is None:
            raise UnknownStreamError(stream_id)
        return recording

    def ended(self, recording: _MemoryRecording) -> None:
        self.finished[recording.stream_id] = recording

    def expire(self) -> None:
        deadline = time.monotonic() - self.ttl
        while self.finished:
            oldest = next(iter(self.finished.values()))
            if oldest.ended_at > deadline:
                return
            self.forget(oldest)

    def forget(self, recording: _MemoryRecording) -> None:
        del self.finished[recording.stream_id]
        del self.streams[recording.stream_id]
        self.total -= recording.size

    def make_room(self, growing: _MemoryRecording) -> None:
        while growing.size > self.max_stream_bytes and len(growing.events) > 1:
            growing.drop_oldest()
        while self.total > self.max_bytes and self.finished:
            self.forget(next(iter(self.finished.values())))
        while self.total > self.max_bytes and len(growing.events) > 1:
            growing.drop_oldest()
