from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from loadtests.stack import bridges as two_bridges
from loadtests.stack import fake_ollama
from tests._redis import RedisServer, redis_server, running_redis


@pytest.fixture
def anyio_backend() -> str:
    # uvicorn runs apps on asyncio; that is the loop these tests must hold up on.
    return "asyncio"


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    """The fake Ollama as a process of its own (``sse-bridge fake-ollama``): its URL.

    Modules that want the fake in-process define a ``fake`` fixture of their own instead.
    """
    with fake_ollama() as url:
        yield url


@pytest.fixture(scope="module")
def bridges(fake: str) -> Iterator[list[int]]:
    """Two ``sse-bridge serve`` processes in front of ``fake``: their ports."""
    with two_bridges(fake) as ports:
        yield ports


# The Redis store's tests (tests/test_resume_redis*.py) share these three; a module that means
# something else by one of the names defines its own, which takes precedence.
@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A redis-server for the module, on a free loopback port: its URL."""
    with redis_server() as found:
        yield found


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own, for the tests that stop and restart it."""
    with running_redis() as started:
        yield started


@pytest.fixture
async def client(url: str) -> AsyncIterator[Redis]:
    """A plain client of ``url``, to look at and change the store's keys behind its back."""
    redis = Redis.from_url(url)
    try:
        yield redis
    finally:
        await redis.aclose()
