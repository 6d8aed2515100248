"""A reader of the Redis store as a caller sees it: a waiting read that blocks in Redis for its
wait, the mark it leaves for the owner, an owner lost through ``next()`` itself, an owner's own
stream known before Redis knows it, a stream gone under its reader, and Redis failing under each
call, told with its reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest
from redis.asyncio import Redis

from sse_bridge._resume.redis.reader import READ_COUNT
from sse_bridge._resume.redis.store import RESERVED_CONNECTIONS, RedisStore
from sse_bridge._resume.store import (
    BadPositionError,
    Follower,
    OwnerLostError,
    StoreUnavailableError,
    UnknownStreamError,
)
from tests._redis import RedisServer
from tests.test_resume_redis import DEADLINE, FAST, POLL, numbered, opened, read, read_to_end

pytestmark = pytest.mark.anyio

SLOW = 10.0


async def xread_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


async def test_a_waiting_reader_blocks_in_redis_for_its_wait_and_marks_the_stream_attended(
    url: str, client: Redis
) -> None:
    # A heartbeat far longer than the wait: the read must end at the wait, not at a heartbeat.
    beat = 3 * SLOW
    async with (
        opened(url, heartbeat=beat, key_prefix="blocking:") as owner,
        opened(url, heartbeat=beat, key_prefix="blocking:") as other,
    ):
        recording = owner.record(lambda: None)
        assert await owner.drain(DEADLINE)
        follower = await other.follow(recording.stream_id, 0)
        await client.config_resetstat()
        with anyio.fail_after(DEADLINE):
            assert await follower.next(0.3) == []
        # One blocking XREAD of 300 ms (and at most a short one more for the rest of the wait),
        # not a loop of reads that return at once.
        assert 1 <= await xread_calls(client) <= 3
        # The owner learns of this reader for three heartbeats (at least MIN_ATTENDED seconds).
        pttl = await client.pttl(owner.keys.attended(recording.stream_id))
        assert 3 * beat * 1000 - 5000 < pttl <= 3 * beat * 1000, pttl
        assert await recording.attended()


async def test_a_reader_learns_from_next_that_the_owner_is_gone(url: str, client: Redis) -> None:
    async with (
        opened(url, heartbeat=SLOW, key_prefix="gone:") as owner,
        opened(url, heartbeat=FAST, key_prefix="gone:") as reader,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1"])
        assert await owner.drain(DEADLINE)
        follower = await reader.follow(recording.stream_id, 0)
        assert await read(follower, 1) == [(1, b"e1")]
        # The owner's key expires (it died): two of the reader's heartbeats later, next() says so.
        assert await client.delete(owner.keys.instance(owner.instance_id)) == 1
        with anyio.fail_after(DEADLINE), pytest.raises(OwnerLostError, match=r"last event is 1\)"):
            await follower.next(DEADLINE)


async def test_the_owner_knows_its_stream_has_ended_before_redis_does(url: str) -> None:
    async with opened(url, key_prefix="own-end:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1", b"e2"])
        recording.finish()
        # No await between finish() and these: the writer has not run yet.
        assert await store.finished_at(recording.stream_id, 2)
        with pytest.raises(BadPositionError, match="sent 2 events, so none after 3"):
            await store.follow(recording.stream_id, 3)
        assert await read_to_end(await store.follow(recording.stream_id, 0)) == numbered(
            [b"e1", b"e2"]
        )


async def test_a_stream_whose_keys_went_is_unknown_to_its_reader(url: str, client: Redis) -> None:
    async with (
        opened(url, heartbeat=SLOW, key_prefix="expired:") as owner,
        opened(url, heartbeat=SLOW, key_prefix="expired:") as other,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1"])
        assert await owner.drain(DEADLINE)
        follower = await other.follow(recording.stream_id, 1)
        await client.delete(recording.events_key, recording.meta_key)
        with pytest.raises(UnknownStreamError, match=recording.stream_id):
            await follower.next(0.05)


async def test_a_stop_for_an_ended_stream_is_quiet_even_if_its_owner_does_not_listen(
    url: str,
) -> None:
    async with (
        opened(url, key_prefix="stop-ended:") as a,
        opened(url, key_prefix="stop-ended:") as b,
    ):
        recording = a.record(lambda: None)
        recording.finish()
        assert await a.drain(DEADLINE)
        (listener,) = [task for task in a.tasks if task.get_name() == "stop listener"]
        listener.cancel()
        with anyio.fail_after(DEADLINE):
            await asyncio.wait([listener])
        # Nothing to stop: no "try again" although the owner lives and cannot hear it.
        await b.stop(recording.stream_id)


CALLS: dict[str, Callable[[RedisStore, Follower], Awaitable[object]]] = {
    "next": lambda store, follower: follower.next(0.05),
    "stop": lambda store, follower: store.stop("x" * 22),
    "finish_orphan": lambda store, follower: store.finish_orphan("x" * 22, 0, [b"error"]),
    "bound_to": lambda store, follower: store.bound_to("x" * 22),
}


@pytest.mark.parametrize("call", CALLS)
async def test_redis_gone_under_a_call_is_told_and_logged_with_its_reason(
    server: RedisServer, caplog: pytest.LogCaptureFixture, call: str
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    store = RedisStore(server.url, heartbeat=SLOW)
    await store.open()
    try:
        # A reader of its own stream, whose events are all in Redis: nothing else asks Redis.
        recording = store.record(lambda: None)
        assert await store.drain(DEADLINE)
        follower = await store.follow(recording.stream_id, 0)
        server.stop()
        # Before any heartbeat: the call itself finds Redis gone, and says so for all.
        with pytest.raises(StoreUnavailableError) as caught:
            await CALLS[call](store, follower)
        prefix = f"the resume store (Redis at {server.url}) failed: "
        message = str(caught.value)
        assert message.startswith(prefix)
        why = message.removeprefix(prefix)
        assert [r.getMessage() for r in caplog.records] == [
            f"sse_bridge: resume store unavailable: {why}"
        ]
        assert why != "None"
        assert not store.available
    finally:
        await store.aclose()


async def test_whose_stream_it_is_is_known_on_every_instance(url: str) -> None:
    async with (
        opened(url, key_prefix="bound:") as owner,
        opened(url, key_prefix="bound:") as other,
    ):
        bound = owner.record(lambda: None, bound_to="alice-hash")
        free = owner.record(lambda: None)
        # The owner answers for its own streams before Redis has them.
        assert await owner.bound_to(bound.stream_id) == "alice-hash"
        assert await owner.bound_to(free.stream_id) is None
        assert await owner.drain(DEADLINE)
        assert await other.bound_to(bound.stream_id) == "alice-hash"
        assert await other.bound_to(free.stream_id) is None
        with pytest.raises(UnknownStreamError, match="no-such-stream"):
            await other.bound_to("no-such-stream")


@pytest.mark.parametrize(
    ("heartbeat", "ttl", "live_ms"),
    [
        # A live stream's keys outlive three refreshes (every heartbeat, or every third of the
        # ttl if that is longer), and at least the ttl.
        pytest.param(SLOW, 0.3, 30_000, id="refreshed-every-heartbeat"),
        pytest.param(0.05, 60.0, 60_000, id="refreshed-every-third-of-the-ttl"),
    ],
)
async def test_a_streams_keys_live_the_ttl_once_it_has_ended(
    url: str, client: Redis, heartbeat: float, ttl: float, live_ms: int
) -> None:
    async with opened(url, heartbeat=heartbeat, ttl=ttl, key_prefix="ttl:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1"])
        assert await store.drain(DEADLINE)
        for key in (recording.events_key, recording.meta_key):
            pttl = await client.pttl(key)
            assert live_ms - 5000 < pttl <= live_ms, (key, pttl)
        recording.finish()
        assert await store.drain(DEADLINE)
        for key in (recording.events_key, recording.meta_key):
            pttl = await client.pttl(key)
            assert max(0, ttl * 1000 - 5000) < pttl <= ttl * 1000, (key, pttl)


async def test_past_max_followers_a_reader_is_told_to_come_back(url: str) -> None:
    async with opened(url, max_followers=2, key_prefix="followers:") as store:
        # Each follower may hold a connection in a blocking read: the pool has room for them
        # and for the store's own tasks.
        assert store.client().connection_pool.max_connections == 2 + RESERVED_CONNECTIONS
        recording = store.record(lambda: None)
        followers = [await store.follow(recording.stream_id, 0) for _ in range(2)]
        with pytest.raises(StoreUnavailableError) as caught:
            await store.follow(recording.stream_id, 0)
        assert str(caught.value) == (
            "this instance follows 2 streams' readers already (max_followers); try again later"
        )
        await followers[0].aclose()
        await (await store.follow(recording.stream_id, 0)).aclose()


async def test_a_reader_far_behind_gets_its_events_in_bounded_batches(url: str) -> None:
    async with (
        opened(url, key_prefix="far-behind:") as owner,
        opened(url, key_prefix="far-behind:") as other,
    ):
        recording = owner.record(lambda: None)
        events = [b"%d" % n for n in range(1, READ_COUNT + 501)]
        recording.append(events)
        recording.finish()
        assert await owner.drain(DEADLINE)
        follower = await other.follow(recording.stream_id, 0)
        # One XREAD's worth at a time: a round trip stays bounded however far behind it is.
        first = await follower.next(POLL)
        assert first == numbered(events[:READ_COUNT])
        assert await read_to_end(follower) == numbered(events[READ_COUNT:], READ_COUNT + 1)
