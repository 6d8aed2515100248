"""Streams the Redis store lets go while they still run: dropped for the backlog's bound, or
abandoned because Redis refuses their writes. Their clients go on; nothing of them stays counted
against ``max_pending_bytes``, and a stop no longer reaches them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from sse_bridge._resume.store import UnknownStreamError
from tests._redis import RedisServer, redis_server, running_redis
from tests.test_resume_redis import DEADLINE, FAST, opened, until_unavailable

pytestmark = pytest.mark.anyio

EVENT = b"x" * 100


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with redis_server() as found:
        yield found


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with running_redis() as started:
        yield started


async def test_a_dropped_stream_keeps_nothing_more_and_is_not_stopped(server: RedisServer) -> None:
    async with opened(server.url, heartbeat=FAST, max_pending_bytes=250) as store:
        server.stop(save=False)
        await until_unavailable(store)
        stops: list[str] = []
        recording = store.record(lambda: stops.append("stopped"))
        recording.append([EVENT] * 3)
        assert recording.dropped
        assert store.backlog.bytes == 0
        # Its generation goes on for its own client: nothing of it is kept any more.
        recording.append([EVENT] * 2)
        assert not recording.pending
        assert store.backlog.bytes == 0
        # It is not resumable, so not stoppable either: the live client keeps its stream.
        await store.stop(recording.stream_id)
        assert stops == []
        server.start()
        assert await store.drain(DEADLINE)
        assert store.backlog.bytes == 0
        with pytest.raises(UnknownStreamError):
            await store.follow(recording.stream_id, 0)


async def test_a_stream_redis_refuses_leaves_nothing_counted_against_the_bound(url: str) -> None:
    async with opened(url, key_prefix="refused-bytes:") as store:
        recording = store.record(lambda: None)
        recording.append([b"e1"])
        assert await store.drain(DEADLINE)
        client = Redis.from_url(url)
        try:
            await client.delete(recording.events_key)
            await client.set(recording.events_key, b"not a stream")
        finally:
            await client.aclose()
        recording.append([EVENT, EVENT])
        assert store.backlog.bytes == 200
        assert await store.drain(DEADLINE)
        assert store.backlog.bytes == 0
        recording.append([EVENT])
        assert store.backlog.bytes == 0
