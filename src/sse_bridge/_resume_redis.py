"""Resumable streams in Redis, shared by every bridge instance behind a load balancer.

The keys of one stream, under ``key_prefix``:

- ``<sid>:events``, a Redis Stream: event n is the entry ``n-0`` with the field ``e``; the end of
  the generation is the entry ``<last n>-1`` with the field ``end``, so that XRANGE and XREAD read
  it right after the last event (``0-1`` for a stream without events).
- ``<sid>:meta``, a hash: ``owner``, the id of the instance that runs the generation, and, once it
  has ended, ``ended``, the number of its last event.
- ``<sid>:attended``, set for a few seconds by each poll of a reader on another instance.

And of one instance: ``instance:<iid>``, which lives three heartbeats and is set again every
heartbeat (it disappearing is how the others learn that the instance died without finishing its
streams), and the channel ``stop:<iid>``, which carries the ids of the streams to stop.

The hot path never waits for Redis: ``append`` numbers the events and queues them for the store's
one writer task, which sends whatever all streams have piled up in one pipelined round trip (a
group commit: the busier the instance, the more each round trip carries). While Redis is away the
writer keeps the events (within ``max_stream_bytes``, like the stream itself) and sends them when
it returns; the live stream does not notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from itertools import islice
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import anyio

from ._resume import (
    DEFAULT_MAX_STREAM_BYTES,
    DEFAULT_TTL,
    BadPositionError,
    Batch,
    EventsGoneError,
    OwnerLostError,
    StoreUnavailableError,
    UnknownStreamError,
    new_stream_id,
)
from ._validate import check_count, check_seconds

try:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline, PubSub
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, WatchError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - the tests run with the extra installed
    raise ImportError(
        "the Redis resume store needs redis-py: pip install 'sse-bridge[resume]'"
    ) from exc

logger = logging.getLogger("sse_bridge")

SCHEMES = ("redis", "rediss", "unix")
PASSWORD_PARAMETER = re.compile(r"(?<=[?&])password=[^&#]*")
# Errors that mean Redis cannot be reached (BusyLoadingError, a Redis restarting, is one of the
# ConnectionErrors); any other RedisError is Redis refusing a command.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
ERRORS = (RedisError, OSError)
CONNECT_TIMEOUT = 3.0
# Entries one XREAD returns, and events of one stream one round sends: bounds a round trip.
READ_COUNT = 1000
FLUSH_EVENTS = 1000
# How long the writer lets events gather after the first: round trips, not events, cost here.
# At a model's pace the events of many streams arrive a few milliseconds apart; 5 ms makes
# about a third fewer round trips at 1,000 events/s here (docs/benchmarks.md) and is not seen
# at a token's pace.
FLUSH_WINDOW = 0.005
# Commands one round of the writer sends at most, over all streams.
ROUND_COMMANDS = 10_000
# How long a reader on another instance counts as attending after its last poll.
MIN_ATTENDED = 3.0
# How long aclose() lets the writers send what they hold.
CLOSE_TIMEOUT = 1.0


class RedisStore:
    """Streams kept in Redis, so that any instance can resume or stop any instance's stream.

    Needs the ``resume`` extra (redis-py) and an asyncio event loop.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/socket``.
        ttl: seconds a finished stream stays resumable. Readers still following a stream when it
            expires get :class:`UnknownStreamError`.
        max_stream_bytes: events one stream keeps; past it, its oldest events go (in Redis with
            XTRIM, and from the events still waiting to be sent while Redis is away).
        heartbeat: seconds between this instance's signs of life; its streams' readers on other
            instances finish them when it has missed three.
        key_prefix: prepended to every key and channel, to share a Redis with other programs.
        flush_window: seconds the writer lets events of other streams gather before a round
            trip; readers on other instances see events this much later at most.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = DEFAULT_TTL,
        max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
        heartbeat: float = 1.0,
        key_prefix: str = "sse_bridge:",
        flush_window: float = FLUSH_WINDOW,
    ) -> None:
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in SCHEMES:
            raise ValueError(
                "the resume store URL must start with redis://, rediss:// or unix://, "
                f"got {redact(url)!r}"
            )
        check_seconds("resume ttl", ttl, "how long a finished stream stays resumable")
        check_count("max_stream_bytes", max_stream_bytes, 1, "bytes of events one stream keeps")
        check_seconds("heartbeat", heartbeat, "how often this instance tells Redis it lives")
        check_seconds("flush_window", flush_window, "before each round trip to Redis")
        self.flush_window = flush_window
        if heartbeat < 0.01:
            raise ValueError(f"heartbeat must be at least 0.01 seconds, got {heartbeat!r}")
        self.url = url
        self.ttl = ttl
        self.max_stream_bytes = max_stream_bytes
        self.heartbeat = heartbeat
        self.key_prefix = key_prefix
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
        # Set while Redis answers; the writers and the subscriber wait on it while it does not.
        self.up = asyncio.Event()
        self.up.set()
        self.outages = 0
        self.live: dict[str, _RedisRecording] = {}
        # The streams with something to send, in the order they first had it.
        self.dirty: dict[str, _RedisRecording] = {}
        self.wake = asyncio.Event()
        # Set while nothing waits to be sent.
        self.idle = asyncio.Event()
        self.idle.set()
        self.readers: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # -- keys ------------------------------------------------------------------------------

    def events_key(self, stream_id: str) -> str:
        return f"{self.key_prefix}{stream_id}:events"

    def meta_key(self, stream_id: str) -> str:
        return f"{self.key_prefix}{stream_id}:meta"

    def attended_key(self, stream_id: str) -> str:
        return f"{self.key_prefix}{stream_id}:attended"

    def instance_key(self, instance_id: str) -> str:
        return f"{self.key_prefix}instance:{instance_id}"

    def stop_channel(self, instance_id: str) -> str:
        return f"{self.key_prefix}stop:{instance_id}"

    # -- lifetime --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, announce this instance and subscribe to its stop channel.

        Raises :class:`StoreUnavailableError` if Redis cannot be reached.
        """
        if self.redis is not None:
            raise RuntimeError("RedisStore.open() was called twice (without aclose() between)")
        timeout = self.heartbeat + 5.0
        redis = Redis.from_url(
            self.url,
            # A blocking XREAD waits at most one heartbeat: the socket waits longer than that.
            socket_timeout=timeout,
            socket_connect_timeout=CONNECT_TIMEOUT,
            # One immediate retry, for a pooled connection that Redis closed while it restarted;
            # a Redis that is away is the probe's business, not a reason to wait here.
            retry=Retry(NoBackoff(), 1),
        )
        try:
            await redis.ping()
            await redis.set(self.instance_key(self.instance_id), b"1", px=self.instance_ms)
            pubsub = await self.subscribe(redis)
        except ERRORS as exc:
            await redis.aclose()
            raise StoreUnavailableError(
                f"cannot reach Redis at {redact(self.url)}: {reason(exc)}"
            ) from exc
        self.redis = redis
        self.available = True
        self.up.set()
        self.spawn(self.beat(), "heartbeat")
        self.spawn(self.listen(pubsub), "stop listener")
        self.spawn(self.write(), "resume writer")

    async def aclose(self) -> None:
        """Send what the writers hold (for a moment at most), then stop and disconnect."""
        redis = self.redis
        if redis is None:
            return
        if self.available:
            await self.drain(CLOSE_TIMEOUT)
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.live.clear()
        if self.available:
            # Readers of a stream this instance leaves unfinished learn it now rather than three
            # heartbeats later.
            with anyio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(*ERRORS):
                await redis.delete(self.instance_key(self.instance_id))
        self.redis = None
        await redis.aclose()

    async def drain(self, seconds: float) -> bool:
        """Wait until every event appended so far is in Redis; False if ``seconds`` passed
        first (Redis is away or slow)."""
        with anyio.move_on_after(seconds):
            await self.idle.wait()
            return True
        return False

    def mark(self, recording: _RedisRecording) -> None:
        """``recording`` has something to send: the writer takes it on its next round."""
        if recording.stream_id not in self.dirty:
            self.dirty[recording.stream_id] = recording
            self.idle.clear()
            self.wake.set()

    async def write(self) -> None:
        """The one writer: every round sends what all streams hold, in one round trip."""
        while True:
            if not self.dirty:
                self.idle.set()
                self.wake.clear()
                await self.wake.wait()
                # A moment for the other streams' reads of this instant to join the round.
                await asyncio.sleep(self.flush_window)
                continue
            await self.up.wait()
            try:
                await self.flush(list(self.dirty.values()))
            except UNREACHABLE as exc:
                self.went_down(exc)

    async def flush(self, recordings: list[_RedisRecording]) -> None:
        plans = []
        commands = 0
        async with self.client().pipeline(transaction=False) as pipe:
            for recording in recordings:
                if commands >= ROUND_COMMANDS:
                    # The rest stay marked for the next round: a round trip stays bounded,
                    # even when Redis comes back to a backlog.
                    break
                plans.append(recording.queue(pipe))
                commands += plans[-1].commands
            results = await pipe.execute(raise_on_error=False)
        start = 0
        for recording, plan in zip(recordings, plans, strict=False):
            end = start + plan.commands
            refused = [
                result
                for result in results[start:end]
                # A retry after a round trip that Redis half did (or a reader that finished
                # the stream for an owner it thought dead): the entry is there already.
                if isinstance(result, Exception) and "equal or smaller" not in str(result)
            ]
            start = end
            if refused:
                await recording.abandon(refused[0])
            else:
                recording.sent(plan)
            if not recording.has_work():
                del self.dirty[recording.stream_id]
                if recording.end_written and self.live.get(recording.stream_id) is recording:
                    del self.live[recording.stream_id]

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
                    self.mark(recording)

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

    async def beat(self) -> None:
        """Tell Redis every heartbeat that this instance lives; it also probes Redis, so it is
        what notices that Redis is back, and it keeps the live streams' keys from expiring."""
        redis = self.client()
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.refresh_every
        while True:
            await asyncio.sleep(self.heartbeat)
            refresh = loop.time() >= next_refresh
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.set(self.instance_key(self.instance_id), b"1", px=self.instance_ms)
                    if refresh:
                        for recording in self.live.values():
                            if not recording.ended:
                                # The owner too: a Redis that lost its data between two
                                # writes has the stream again.
                                pipe.hset(recording.meta_key, "owner", self.instance_id)
                                pipe.pexpire(recording.events_key, self.live_ms)
                                pipe.pexpire(recording.meta_key, self.live_ms)
                    await pipe.execute()
            except ERRORS as exc:
                self.went_down(exc)
            else:
                self.came_back()
                if refresh:
                    next_refresh = loop.time() + self.refresh_every

    async def subscribe(self, redis: Redis) -> PubSub:
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(self.stop_channel(self.instance_id))
            # Once Redis confirms, a PUBLISH from any instance reaches this one.
            with anyio.move_on_after(CONNECT_TIMEOUT):
                while True:
                    message = await pubsub.get_message(timeout=CONNECT_TIMEOUT)
                    if message is not None and message["type"] == "subscribe":
                        return pubsub
            raise RedisTimeoutError("Redis did not confirm the SUBSCRIBE")
        except BaseException:
            await close(pubsub)
            raise

    async def listen(self, pubsub: PubSub | None) -> None:
        """Stop the local streams whose ids other instances publish on this one's channel."""
        redis = self.client()
        try:
            while True:
                try:
                    if pubsub is None:
                        pubsub = await self.subscribe(redis)
                    outages = self.outages
                    # After an outage the connection may look alive and no longer be subscribed.
                    while self.outages == outages:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self.heartbeat
                        )
                        if message is not None and message["type"] == "message":
                            self.stop_here(bytes(message["data"]).decode("ascii", "replace"))
                except ERRORS as exc:
                    self.went_down(exc)
                if pubsub is not None:
                    with contextlib.suppress(*ERRORS):
                        await close(pubsub)
                    pubsub = None
                await self.up.wait()
        finally:
            if pubsub is not None:
                # Cancelled (aclose): unsubscribe now, so that a stop sent here is not taken
                # for delivered.
                with contextlib.suppress(*ERRORS):
                    await close(pubsub)

    def stop_here(self, stream_id: str) -> None:
        recording = self.live.get(stream_id)
        stop = recording.take_stop() if recording is not None else None
        if stop is not None:
            try:
                stop()
            except Exception:
                logger.exception("sse_bridge: stopping stream %s failed", stream_id)

    # -- the protocol ----------------------------------------------------------------------

    def record(self, stop: Callable[[], None]) -> _RedisRecording:
        self.client()
        recording = _RedisRecording(self, new_stream_id(), stop)
        self.live[recording.stream_id] = recording
        self.mark(recording)
        return recording

    async def follow(self, stream_id: str, after: int) -> _RedisFollower:
        self.check_available()
        owner, last, first = await self.position(stream_id)
        if last is not None and after > last:
            raise BadPositionError(
                f"stream {stream_id!r} sent {last} events, so none after {after}"
            )
        if first > after + 1:
            raise EventsGoneError(after, first)
        return _RedisFollower(self, stream_id, after, owner)

    async def finished_at(self, stream_id: str, after: int) -> bool:
        _, last, _ = await self.position(stream_id)
        return last == after

    async def position(self, stream_id: str) -> tuple[str | None, int | None, int]:
        """The stream's owner, its last event once it has ended, and its first event kept."""
        recording = self.live.get(stream_id)
        if recording is not None:
            # This instance knows its own streams before the writer has told Redis about them.
            return self.instance_id, recording.last if recording.ended else None, recording.first
        self.check_available()
        try:
            async with self.client().pipeline(transaction=False) as pipe:
                pipe.hgetall(self.meta_key(stream_id))
                pipe.xrange(self.events_key(stream_id), count=1)
                meta, entries = await pipe.execute()
        except ERRORS as exc:
            raise self.unavailable(exc) from exc
        if not meta:
            raise UnknownStreamError(stream_id)
        owner, ended = meta.get(b"owner"), meta.get(b"ended")
        first = 1
        if entries:
            # Only the end left (``<last>-1``, after Redis lost the events): the first event
            # that a reader could still get is the one after the last.
            seq, is_event = parse_id(entries[0][0])
            first = seq if is_event else seq + 1
        return (
            None if owner is None else text(owner),
            None if ended is None else int(ended),
            first,
        )

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
        self.check_available()
        redis = self.client()
        try:
            meta = await redis.hgetall(self.meta_key(stream_id))
            if not meta:
                raise UnknownStreamError(stream_id)
            owner = meta.get(b"owner")
            if b"ended" in meta or owner is None or text(owner) == self.instance_id:
                return
            if await redis.publish(self.stop_channel(text(owner)), stream_id):
                return
            alive = await redis.exists(self.instance_key(text(owner)))
        except ERRORS as exc:
            raise self.unavailable(exc) from exc
        if alive:
            raise StoreUnavailableError(
                f"the instance running stream {stream_id!r} cannot be reached now; try again"
            )

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
        self.check_available()
        events_key, meta_key = self.events_key(stream_id), self.meta_key(stream_id)
        last = last_seq + len(events)
        try:
            async with self.client().pipeline(transaction=True) as pipe:
                # WATCH: if anyone adds to the stream between the check and EXEC, nothing is
                # written, and the next round sees what they added.
                for _ in range(3):
                    await pipe.watch(events_key, meta_key)
                    if not await pipe.exists(meta_key):
                        raise UnknownStreamError(stream_id)
                    top = await pipe.xrevrange(events_key, count=1)
                    seq, is_event = parse_id(top[0][0]) if top else (0, True)
                    if not is_event or seq > last_seq:
                        return
                    start_transaction(pipe)
                    for seq, event in enumerate(events, last_seq + 1):
                        pipe.xadd(events_key, {"e": event}, id=f"{seq}-0")
                    pipe.xadd(events_key, {"end": b"1"}, id=f"{last}-1")
                    pipe.hsetnx(meta_key, "ended", last)
                    pipe.pexpire(events_key, self.ttl_ms)
                    pipe.pexpire(meta_key, self.ttl_ms)
                    try:
                        await pipe.execute()
                    except WatchError:
                        continue
                    return
        except ERRORS as exc:
            raise self.unavailable(exc) from exc


class _RedisRecording:
    """The owner's side: events wait in ``pending`` for the writer task to send them."""

    def __init__(self, store: RedisStore, stream_id: str, stop: Callable[[], None]) -> None:
        self.store = store
        self.stream_id = stream_id
        self.events_key = store.events_key(stream_id)
        self.meta_key = store.meta_key(stream_id)
        self.stop: Callable[[], None] | None = stop
        self.last = 0
        self.pending: deque[tuple[int, bytes]] = deque()
        # The sizes of the events kept (sent or not), the first of them event number ``first``,
        # and the first one Redis keeps (a XTRIM is due while it is below ``first``).
        self.sizes: deque[int] = deque()
        self.size = 0
        self.first = 1
        self.trimmed = 1
        # The store's outage count at this stream's last write: the first write, and the first
        # after an outage (Redis may have restarted without its data), say who owns the stream
        # and set the keys' expiry; the heartbeat keeps them up to date in between.
        self.written_in: int | None = None
        self.ended = False
        self.end_written = False

    def take_stop(self) -> Callable[[], None] | None:
        stop, self.stop = self.stop, None
        return stop

    def append(self, events: list[bytes]) -> None:
        if self.ended or not events:
            return
        seq = self.last
        for event in events:
            seq += 1
            self.pending.append((seq, event))
            self.sizes.append(len(event))
            self.size += len(event)
        self.last = seq
        if self.size > self.store.max_stream_bytes:
            self.drop_oldest()
        self.store.mark(self)

    def drop_oldest(self) -> None:
        limit = self.store.max_stream_bytes
        sizes = self.sizes
        while self.size > limit and len(sizes) > 1:
            self.size -= sizes.popleft()
            self.first += 1
        pending = self.pending
        while pending and pending[0][0] < self.first:
            pending.popleft()

    def finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.stop = None
        self.store.mark(self)

    async def attended(self) -> bool:
        store = self.store
        if store.readers.get(self.stream_id):
            return True
        if not store.available:
            return False
        try:
            return bool(await store.client().exists(store.attended_key(self.stream_id)))
        except ERRORS as exc:
            store.unavailable(exc)
            return False

    def has_work(self) -> bool:
        return (
            self.written_in != self.store.outages
            or bool(self.pending)
            or self.trimmed < self.first
            or (self.ended and not self.end_written)
        )

    def queue(self, pipe: Pipeline) -> _Plan:
        """Add what this stream has to send to the writer's round trip."""
        store = self.store
        batch = list(islice(self.pending, FLUSH_EVENTS))
        first = self.first
        ending = self.ended and len(batch) == len(self.pending)
        fresh = self.written_in != store.outages
        commands = len(batch)
        if fresh:
            pipe.hset(self.meta_key, "owner", store.instance_id)
            commands += 1
        for seq, event in batch:
            pipe.xadd(self.events_key, {"e": event}, id=f"{seq}-0")
        if self.trimmed < first:
            pipe.xtrim(self.events_key, minid=f"{first}-0", approximate=False)
            commands += 1
        if ending:
            pipe.xadd(self.events_key, {"end": b"1"}, id=f"{self.last}-1")
            pipe.hsetnx(self.meta_key, "ended", self.last)
            commands += 2
        if ending or fresh:
            expiry = store.ttl_ms if ending else store.live_ms
            pipe.pexpire(self.events_key, expiry)
            pipe.pexpire(self.meta_key, expiry)
            commands += 2
        return _Plan(commands, batch[-1][0] if batch else 0, first, ending, store.outages)

    def sent(self, plan: _Plan) -> None:
        """The round trip with ``plan`` went through."""
        self.written_in = plan.outages
        while self.pending and self.pending[0][0] <= plan.sent:
            self.pending.popleft()
        self.trimmed = max(self.trimmed, plan.first)
        self.end_written = self.end_written or plan.ending

    async def abandon(self, error: Exception) -> None:
        """Redis refuses this stream's writes: it stops being resumable rather than keep a gap."""
        logger.warning(
            "sse_bridge: resume store refused stream %s, which cannot be resumed: %s",
            self.stream_id,
            reason(error),
        )
        # Nothing more is kept: the live stream goes on for its own client only.
        self.ended = self.end_written = True
        self.written_in = self.store.outages
        self.pending.clear()
        self.stop = None
        with contextlib.suppress(*ERRORS):
            await self.store.client().delete(self.events_key, self.meta_key)


class _Plan(NamedTuple):
    """What one stream put in a round trip."""

    commands: int
    sent: int
    first: int
    ending: bool
    outages: int


class _RedisFollower:
    def __init__(self, store: RedisStore, stream_id: str, after: int, owner: str | None) -> None:
        self.store = store
        self.stream_id = stream_id
        self.owner = owner
        self.events_key = store.events_key(stream_id)
        self.last_id = f"{after}-0"
        self.next_seq = after + 1
        self.ended = False
        self.closed = False
        self.local = owner == store.instance_id
        if self.local:
            store.readers[stream_id] = store.readers.get(stream_id, 0) + 1
        self.attended_until = -math.inf
        self.owner_missing_since: float | None = None

    async def next(self, wait: float) -> Batch | None:
        """See :class:`Follower`. A reader that gets :class:`OwnerLostError` may end the stream
        with :meth:`RedisStore.finish_orphan` and then go on reading."""
        if self.ended:
            return None
        store = self.store
        store.check_available()
        redis = store.client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            while True:
                now = loop.time()
                if not self.local and now >= self.attended_until - store.attended_seconds * 2 / 3:
                    await redis.set(
                        store.attended_key(self.stream_id),
                        b"1",
                        px=round(store.attended_seconds * 1000),
                    )
                    self.attended_until = now + store.attended_seconds
                left = min(deadline - now, store.heartbeat)
                block = max(1, round(left * 1000)) if left > 0 else None
                response = await redis.xread(
                    {self.events_key: self.last_id}, count=READ_COUNT, block=block
                )
                if response:
                    return self.take(entries(response))
                await self.check_owner(loop.time())
                if loop.time() >= deadline:
                    return []
        except ERRORS as exc:
            raise store.unavailable(exc) from exc

    def take(self, entries: list[Any]) -> Batch | None:
        batch: Batch = []
        for entry_id, fields in entries:
            seq, is_event = parse_id(entry_id)
            # An event must be the next one, and the end (``<last>-1``) must come right after the
            # last event read. Else events were trimmed or lost with Redis's data: the events
            # before the gap now, the error at the next call, which starts at the gap.
            gap = seq != self.next_seq if is_event else seq >= self.next_seq
            if gap:
                if batch:
                    return batch
                raise EventsGoneError(self.next_seq - 1, seq)
            if not is_event:
                self.ended = True
                break
            batch.append((seq, fields[b"e"]))
            self.next_seq = seq + 1
            self.last_id = f"{seq}-0"
        if not batch and self.ended:
            return None
        return batch

    async def check_owner(self, now: float) -> None:
        """Nothing came: has the stream expired, or has its owner died?"""
        store = self.store
        async with store.client().pipeline(transaction=False) as pipe:
            pipe.hget(store.meta_key(self.stream_id), "ended")
            pipe.exists(store.meta_key(self.stream_id))
            if not self.local and self.owner is not None:
                pipe.exists(store.instance_key(self.owner))
            ended, exists, *alive = await pipe.execute()
        if not exists:
            raise UnknownStreamError(self.stream_id)
        if ended is not None or self.local or (alive and alive[0]):
            self.owner_missing_since = None
            return
        # A Redis that restarted without its data has lost the owner's key until its next beat:
        # only a key that stays missing for two more heartbeats means that the owner is gone.
        if self.owner_missing_since is None:
            self.owner_missing_since = now
        elif now - self.owner_missing_since >= 2 * store.heartbeat:
            raise OwnerLostError(
                f"the instance running stream {self.stream_id!r} stopped before its end "
                f"(the last event is {self.next_seq - 1})"
            )

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            if self.local:
                readers = self.store.readers
                readers[self.stream_id] -= 1
                if not readers[self.stream_id]:
                    del readers[self.stream_id]


def parse_id(entry_id: object) -> tuple[int, bool]:
    """An entry id as (sequence number, whether it is an event rather than the end)."""
    seq, _, part = text(entry_id).partition("-")
    return int(seq), part == "0"


def text(value: object) -> str:
    """A reply as text (the client returns bytes: events must stay bytes)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected reply from Redis: {value!r}")


def entries(response: object) -> list[Any]:
    """The entries of the one stream an XREAD asked for (RESP2: [[key, entries]])."""
    if isinstance(response, list):
        return list(response[0][1])
    if isinstance(response, dict):  # RESP3: {key: [entries]}
        return list(next(iter(response.values()))[0])
    raise TypeError(f"unexpected reply from Redis to XREAD: {response!r}")


async def close(pubsub: PubSub) -> None:
    # redis-py leaves PubSub.aclose and Pipeline.multi without annotations.
    aclose: Callable[[], Awaitable[None]] = pubsub.aclose
    await aclose()


def start_transaction(pipe: Pipeline) -> None:
    multi: Callable[[], None] = pipe.multi
    multi()


def reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


def redact(url: str) -> str:
    """``url`` without its password (in the authority or, for unix://, the query)."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            port = f":{parts.port}" if parts.port is not None else ""
            netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
            url = url.replace(parts.netloc, netloc, 1)
    except ValueError:
        return "<an unparsable URL>"
    return PASSWORD_PARAMETER.sub("password=***", url)
