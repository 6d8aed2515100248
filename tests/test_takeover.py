"""A takeover is never silent: an owner whose stream another instance ended as orphaned stops,
and its client gets a terminal error saying so, counted in the metrics.

An instance that loses Redis for longer than three heartbeats (a partition, a long pause) looks
dead to the others; a reader elsewhere ends its streams with an error. When the owner comes
back, Redis refuses its next events (their ids are taken); the writer used to count that as
success, and the events were dropped while the client went on as if they were kept.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from sse_bridge import SSEBridgeMiddleware
from sse_bridge._middleware.responder import TAKEN_OVER
from sse_bridge._resume.store import stream_tag
from sse_bridge.metrics import BridgeMetrics
from sse_bridge.resume import RedisStore
from tests._redis import redis_server
from tests._servers import serve
from tests.test_resume_redis import DEADLINE, numbered, opened, read_to_end

pytestmark = pytest.mark.anyio


async def test_the_owner_learns_its_stream_was_ended_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with redis_server() as url:
        async with opened(url) as a, opened(url) as b:
            stops: list[str] = []
            recording = a.record(lambda: stops.append("stopped"))
            recording.append([b"e1", b"e2"])
            assert await a.drain(DEADLINE)
            # B took A for dead and ended the stream after what it had read.
            await b.finish_orphan(recording.stream_id, 2, [b"error"])
            recording.append([b"e3"])
            assert await a.drain(DEADLINE)
            assert recording.taken_over
            assert stops == ["stopped"]
            recording.append([b"e4"])  # nothing more is kept, nor refused again
            assert await a.drain(DEADLINE)
            stored = await read_to_end(await b.follow(recording.stream_id, 0))
    assert stored == numbered([b"e1", b"e2", b"error"])
    assert stops == ["stopped"]
    [warning] = [r.getMessage() for r in caplog.records if "ended by another" in r.getMessage()]
    assert stream_tag(recording.stream_id) in warning


async def test_a_retried_round_trip_is_still_success_not_a_takeover() -> None:
    with redis_server() as url:
        async with opened(url) as a:
            stops: list[str] = []
            recording = a.record(lambda: stops.append("stopped"))
            recording.append([b"e1"])
            assert await a.drain(DEADLINE)
            # A round trip Redis did while its reply was lost: the writer sends e2 again.
            await a.client().xadd(recording.events_key, {"e": b"e2"}, id="2-0")
            recording.append([b"e2", b"e3"])
            recording.finish()
            assert await a.drain(DEADLINE)
            assert not recording.taken_over
            assert stops == []
            stored = await read_to_end(await a.follow(recording.stream_id, 0))
    assert stored == numbered([b"e1", b"e2", b"e3"])


async def test_the_owners_client_gets_an_error_event_and_it_is_counted() -> None:
    registry = CollectorRegistry()
    metrics = BridgeMetrics(registry)

    async def tokens(request: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            for index in range(400):
                yield json.dumps({"response": f"t{index}", "done": False}) + "\n"
                await anyio.sleep(0.01)
            yield json.dumps({"response": "", "done": True}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    app = Starlette(routes=[Route("/chat", tokens, methods=["POST"])])
    with redis_server() as url:
        owner = RedisStore(url)
        bridged = SSEBridgeMiddleware(app, dialect="ollama", resume=owner, metrics=metrics)
        with serve(bridged) as base:
            async with opened(url) as other, httpx.AsyncClient(timeout=DEADLINE) as client:
                data: list[str] = []
                headers = {"accept": "text/event-stream"}
                async with client.stream("POST", f"{base}/chat", json={}, headers=headers) as r:
                    sid = r.headers["x-stream-id"]
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            data.append(line[6:])
                        if len(data) == 5:
                            # Another instance ends the stream after what the owner had made.
                            last = owner.live[sid].last
                            await other.finish_orphan(sid, last, [b'data: {"error":"x"}\n\n'])
    final = json.loads(data[-1])
    assert final == {"error": TAKEN_OVER, "finished": True}
    assert len(data) < 300  # it ended at the takeover, not with the generation
    taken = registry.get_sample_value(
        "sse_bridge_streams_total", {"dialect": "ollama", "outcome": "taken_over"}
    )
    assert taken == 1
