"""The total bound on what waits for Redis (``max_pending_bytes``), on a real redis-server that
goes away: the oldest finished streams stop being resumable first, the count is exported, one
line is logged per outage, and the live stream's own client is never affected."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from loadtests.stack import free_port
from sse_bridge import SSEBridgeMiddleware
from sse_bridge._metrics.prometheus import BridgeMetrics
from sse_bridge._resume.redis.backlog import DEFAULT_MAX_PENDING_BYTES
from sse_bridge._resume.redis.store import RedisStore
from sse_bridge._resume.store import UnknownStreamError
from tests._redis import RedisServer
from tests.test_resume_redis import (
    DEADLINE,
    FAST,
    numbered,
    opened,
    read_to_end,
    until_unavailable,
)

pytestmark = pytest.mark.anyio

EVENT = b"x" * 100


def backlog_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "max_pending_bytes" in r.getMessage()]


async def test_past_the_bound_the_oldest_finished_streams_go_first(
    server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")
    metrics = BridgeMetrics(CollectorRegistry())
    async with opened(server.url, heartbeat=FAST, max_pending_bytes=1000) as store:
        metrics.watch_store(store)
        server.stop(save=False)
        await until_unavailable(store)
        old, newer, live = (store.record(lambda: None) for _ in range(3))
        old.append([EVENT] * 3)
        old.finish()
        newer.append([EVENT] * 3)
        newer.finish()
        live.append([EVENT] * 3)
        assert store.backlog.bytes == 900
        # 1,000 bytes passed: the oldest finished stream goes, whole; the others stay.
        live.append([EVENT] * 2)
        assert (old.dropped, newer.dropped, live.dropped) == (True, False, False)
        assert store.backlog.bytes == 800
        assert store.backlog.dropped == 3
        # Again: the next finished one, before any live one.
        live.append([EVENT] * 3)
        assert (newer.dropped, live.dropped) == (True, False)
        assert len(live.pending) == 8
        # Only live streams are left: the oldest of them stops being resumable too.
        live.append([EVENT] * 3)
        assert live.dropped
        assert store.backlog.bytes == 0
        assert store.backlog.dropped == 3 + 3 + 11
        assert metrics.registry is not None
        assert metrics.registry.get_sample_value("sse_bridge_resume_dropped_total") == 17
        # One line for the whole outage.
        assert len(backlog_lines(caplog)) == 1
        kept = store.record(lambda: None)
        kept.append([EVENT])
        kept.finish()
        server.start()
        assert await store.drain(DEADLINE)
        # The dropped streams are gone from Redis rather than kept with a hole.
        for dropped in (old, newer, live):
            with pytest.raises(UnknownStreamError):
                await store.follow(dropped.stream_id, 0)
        assert await read_to_end(await store.follow(kept.stream_id, 0)) == numbered([EVENT])
        assert store.backlog.bytes == 0
        # A second outage logs again.
        server.stop(save=False)
        await until_unavailable(store)
        again = store.record(lambda: None)
        again.append([EVENT] * 11)
        assert again.dropped
        assert len(backlog_lines(caplog)) == 2


async def test_within_the_bound_an_outage_loses_nothing(server: RedisServer) -> None:
    async with opened(server.url, heartbeat=FAST, max_pending_bytes=10_000) as store:
        server.stop(save=True)
        await until_unavailable(store)
        recordings = [store.record(lambda: None) for _ in range(5)]
        for recording in recordings:
            recording.append([EVENT] * 10)
            recording.finish()
        assert store.backlog.bytes == 5000
        server.start()
        assert await store.drain(DEADLINE)
        assert store.backlog.bytes == 0
        for recording in recordings:
            events = await read_to_end(await store.follow(recording.stream_id, 0))
            assert events == numbered([EVENT] * 10)


async def test_the_live_client_gets_every_event_while_its_copy_is_dropped(
    server: RedisServer,
) -> None:
    """Through the middleware: Redis stopped, a stream far past the bound, its client whole."""
    sent: list[bytes] = []
    lines = [b'{"n":%d}\n' % n for n in range(200)]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for line in lines:
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    store = RedisStore(server.url, heartbeat=FAST, max_pending_bytes=500)
    await store.open()
    try:
        server.stop(save=False)
        await until_unavailable(store)
        middleware = SSEBridgeMiddleware(app, resume=store, keepalive=0, send_timeout=0)
        assert middleware.endpoints is not None
        middleware.endpoints.opened = True  # opened above, while Redis was there
        body = [False]

        async def receive() -> dict[str, Any]:
            if not body[0]:
                body[0] = True
                return {"type": "http.request", "body": b"{}", "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/chat",
            "query_string": b"",
            "headers": [(b"accept", b"text/event-stream")],
        }
        with anyio.fail_after(DEADLINE):
            await middleware(scope, receive, send)
        assert store.backlog.dropped > 0
        data = b"".join(sent)
        assert [b'data: {"n":%d}' % n in data for n in range(200)] == [True] * 200
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", DEFAULT_MAX_PENDING_BYTES), ("?max_pending_bytes=4096", 4096)],
)
def test_the_bound_comes_from_the_urls_query_too(query: str, expected: int) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0{query}")
    assert store.backlog.limit == expected
    assert "max_pending_bytes" not in store.url


@pytest.mark.parametrize(
    "query",
    ["?max_pending_bytes=", "?max_pending_bytes=-1", "?max_pending_bytes=1&max_pending_bytes=2"],
)
def test_a_bad_bound_in_the_url_is_refused(query: str) -> None:
    with pytest.raises(ValueError, match="max_pending_bytes"):
        RedisStore(f"redis://127.0.0.1:6379/0{query}")


def test_a_bound_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="max_pending_bytes"):
        RedisStore("redis://127.0.0.1:6379/0", max_pending_bytes=0)


def test_other_query_parameters_stay_for_redis_py() -> None:
    store = RedisStore("redis://127.0.0.1:6379/0?max_pending_bytes=10&socket_timeout=5")
    assert store.url == "redis://127.0.0.1:6379/0?socket_timeout=5"
    assert FAST > 0
