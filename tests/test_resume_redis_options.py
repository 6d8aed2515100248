"""The Redis store's options as a user meets them: each bad value refused in so many words, and
the defaults as they show in Redis (the instance key's life, a finished stream's, the key prefix)
and in the connection pool."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.asyncio import Redis

from sse_bridge._resume.redis.store import RESERVED_CONNECTIONS, RedisStore
from tests.test_resume_redis import DEADLINE, opened

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        (
            "http://user:secret@localhost:6379",
            {},
            "the resume store URL must start with redis://, rediss:// or unix://, "
            "got 'http://user:***@localhost:6379'",
        ),
        (
            None,
            {},
            "the resume store URL must start with redis://, rediss:// or unix://, got None",
        ),
        (
            URL,
            {"ttl": -1},
            "resume ttl must be a finite number of seconds >= 0 (how long a finished stream "
            "stays resumable), got -1",
        ),
        (
            URL,
            {"max_stream_bytes": 0},
            "max_stream_bytes must be an integer >= 1 (bytes of events one stream keeps), got 0",
        ),
        (
            URL,
            {"max_pending_bytes": 0},
            "max_pending_bytes must be an integer >= 1 (bytes of events waiting for Redis in "
            "all), got 0",
        ),
        (
            f"{URL}?max_pending_bytes=0",
            {},
            "max_pending_bytes must be an integer >= 1 (bytes of events waiting for Redis in "
            "all), got 0",
        ),
        (
            f"{URL}?max_pending_bytes=1kB",
            {},
            "max_pending_bytes in the resume store URL must be one number of bytes",
        ),
        (
            URL,
            {"heartbeat": -1},
            "heartbeat must be a finite number of seconds >= 0 (how often this instance tells "
            "Redis it lives), got -1",
        ),
        (URL, {"heartbeat": 0.005}, "heartbeat must be at least 0.01 seconds, got 0.005"),
        (
            URL,
            {"flush_window": -1},
            "flush_window must be a finite number of seconds >= 0 (before each round trip to "
            "Redis), got -1",
        ),
        (
            URL,
            {"max_followers": 0},
            "max_followers must be an integer >= 1 (readers followed at once), got 0",
        ),
    ],
)
def test_each_bad_option_is_refused_in_so_many_words(
    url: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RedisStore(url, **options)


def test_the_smallest_heartbeat_and_a_pending_bound_of_one_byte_are_taken() -> None:
    store = RedisStore(URL, heartbeat=0.01, max_pending_bytes=1)
    assert (store.heartbeat, store.backlog.limit) == (0.01, 1)


async def test_the_defaults_as_redis_shows_them(url: str, client: Redis) -> None:
    async with opened(url) as store:
        # A heartbeat a second: the instance key lives three of them.
        pttl = await client.pttl(f"sse_bridge:instance:{store.instance_id}")
        assert 2000 < pttl <= 3000, pttl
        assert store.client().connection_pool.max_connections == 256 + RESERVED_CONNECTIONS
        recording = store.record(lambda: None)
        recording.append([b"e1"])
        recording.finish()
        assert await store.drain(DEADLINE)
        # Under the default prefix, a finished stream stays five minutes.
        for key in (
            f"sse_bridge:{recording.stream_id}:events",
            f"sse_bridge:{recording.stream_id}:meta",
        ):
            pttl = await client.pttl(key)
            assert 295_000 < pttl <= 300_000, (key, pttl)
