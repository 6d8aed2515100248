"""A reader's side of a stream in Redis: where it may start, following it, and ending it for an
owner that died."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any, Protocol

from sse_bridge._resume.redis.client import ERRORS, WatchError, start_transaction
from sse_bridge._resume.redis.keys import entries, parse_id, text
from sse_bridge._resume.redis.shared import Shared
from sse_bridge._resume.store import Batch, EventsGoneError, OwnerLostError, UnknownStreamError

# Entries one XREAD returns: bounds a round trip.
READ_COUNT = 1000


class OwnStream(Protocol):
    """One of this instance's own streams, as a reader here sees it before Redis does."""

    @property
    def first(self) -> int:
        """The first event still kept."""

    @property
    def last(self) -> int:
        """The last event appended."""

    @property
    def ended(self) -> bool: ...


class ReaderStore(Shared, Protocol):
    """The store as its readers see it."""

    @property
    def live(self) -> Mapping[str, OwnStream]: ...


async def position(store: ReaderStore, stream_id: str) -> tuple[str | None, int | None, int]:
    """The stream's owner, its last event once it has ended, and its first event kept."""
    recording = store.live.get(stream_id)
    if recording is not None:
        # This instance knows its own streams before the writer has told Redis about them.
        return store.instance_id, recording.last if recording.ended else None, recording.first
    store.check_available()
    try:
        async with store.client().pipeline(transaction=False) as pipe:
            pipe.hgetall(store.keys.meta(stream_id))
            pipe.xrange(store.keys.events(stream_id), count=1)
            meta, entries = await pipe.execute()
    except ERRORS as exc:
        raise store.unavailable(exc) from exc
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


class RedisFollower:
    def __init__(self, store: ReaderStore, stream_id: str, after: int, owner: str | None) -> None:
        self.store = store
        self.stream_id = stream_id
        self.owner = owner
        self.events_key = store.keys.events(stream_id)
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
                        store.keys.attended(self.stream_id),
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
            pipe.hget(store.keys.meta(self.stream_id), "ended")
            pipe.exists(store.keys.meta(self.stream_id))
            if not self.local and self.owner is not None:
                pipe.exists(store.keys.instance(self.owner))
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


async def finish_orphan(
    store: ReaderStore, stream_id: str, last_seq: int, events: list[bytes]
) -> None:
    """See :meth:`RedisStore.finish_orphan`."""
    store.check_available()
    events_key, meta_key = store.keys.events(stream_id), store.keys.meta(stream_id)
    last = last_seq + len(events)
    try:
        async with store.client().pipeline(transaction=True) as pipe:
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
                # The owner, if it lives after all, learns from this that its stream was taken.
                pipe.hset(meta_key, "ended_by", store.instance_id)
                pipe.pexpire(events_key, store.ttl_ms)
                pipe.pexpire(meta_key, store.ttl_ms)
                try:
                    await pipe.execute()
                except WatchError:
                    continue
                return
    except ERRORS as exc:
        raise store.unavailable(exc) from exc
