"""Resumable streams: what a store keeps of each generation, its protocol, ids and errors.

A converted stream gets an opaque id and its events are numbered 1, 2, 3, ... as the middleware
sends them. The owner (the request that runs the generation) appends every event to a
:class:`Recording`; readers on any request (and, with Redis, any instance) replay the events after
the one they last saw and then follow the live generation to its end. A store also carries the
stop of a generation from whoever asks for it to its owner.

This module knows no HTTP: the middleware turns the errors below into status codes. The
in-process store is ``memory.py``, the Redis one ``redis/``, and ``open.py`` opens the one an
option names.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from typing import Protocol

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


class ReaderStalledError(Exception):
    """A resumed stream's reader accepted no bytes for ``send_timeout`` seconds: cut off."""


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


class TooManyReadersError(ResumeError):
    """A stream has as many readers as it may have at once (``resume_max_readers``)."""

    status = 429

    def __init__(self, limit: int) -> None:
        super().__init__(f"this stream has {limit} readers already (the most); retry later")


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

    def record(self, stop: Callable[[], None], bound_to: str | None = None) -> Recording:
        """A new stream; ``stop`` is called (once, on the owner's event loop) to stop it.
        ``bound_to``: the hash of the stream's owner (``_resume/binding.py``), kept with it."""
        ...

    async def bound_to(self, stream_id: str) -> str | None:
        """The owner hash the stream was recorded with; raises :class:`UnknownStreamError`."""
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


def stream_tag(stream_id: str) -> str:
    """What logs carry instead of a stream id, which is a key to the stream: the first 12 hex
    digits of its SHA-256. The id holds 128 random bits, so the tag cannot be turned back into
    it, yet the same stream has the same tag on every instance and in every line."""
    return hashlib.sha256(stream_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]


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
