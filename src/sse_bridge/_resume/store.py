"""Resumable streams: what a store keeps of each generation, and the in-process store.

A converted stream gets an opaque id and its events are numbered 1, 2, 3, ... as the middleware
sends them. The owner (the request that runs the generation) appends every event to a
:class:`Recording`; readers on any request (and, with Redis, any instance) replay the events after
the one they last saw and then follow the live generation to its end. A store also carries the
stop of a generation from whoever asks for it to its owner.

This module knows no HTTP: the middleware turns the errors below into status codes.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Protocol, TypeGuard

import anyio

from sse_bridge._core.validate import check_count, check_seconds

# 16 random bytes (128 bits) as 22 URL-safe characters.
STREAM_ID_BYTES = 16
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{22}")
DEFAULT_TTL = 300.0
DEFAULT_MAX_STREAM_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# A reader counts as attending this long after it left: the owner asks once a second.
ATTENDED_FOR = 1.0

Batch = list[tuple[int, bytes]]
"""Events as (sequence number, encoded event)."""


class ResumeError(Exception):
    """A resume or a stop that cannot be served; ``status`` is the HTTP status that says why."""

    status = 500


class UnknownStreamError(ResumeError):
    status = 404

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"no stream {stream_id!r}: it never existed here or has expired")


class EventsGoneError(ResumeError):
    status = 410

    def __init__(self, after: int, first: int) -> None:
        super().__init__(
            f"the events after {after} are no longer kept (the oldest kept is {first}); "
            "start a new request"
        )


class StoreUnavailableError(ResumeError):
    status = 503


class BadPositionError(ResumeError):
    status = 400


class OwnerLostError(Exception):
    """The instance running the generation stopped before finishing it."""


class Recording(Protocol):
    """The owner's side of one generation: append its events in order, then finish it."""

    stream_id: str

    def append(self, events: list[bytes]) -> None:
        """Number and keep the events of one upstream read (sync: on the hot path)."""
        ...

    def finish(self) -> None:
        """The generation has ended; its last events are the terminal ones."""
        ...

    async def attended(self) -> bool:
        """Whether any reader follows the stream right now (on any instance)."""
        ...


class Follower(Protocol):
    """One reader of a stream, from a position on."""

    async def next(self, wait: float) -> Batch | None:
        """The events after those returned so far; ``[]`` if none came within ``wait``
        seconds; ``None`` once the stream has ended and every event was returned.

        Raises :class:`EventsGoneError` if the reader fell behind what is kept,
        :class:`OwnerLostError` if the generation's instance died, and
        :class:`StoreUnavailableError` if the store went away."""
        ...

    async def aclose(self) -> None: ...


class ResumeStore(Protocol):
    """Where streams are kept: :class:`MemoryStore` or ``RedisStore`` (the ``resume`` extra)."""

    async def open(self) -> None:
        """Connect; raise :class:`StoreUnavailableError` with a clear message if it cannot."""
        ...

    async def aclose(self) -> None: ...

    def record(self, stop: Callable[[], None]) -> Recording:
        """A new stream; ``stop`` is called (once, on the owner's event loop) to stop it."""
        ...

    async def follow(self, stream_id: str, after: int) -> Follower:
        """A reader from the event after ``after``; raises a :class:`ResumeError`."""
        ...

    async def finished_at(self, stream_id: str, after: int) -> bool:
        """True if the stream has ended and a reader at ``after`` has every event."""
        ...

    async def stop(self, stream_id: str) -> None:
        """Stop the generation (done already: nothing happens); raises a :class:`ResumeError`."""
        ...

    async def finish_orphan(self, stream_id: str, last_seq: int, events: list[bytes]) -> None:
        """End a stream whose owner died (after :class:`OwnerLostError`) with ``events``,
        numbered from ``last_seq + 1``; if another reader did so first, nothing happens."""
        ...


def new_stream_id() -> str:
    return secrets.token_urlsafe(STREAM_ID_BYTES)


def parse_position(value: str, stream_id: str | None) -> tuple[str | None, int]:
    """A ``Last-Event-ID`` (``<n>`` or ``<stream id>:<n>``) as (stream id or None, n).

    ``stream_id``, if given, is the stream the request names; an id of another stream in the
    value is an error. An empty value means from the start.
    """
    value = value.strip()
    if not value:
        return stream_id, 0
    named, colon, number = value.rpartition(":")
    if colon and stream_id is not None and named != stream_id:
        raise BadPositionError(f"Last-Event-ID {value!r} names another stream than {stream_id!r}")
    if not number.isdigit() or not number.isascii() or len(number) > 18:
        raise BadPositionError(
            f"Last-Event-ID must be <n> or <stream id>:<n> with n >= 0, not {value!r}"
        )
    return (named if colon else stream_id), int(number)


class _MemoryRecording:
    __slots__ = (
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

    def __init__(self, store: MemoryStore, stream_id: str, stop: Callable[[], None]) -> None:
        self.store = store
        self.stream_id = stream_id
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
                events = islice(recording.events, start - recording.first, None)
                self.next_seq = last + 1
                return list(enumerate(events, start))
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

    def record(self, stop: Callable[[], None]) -> _MemoryRecording:
        self.expire()
        recording = _MemoryRecording(self, new_stream_id(), stop)
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


def check_resume(resume: object) -> None:
    """Refuse a ``resume=`` value other than None, "memory", a Redis URL or a store object."""
    if resume is None or resume == "memory" or _is_redis_url(resume):
        return
    if not isinstance(resume, str) and all(
        hasattr(resume, name) for name in ("record", "follow", "stop", "finished_at")
    ):
        return
    raise ValueError(f"resume must be 'memory', a redis:// URL or a store object, not {resume!r}")


def _is_redis_url(resume: object) -> TypeGuard[str]:
    return isinstance(resume, str) and resume.startswith(("redis://", "rediss://", "unix://"))


def open_store(resume: object, *, ttl: float = DEFAULT_TTL) -> ResumeStore | None:
    """The store a ``resume=`` option names: None, "memory", a Redis URL, or a store object."""
    check_resume(resume)
    if resume is None:
        return None
    if resume == "memory":
        return MemoryStore(ttl=ttl)
    if _is_redis_url(resume):
        from sse_bridge._resume.redis.store import RedisStore

        return RedisStore(resume, ttl=ttl)
    return resume  # type: ignore[return-value]
