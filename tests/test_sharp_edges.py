"""Options and limits that must not leave a door open: an empty API key, a resume path that
swallows requests, a readiness check anyone can make expensive, unbounded readers."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from sse_bridge import SSEBridgeMiddleware, create_proxy
from sse_bridge._cli.main import main
from sse_bridge._resume.redis.store import RESERVED_CONNECTIONS, RedisStore
from sse_bridge._resume.store import StoreUnavailableError
from sse_bridge._sidecar.ready import Readiness
from sse_bridge._types import Receive, Scope, Send
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._raw_upstream import raw_upstream
from tests._redis import redis_server
from tests._servers import serve
from tests._wire import fetch
from tests.test_resume_sidecar import SSE, chat
from tests.test_smuggling import exchange

pytestmark = pytest.mark.anyio

EMPTY_KEY = "api_key must not be empty: give a key, or None for no authentication"


def test_an_empty_api_key_is_refused_from_the_flag_and_the_environment() -> None:
    with pytest.raises(ValueError, match=EMPTY_KEY):
        create_proxy(upstream="http://h", api_key="")
    runner = CliRunner()
    by_flag = runner.invoke(main, ["serve", "--upstream", "http://h", "--api-key", ""])
    by_env = runner.invoke(
        main, ["serve", "--upstream", "http://h"], env={"SSE_BRIDGE_API_KEY": ""}
    )
    for result in (by_flag, by_env):
        assert result.exit_code == 2
        assert f"--{EMPTY_KEY}".replace("api_key", "api-key") in result.output


@pytest.mark.parametrize("path", ["/", "//", "/streams/"])
def test_the_root_is_no_resume_path(path: str) -> None:
    if path == "/streams/":
        SSEBridgeMiddleware(lambda *_: None, resume="memory", resume_path=path)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match="every request would be taken for a resume"):
        SSEBridgeMiddleware(lambda *_: None, resume="memory", resume_path=path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every request would be taken for a resume"):
        create_proxy(upstream="http://h", resume="memory", resume_path=path)


@pytest.mark.parametrize(
    ("resume_path", "commit_paths"),
    [
        ("/api", ("/api/chat",)),
        ("/api/", ("/api/generate",)),
        ("/api/chat", ("/api/chat",)),
        ("/x", ("/y", "/x/z")),
    ],
)
def test_a_resume_path_over_a_commit_path_is_refused(
    resume_path: str, commit_paths: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="overlaps the commit path"):
        create_proxy(upstream="http://h", resume_path=resume_path, commit_paths=commit_paths)
    create_proxy(upstream="http://h", resume_path="/apis", commit_paths=commit_paths)


async def test_readiness_asks_the_upstream_once_a_second_at_most() -> None:
    now = [100.0]
    with raw_upstream() as upstream:
        readiness = Readiness(httpx.URL(upstream.url), clock=lambda: now[0])
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(readiness.check)
        assert (readiness.asked, upstream.count()) == (1, 1)
        now[0] += 0.99
        assert await readiness.check() == (200, {"status": "ready"})
        assert upstream.count() == 1
        now[0] += 0.01
        await readiness.check()
        assert upstream.count() == 2
    now[0] += 1
    status, body = await readiness.check()  # the upstream has gone
    assert (status, body["status"]) == (503, "unavailable")


async def test_an_upstream_answering_5xx_is_not_ready() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with serve(failing) as url:
        assert await Readiness(httpx.URL(url)).check() == (
            503,
            {"status": "unavailable", "error": "upstream answered 500"},
        )


def test_readyz_asks_on_a_connection_apart_from_the_streams() -> None:
    with raw_upstream() as upstream, serve(create_proxy(upstream=upstream.url)) as url:
        request = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert exchange(url, request)[0] == 200
        started = time.monotonic()
        answers = [
            exchange(url, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            for _ in range(30)
        ]
        elapsed = time.monotonic() - started
        assert exchange(url, request)[0] == 200
        seen = list(upstream.requests)
    assert all(answer == (200, b'{"status": "ready"}') for answer in answers), answers[0]
    probes = [request for request in seen if request.path == "/"]
    streams = [request for request in seen if request.path == "/a"]
    # Once a second at most, whatever the rate: never one per request.
    assert 1 <= len(probes) <= 1 + int(elapsed)
    # The streams' pooled connection served both of their requests, and no probe.
    assert streams[0].connection == streams[1].connection
    assert streams[0].connection not in {probe.connection for probe in probes}


async def test_a_stream_has_max_readers_at_once_then_429() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=5, num_tokens=20))
    with serve(fake) as upstream:
        app = create_proxy(
            upstream=upstream,
            dialect="ollama",
            resume="memory",
            resume_max_readers=2,
            event_ids=True,
        )
        with serve(app) as url:
            first = await fetch(f"{url}/api/chat", body=chat(), headers=SSE, stop_after_events=1)
            sid = first.headers["x-stream-id"]
            resume = f"{url}/streams/{sid}"
            async with (
                httpx.AsyncClient(timeout=10) as client,
                contextlib.AsyncExitStack() as stack,
            ):
                statuses: list[int] = []
                for _ in range(2):
                    reader = await stack.enter_async_context(
                        client.stream("GET", resume, headers=SSE)
                    )
                    statuses.append(reader.status_code)
                full = await client.get(resume, headers=SSE)
                by_last_event_id = await client.post(
                    f"{url}/api/chat",
                    content=chat(),
                    headers={**SSE, "last-event-id": f"{sid}:1"},
                )
                stop = await client.delete(resume)  # a stop is no reader
            # The readers' places are given back as the server sees their connections end,
            # which may come after the client's next request: a 429 then says to retry.
            for _ in range(100):
                again = await fetch(resume, method="GET", body=b"", headers=SSE)
                if again.status != 429:
                    break
                await anyio.sleep(0.05)
    assert statuses == [200, 200]
    for refused in (full, by_last_event_id):
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "has 2 readers already" in refused.json()["error"]
    assert stop.status_code == 204
    assert again.status == 200  # the readers have left: room again


async def test_redis_followers_are_bounded_with_the_pool() -> None:
    with redis_server() as url:
        store = RedisStore(url, max_followers=2)
        await store.open()
        try:
            pool: Any = store.client().connection_pool
            assert pool.max_connections == 2 + RESERVED_CONNECTIONS
            recording = store.record(lambda: None)
            recording.append([b"data: 1\n\n"])
            followers = [await store.follow(recording.stream_id, 0) for _ in range(2)]
            with pytest.raises(StoreUnavailableError, match="max_followers"):
                await store.follow(recording.stream_id, 0)
            await followers[0].aclose()
            followers[0] = await store.follow(recording.stream_id, 0)
            for follower in followers:
                await follower.aclose()
        finally:
            await store.aclose()


def test_the_follower_benchmark_runs() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_follow.py",
            *("--followers", "3"),
            *("--events", "10,100", "--rounds", "5"),
        ],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "CPU per appended event" in completed.stdout
    assert completed.stdout.count(" ms") == 2
