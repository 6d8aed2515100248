"""What the Redis store promises in figures, checked in Redis itself: the expiry of each key, the
heartbeat's tolerance, which stream of a group commit a refusal belongs to, and that aclose()
ends whatever the store's tasks were doing."""

from __future__ import annotations

import logging

import anyio
import pytest
from redis.asyncio import Redis

from sse_bridge._resume.redis.store import RedisStore
from sse_bridge._resume.store import (
    EventsGoneError,
    OwnerLostError,
    UnknownStreamError,
    stream_tag,
)
from tests.test_resume import Generation, Leaver, bridge, get, run, uninterrupted
from tests.test_resume_redis import DEADLINE, POLL, numbered, opened, read, read_to_end

pytestmark = pytest.mark.anyio

# Long enough that no heartbeat comes during a test that sets the keys by hand.
SLOW = 10.0
LAST_EVENT_2 = [(b"last-event-id", b"2")]


async def test_aclose_ends_even_when_a_cancel_is_lost(url: str) -> None:
    # The heartbeat's first round trip connects one heartbeat after open(): closing around that
    # instant, a little later each time, is where redis-py's write could swallow the cancel.
    for attempt in range(50):
        store = RedisStore(url, heartbeat=0.01, key_prefix="close:")
        await store.open()
        await anyio.sleep(0.01 + (attempt % 20) * 0.0005)
        with anyio.fail_after(DEADLINE):
            await store.aclose()
        assert not store.tasks, (attempt, store.tasks)


async def test_the_instance_key_lives_three_heartbeats(url: str, client: Redis) -> None:
    async with opened(url, heartbeat=SLOW, key_prefix="instance-ttl:") as store:
        pttl = await client.pttl(store.keys.instance(store.instance_id))
        # Set at open() to 30 000 ms: what is left of it a moment later.
        assert 3 * SLOW * 1000 - 5000 < pttl <= 3 * SLOW * 1000, pttl


async def test_the_heartbeat_keeps_a_live_streams_keys_from_expiring(
    url: str, client: Redis
) -> None:
    # ttl 0.3 s: the keys of a live stream live 300 ms and are set again every 100 ms.
    async with opened(url, heartbeat=0.05, ttl=0.3, key_prefix="refresh:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1"])
        assert await store.drain(DEADLINE)
        keys = [recording.events_key, recording.meta_key]
        for key in keys:
            await client.pexpire(key, 1_000_000)
        with anyio.fail_after(DEADLINE):
            for _ in range(int(DEADLINE / 0.01)):
                if await client.pttl(recording.events_key) <= 300:
                    break
                await anyio.sleep(0.01)
        # One pipeline sets both: once the events key is back to 300 ms, the meta key is too.
        assert 0 < await client.pttl(recording.meta_key) <= 300


async def test_a_refusal_in_a_group_commit_abandons_only_its_own_stream(
    url: str, client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    async with opened(url, key_prefix="group:") as store:
        first, middle, last = (store.record(lambda: None) for _ in range(3))
        assert await store.drain(DEADLINE)
        # Anything that makes XADD fail for the middle stream: its events key holds a string.
        await client.set(middle.events_key, b"not a stream")
        for recording in (first, middle, last):
            recording.append([b"e1", b"e2"])
        # One round trip: every stream was marked before the writer's flush window ended.
        assert len(store.writer.dirty) == 3
        assert await store.drain(DEADLINE)
        for recording in (first, last):
            recording.finish()
        assert await store.drain(DEADLINE)
        for recording in (first, last):
            follower = await store.follow(recording.stream_id, 0)
            assert await read_to_end(follower) == numbered([b"e1", b"e2"])
        with pytest.raises(UnknownStreamError):
            await store.follow(middle.stream_id, 0)
        warnings = [r.getMessage() for r in caplog.records if "refused stream" in r.getMessage()]
        assert warnings == [
            f"sse_bridge: resume store refused stream {stream_tag(middle.stream_id)}, which "
            "cannot be resumed: WRONGTYPE Operation against a key holding the wrong kind of value"
        ]


async def test_a_lost_last_event_is_a_gap_before_the_end(url: str, client: Redis) -> None:
    async with opened(url, key_prefix="end-gap:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1", b"e2", b"e3"])
        recording.finish()
        assert await store.drain(DEADLINE)
        # Redis lost event 3 and kept the end (``3-1``) that follows it.
        assert await client.xdel(recording.events_key, "3-0") == 1
        follower = await store.follow(recording.stream_id, 0)
        assert await read(follower, 2) == numbered([b"e1", b"e2"])
        with pytest.raises(EventsGoneError, match=r"events after 2 .* oldest kept is 3\)"):
            await follower.next(POLL)


async def test_an_owner_is_lost_only_after_two_heartbeats_without_its_key(
    url: str, client: Redis
) -> None:
    async with (
        opened(url, heartbeat=SLOW, key_prefix="tolerance:") as owner,
        opened(url, heartbeat=SLOW, key_prefix="tolerance:") as reader,
    ):
        recording = owner.record(lambda: None)
        recording.append([b"e1"])
        assert await owner.drain(DEADLINE)
        follower = await reader.follow(recording.stream_id, 0)
        instance_key = owner.keys.instance(owner.instance_id)
        # The clock is the follower's argument: each check below is at an exact instant.
        await follower.check_owner(100.0)
        assert await client.delete(instance_key) == 1
        await follower.check_owner(100.0)  # first seen missing: a Redis restart looks the same
        await follower.check_owner(100.0 + 2 * SLOW - 0.001)
        # The key is back before the two heartbeats are over: the count starts again.
        await client.set(instance_key, b"1")
        await follower.check_owner(110.0)
        await client.delete(instance_key)
        await follower.check_owner(120.0)
        await follower.check_owner(120.0 + 2 * SLOW - 0.001)
        with pytest.raises(OwnerLostError, match=r"stopped before its end \(the last event is 0\)"):
            await follower.check_owner(120.0 + 2 * SLOW)


async def test_the_middleware_records_in_it_and_another_instance_resumes(url: str) -> None:
    # Each middleware opens its store itself, as a server's lifespan would.
    a, b = RedisStore(url, key_prefix="bridged:"), RedisStore(url, key_prefix="bridged:")
    try:
        original = Leaver()
        await run(bridge(Generation(), resume=a), original)
        sid = original.headers[b"x-stream-id"].decode()
        assert await a.drain(DEADLINE)
        reader = Leaver()
        await run(bridge(Generation(), resume=b), reader, get(f"/streams/{sid}", LAST_EVENT_2))
    finally:
        await a.aclose()
        await b.aclose()
    assert original.data == await uninterrupted()
    assert reader.data == original.data[2:]
