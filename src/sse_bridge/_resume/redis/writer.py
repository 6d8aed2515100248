"""The owner's side of a stream in Redis: its recording, and the store's one writer.

The hot path never waits for Redis: ``append`` numbers the events and queues them for the store's
one writer task, which sends whatever all streams have piled up in one pipelined round trip (a
group commit: the busier the instance, the more each round trip carries). While Redis is away the
writer keeps the events (within ``max_stream_bytes``, like the stream itself) and sends them when
it returns; the live stream does not notice. The events waiting over all streams are bounded too
(``max_pending_bytes``): past it, whole streams stop being resumable, the oldest finished ones
first (``backlog.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import NamedTuple, Protocol

import anyio

from sse_bridge._resume.redis.client import ERRORS, UNREACHABLE, Pipeline, reason
from sse_bridge._resume.redis.keys import text
from sse_bridge._resume.redis.shared import Shared
from sse_bridge._resume.store import stream_tag

logger = logging.getLogger("sse_bridge")

# Events of one stream one round sends: bounds a round trip.
FLUSH_EVENTS = 1000
# How long the writer lets events gather after the first: round trips, not events, cost here.
# At a model's pace the events of many streams arrive a few milliseconds apart; 5 ms makes
# about a third fewer round trips at 1,000 events/s here (docs/benchmarks.md) and is not seen
# at a token's pace.
FLUSH_WINDOW = 0.005
# Commands one round of the writer sends at most, over all streams.
ROUND_COMMANDS = 10_000


class WriterStore(Shared, Protocol):
    """The store as the writer and the recordings see it."""

    @property
    def live(self) -> dict[str, RedisRecording]:
        """This instance's streams that have not ended."""

    @property
    def writer(self) -> Writer: ...


class Writer:
    """The store's one writer: every round sends what all streams hold, in one round trip."""

    def __init__(self, store: WriterStore) -> None:
        self.store = store
        # The streams with something to send, in the order they first had it.
        self.dirty: dict[str, RedisRecording] = {}
        self.wake = asyncio.Event()
        # Set while nothing waits to be sent.
        self.idle = asyncio.Event()
        self.idle.set()

    async def drain(self, seconds: float) -> bool:
        """Wait until every event appended so far is in Redis; False if ``seconds`` passed
        first (Redis is away or slow)."""
        with anyio.move_on_after(seconds):
            await self.idle.wait()
            return True
        return False

    def mark(self, recording: RedisRecording) -> None:
        """``recording`` has something to send: the writer takes it on its next round."""
        if recording.stream_id not in self.dirty:
            self.dirty[recording.stream_id] = recording
            self.idle.clear()
            self.wake.set()

    async def run(self) -> None:
        store = self.store
        while True:
            if not self.dirty:
                self.idle.set()
                self.wake.clear()
                await self.wake.wait()
                # A moment for the other streams' reads of this instant to join the round.
                await asyncio.sleep(store.flush_window)
                continue
            await store.up.wait()
            try:
                await self.flush(list(self.dirty.values()))
            except UNREACHABLE as exc:
                store.went_down(exc)

    async def flush(self, recordings: list[RedisRecording]) -> None:
        plans = []
        commands = 0
        async with self.store.client().pipeline(transaction=False) as pipe:
            for recording in recordings:
                if commands >= ROUND_COMMANDS:
                    # The rest stay marked for the next round: a round trip stays bounded,
                    # even when Redis comes back to a backlog.
                    break
                plans.append(recording.queue(pipe))
                commands += plans[-1].commands
            results = await pipe.execute(raise_on_error=False)
        start = 0
        live = self.store.live
        for recording, plan in zip(recordings, plans, strict=False):
            end = start + plan.commands
            errors = [result for result in results[start:end] if isinstance(result, Exception)]
            # "equal or smaller": the entry is there already. A retry after a round trip that
            # Redis half did, or a reader that finished the stream for an owner it took for
            # dead, which the owner must not take for success.
            refused = [error for error in errors if "equal or smaller" not in str(error)]
            start = end
            if refused:
                await recording.abandon(refused[0])
            elif errors and await recording.ended_elsewhere():
                recording.taken()
            else:
                recording.sent(plan)
            if not recording.has_work():
                del self.dirty[recording.stream_id]
                if recording.end_written and live.get(recording.stream_id) is recording:
                    del live[recording.stream_id]


class RedisRecording:
    """The owner's side: events wait in ``pending`` for the writer task to send them."""

    def __init__(
        self,
        store: WriterStore,
        stream_id: str,
        stop: Callable[[], None],
        bound_to: str | None = None,
    ) -> None:
        self.store = store
        self.writer = store.writer
        self.stream_id = stream_id
        # The hash of the stream's owner (the user's, not the instance's), or None.
        self.bound_to = bound_to
        self.events_key = store.keys.events(stream_id)
        self.meta_key = store.keys.meta(stream_id)
        self.stop: Callable[[], None] | None = stop
        self.last = 0
        self.pending: deque[tuple[int, bytes]] = deque()
        # Bytes of the events in ``pending``, counted in the store's backlog too.
        self.pending_bytes = 0
        # Its events were dropped for the backlog's bound: its keys are deleted when Redis is
        # back, and it is resumable no more.
        self.dropped = False
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
        # Ended by another instance (see taken); the owner's client is told.
        self.taken_over = False

    def take_stop(self) -> Callable[[], None] | None:
        stop, self.stop = self.stop, None
        return stop

    def append(self, events: list[bytes]) -> None:
        if self.ended or not events:
            return
        seq = self.last
        added = 0
        for event in events:
            seq += 1
            self.pending.append((seq, event))
            self.sizes.append(len(event))
            added += len(event)
        self.size += added
        self.last = seq
        self.pending_bytes += added
        self.store.backlog.grow(added)
        if self.size > self.store.max_stream_bytes:
            self.drop_oldest()
        self.writer.mark(self)
        self.store.backlog.bound(self.store.live.values())

    def drop_oldest(self) -> None:
        limit = self.store.max_stream_bytes
        sizes = self.sizes
        while self.size > limit and len(sizes) > 1:
            self.size -= sizes.popleft()
            self.first += 1
        pending = self.pending
        while pending and pending[0][0] < self.first:
            self.unqueue(len(pending.popleft()[1]))

    def unqueue(self, size: int) -> None:
        self.pending_bytes -= size
        self.store.backlog.grow(-size)

    def drop(self) -> int:
        """Let every waiting event go (the backlog is over its bound); return how many. The
        stream is resumable no more: its keys go when Redis is back."""
        count = len(self.pending)
        self.forget()
        self.dropped = True
        self.ended = True
        self.stop = None
        self.writer.mark(self)
        return count

    def forget(self) -> None:
        """Let every waiting event go, and their bytes out of the store's backlog."""
        self.pending.clear()
        self.store.backlog.grow(-self.pending_bytes)
        self.pending_bytes = 0

    def finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.stop = None
        self.writer.mark(self)

    async def attended(self) -> bool:
        store = self.store
        if store.readers.get(self.stream_id):
            return True
        if not store.available:
            return False
        try:
            return bool(await store.client().exists(store.keys.attended(self.stream_id)))
        except ERRORS as exc:
            store.unavailable(exc)
            return False

    def has_work(self) -> bool:
        if self.end_written:
            # Ended, abandoned or taken over: nothing more of it goes to Redis (an abandoned
            # stream with a trim due would otherwise come back as an end without events).
            return False
        return self.dropped or (
            self.written_in != self.store.outages
            or bool(self.pending)
            or self.trimmed < self.first
            or self.ended
        )

    def queue(self, pipe: Pipeline) -> Plan:
        """Add what this stream has to send to the writer's round trip."""
        store = self.store
        if self.dropped:
            pipe.delete(self.events_key, self.meta_key)
            return Plan(1, 0, self.first, True, store.outages)
        batch = list(islice(self.pending, FLUSH_EVENTS))
        first = self.first
        ending = self.ended and len(batch) == len(self.pending)
        fresh = self.written_in != store.outages
        commands = len(batch)
        if fresh:
            bound = () if self.bound_to is None else ("bound_to", self.bound_to)
            pipe.hset(self.meta_key, "owner", store.instance_id, items=bound)
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
        return Plan(commands, batch[-1][0] if batch else 0, first, ending, store.outages)

    def sent(self, plan: Plan) -> None:
        """The round trip with ``plan`` went through."""
        self.written_in = plan.outages
        while self.pending and self.pending[0][0] <= plan.sent:
            self.unqueue(len(self.pending.popleft()[1]))
        self.trimmed = max(self.trimmed, plan.first)
        self.end_written = self.end_written or plan.ending

    async def ended_elsewhere(self) -> bool:
        """Whether another instance has ended this stream (see ``finish_orphan``)."""
        try:
            ended_by = await self.store.client().hget(self.meta_key, "ended_by")
        except ERRORS:
            return False  # the next round trip asks again
        return ended_by is not None and text(ended_by) != self.store.instance_id

    def taken(self) -> None:
        """Another instance ended this stream, taking this one for dead: nothing more of it is
        stored, and the generation is stopped, its client told why (``taken_over``)."""
        logger.warning(
            "sse_bridge: stream %s was ended by another instance, which took this one for "
            "dead; its client gets an error",
            stream_tag(self.stream_id),
        )
        self.taken_over = self.ended = self.end_written = True
        self.forget()
        stop = self.take_stop()
        if stop is not None:
            stop()

    async def abandon(self, error: Exception) -> None:
        """Redis refuses this stream's writes: it stops being resumable rather than keep a gap."""
        logger.warning(
            "sse_bridge: resume store refused stream %s, which cannot be resumed: %s",
            stream_tag(self.stream_id),
            reason(error),
        )
        # Nothing more is kept: the live stream goes on for its own client only.
        self.ended = self.end_written = True
        self.forget()
        self.stop = None
        with contextlib.suppress(*ERRORS):
            await self.store.client().delete(self.events_key, self.meta_key)


class Plan(NamedTuple):
    """What one stream put in a round trip."""

    commands: int
    sent: int
    first: int
    ending: bool
    outages: int
