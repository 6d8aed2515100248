"""Resumable streams in Redis, shared by every bridge instance behind a load balancer.

:class:`RedisStore` holds the options, opens and closes, knows whether Redis answers, and answers
the store protocol. Its parts: ``keys.py`` (the keys of a stream and of an instance),
``writer.py`` (the owner's recording and the one writer that sends every stream's events in one
pipelined round trip), ``reader.py`` (a reader's follower, and ending a stream whose owner died),
``instance.py`` (this instance's heartbeat and its stop channel) and ``client.py`` (redis-py and
its errors). Each part sees the store through the Protocols of ``shared.py`` and its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from sse_bridge._core.validate import check_count, check_seconds
from sse_bridge._resume.redis.backlog import DEFAULT_MAX_PENDING_BYTES, Backlog
from sse_bridge._resume.redis.client import (
    ERRORS,
    SCHEMES,
    UNREACHABLE,
    Redis,
    connect,
    reason,
    redact,
)
from sse_bridge._resume.redis.instance import beat, listen, stop_elsewhere, subscribe
from sse_bridge._resume.redis.keys import Keys, text
from sse_bridge._resume.redis.reader import RedisFollower, finish_orphan, position
from sse_bridge._resume.redis.writer import FLUSH_WINDOW, RedisRecording, Writer
from sse_bridge._resume.store import (
    DEFAULT_MAX_STREAM_BYTES,
    DEFAULT_TTL,
    BadPositionError,
    EventsGoneError,
    StoreUnavailableError,
    UnknownStreamError,
    new_stream_id,
)

__all__ = ["RedisStore", "redact"]

logger = logging.getLogger("sse_bridge")

# How long a reader on another instance counts as attending after its last poll.
MIN_ATTENDED = 3.0
# Connections beyond the followers': the writer, the heartbeat, the stop channel's subscriber,
# and the short commands of resumes and stops.
RESERVED_CONNECTIONS = 16
# How long aclose() lets the writer send what it holds.
CLOSE_TIMEOUT = 1.0
# How long aclose() waits for a cancelled task before it cancels it again.
RECANCEL = 0.05


class RedisStore:
    """Streams kept in Redis, so that any instance can resume or stop any instance's stream.

    Needs the ``resume`` extra (redis-py) and an asyncio event loop.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/socket``. Its query may set ``max_pending_bytes`` (so that
            ``--resume`` can): ``redis://host:6379/0?max_pending_bytes=16777216``.
        ttl: seconds a finished stream stays resumable. Readers still following a stream when it
            expires get :class:`UnknownStreamError`.
        max_stream_bytes: events one stream keeps; past it, its oldest events go (in Redis with
            XTRIM, and from the events still waiting to be sent while Redis is away).
        max_pending_bytes: events waiting to be sent over all streams while Redis is away or
            slow; past it, whole streams stop being resumable, the oldest finished ones first
            (counted in ``sse_bridge_resume_dropped_total``, logged once per outage). Live
            clients get every event whatever happens here.
        heartbeat: seconds between this instance's signs of life; its streams' readers on other
            instances finish them when it has missed three.
        key_prefix: prepended to every key and channel, to share a Redis with other programs.
        flush_window: seconds the writer lets events of other streams gather before a round
            trip; readers on other instances see events this much later at most.
        max_followers: readers this instance follows streams for at once; each may hold a
            Redis connection in a blocking read. One more gets :class:`StoreUnavailableError`
            (a 503 with ``Retry-After``). The connection pool holds this many connections and
            ``RESERVED_CONNECTIONS`` more, for the writer, the heartbeat and the stop channel.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = DEFAULT_TTL,
        max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
        max_pending_bytes: int | None = None,
        heartbeat: float = 1.0,
        key_prefix: str = "sse_bridge:",
        flush_window: float = FLUSH_WINDOW,
        max_followers: int = 256,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in SCHEMES:
            shown = redact(url) if isinstance(url, str) else url
            raise ValueError(
                "the resume store URL must start with redis://, rediss:// or unix://, "
                f"got {shown!r}"
            )
        url, from_url = _take_query(url, "max_pending_bytes")
        if max_pending_bytes is None:
            max_pending_bytes = DEFAULT_MAX_PENDING_BYTES if from_url is None else from_url
        check_count(
            "max_pending_bytes", max_pending_bytes, 1, "bytes of events waiting for Redis in all"
        )
        check_seconds("resume ttl", ttl, "how long a finished stream stays resumable")
        check_count("max_stream_bytes", max_stream_bytes, 1, "bytes of events one stream keeps")
        check_seconds("heartbeat", heartbeat, "how often this instance tells Redis it lives")
        check_seconds("flush_window", flush_window, "before each round trip to Redis")
        check_count("max_followers", max_followers, 1, "readers followed at once")
        self.max_followers = max_followers
        self.flush_window = flush_window
        if heartbeat < 0.01:
            raise ValueError(f"heartbeat must be at least 0.01 seconds, got {heartbeat!r}")
        self.url = url
        self.ttl = ttl
        self.max_stream_bytes = max_stream_bytes
        self.heartbeat = heartbeat
        self.key_prefix = key_prefix
        self.keys = Keys(key_prefix)
        self.instance_id = secrets.token_urlsafe(12)
        self.ttl_ms = max(1, round(ttl * 1000))
        # While a stream is live its keys must outlive the owner's refreshes (every third of the
        # ttl, or every heartbeat if that is longer), and go when the owner has died.
        self.refresh_every = max(heartbeat, ttl / 3)
        self.live_ms = round(max(ttl, 3 * self.refresh_every) * 1000)
        self.instance_ms = round(3 * heartbeat * 1000)
        self.attended_seconds = max(MIN_ATTENDED, 3 * heartbeat)
        self.redis: Redis | None = None
        self.available = True
        # Set while Redis answers; the writer and the subscriber wait on it while it does not.
        self.up = asyncio.Event()
        self.up.set()
        self.outages = 0
        self.backlog = Backlog(max_pending_bytes, lambda: self.outages)
        self.live: dict[str, RedisRecording] = {}
        self.writer = Writer(self)
        self.readers: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # -- lifetime --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, announce this instance and subscribe to its stop channel.

        Raises :class:`StoreUnavailableError` if Redis cannot be reached.
        """
        if self.redis is not None:
            raise RuntimeError("RedisStore.open() was called twice (without aclose() between)")
        redis = connect(self.url, self.heartbeat, self.max_followers + RESERVED_CONNECTIONS)
        try:
            await redis.ping()
            await redis.set(self.keys.instance(self.instance_id), b"1", px=self.instance_ms)
            pubsub = await subscribe(self, redis)
        except ERRORS as exc:
            await redis.aclose()
            raise StoreUnavailableError(
                f"cannot reach Redis at {redact(self.url)}: {reason(exc)}"
            ) from exc
        self.redis = redis
        self.available = True
        self.up.set()
        self.spawn(beat(self), "heartbeat")
        self.spawn(listen(self, pubsub), "stop listener")
        self.spawn(self.writer.run(), "resume writer")

    async def aclose(self) -> None:
        """Send what the writer holds (for a moment at most), then stop and disconnect."""
        redis = self.redis
        if redis is None:
            return
        if self.available:
            await self.drain(CLOSE_TIMEOUT)
        await stop(self.tasks)
        self.live.clear()
        if self.available:
            # Readers of a stream this instance leaves unfinished learn it now rather than three
            # heartbeats later.
            with anyio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(*ERRORS):
                await redis.delete(self.keys.instance(self.instance_id))
        self.redis = None
        await redis.aclose()

    async def drain(self, seconds: float) -> bool:
        """Wait until every event appended so far is in Redis; False if ``seconds`` passed
        first (Redis is away or slow)."""
        return await self.writer.drain(seconds)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.task_done)
        return task

    def task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("sse_bridge: resume store task %s failed", task.get_name(), exc_info=error)

    def client(self) -> Redis:
        if self.redis is None:
            raise RuntimeError("RedisStore.open() must be awaited first")
        return self.redis

    # -- availability ----------------------------------------------------------------------

    def went_down(self, error: BaseException) -> None:
        if self.available:
            self.available = False
            self.outages += 1
            self.up.clear()
            logger.warning("sse_bridge: resume store unavailable: %s", reason(error))

    def came_back(self) -> None:
        if not self.available:
            self.available = True
            self.up.set()
            logger.warning("sse_bridge: resume store available again")
            # A Redis that restarted without its data has lost the owner of every live stream,
            # those with nothing new to send too: each one's next write says it again.
            for recording in self.live.values():
                if not recording.end_written:
                    self.writer.mark(recording)

    def check_available(self) -> None:
        if not self.available:
            raise StoreUnavailableError(
                f"the resume store (Redis at {redact(self.url)}) is unavailable; try again later"
            )

    def unavailable(self, error: BaseException) -> StoreUnavailableError:
        """Record ``error`` and return the error for the caller to raise."""
        if isinstance(error, UNREACHABLE):
            self.went_down(error)
        return StoreUnavailableError(
            f"the resume store (Redis at {redact(self.url)}) failed: {reason(error)}"
        )

    # -- the protocol ----------------------------------------------------------------------

    def record(self, stop: Callable[[], None], bound_to: str | None = None) -> RedisRecording:
        self.client()
        recording = RedisRecording(self, new_stream_id(), stop, bound_to)
        self.live[recording.stream_id] = recording
        self.writer.mark(recording)
        return recording

    async def follow(self, stream_id: str, after: int) -> RedisFollower:
        self.check_available()
        if sum(self.readers.values()) >= self.max_followers:
            raise StoreUnavailableError(
                f"this instance follows {self.max_followers} streams' readers already "
                "(max_followers); try again later"
            )
        owner, last, first = await position(self, stream_id)
        if last is not None and after > last:
            raise BadPositionError(
                f"stream {stream_id!r} sent {last} events, so none after {after}"
            )
        if first > after + 1:
            raise EventsGoneError(after, first)
        return RedisFollower(self, stream_id, after, owner)

    async def bound_to(self, stream_id: str) -> str | None:
        recording = self.live.get(stream_id)
        if recording is not None:
            return recording.bound_to
        self.check_available()
        try:
            instance, bound = await self.client().hmget(
                self.keys.meta(stream_id), ["owner", "bound_to"]
            )
        except ERRORS as exc:
            raise self.unavailable(exc) from exc
        if instance is None:
            raise UnknownStreamError(stream_id)
        return None if bound is None else text(bound)

    async def finished_at(self, stream_id: str, after: int) -> bool:
        _, last, _ = await position(self, stream_id)
        return last == after

    async def stop(self, stream_id: str) -> None:
        """Stop the generation wherever it runs.

        A stream of this instance stops at once, Redis or not; another instance's gets its id
        on that instance's channel. If that instance is alive but not listening (it is
        reconnecting), this raises :class:`StoreUnavailableError`; if it died, nothing happens:
        its readers finish the stream (see :meth:`finish_orphan`).
        """
        recording = self.live.get(stream_id)
        if recording is not None:
            stop = recording.take_stop()
            if stop is not None:
                stop()
            return
        await stop_elsewhere(self, stream_id)

    async def finish_orphan(self, stream_id: str, last_seq: int, events: list[bytes]) -> None:
        """End a stream whose owner died (its reader got :class:`OwnerLostError`).

        The store cannot know the dialect's terminal events (an error event, a ``[DONE]``), so
        the reader that saw the owner go passes them: they become events ``last_seq + 1``, ...,
        followed by the end. ``last_seq`` is the last event the reader got. Several readers may
        race to do this: the first wins, and for the others (and for a stream that has gone on
        past ``last_seq`` after all) nothing is written. The reader then goes on following and
        reads the terminal events and the end like any other reader.

        A reader may have got events that never reached Redis (the owner sends each event to
        its client before its writer stores it, and died in between): the terminal events then
        still come after ``last_seq``, and a reader that had not got those events learns that
        they are gone (:class:`EventsGoneError`) rather than read other events under their
        numbers.

        Raises :class:`UnknownStreamError` if the stream has expired and
        :class:`StoreUnavailableError` if Redis is away.
        """
        await finish_orphan(self, stream_id, last_seq, events)


async def stop(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them to end, cancelling again those that go on.

    A cancel can be lost: redis-py writes each command under ``asyncio.wait_for``, which before
    Python 3.12 swallows a cancel that arrives as the write completes (CPython gh-86296), and the
    task then goes on with its loop. Told again, it stops at its next await, as anyio's cancel
    scopes do it.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL)


def _take_query(url: str, name: str) -> tuple[str, int | None]:
    """``url`` without the query parameter ``name`` (redis-py refuses what it does not know),
    and that parameter's value as a number of bytes."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in query if key == name]
    if not values:
        return url, None
    if len(values) > 1 or not values[0].isdigit():
        raise ValueError(f"{name} in the resume store URL must be one number of bytes")
    rest = urlencode([(key, value) for key, value in query if key != name])
    return urlunsplit(parts._replace(query=rest)), int(values[0])
