"""Resumable streams through the sidecar, in front of the fake Ollama, on real uvicorn servers."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any, Literal

import anyio
import pytest
from click.testing import CliRunner

from loadtests.stack import free_port
from sse_bridge import create_proxy
from sse_bridge._cli import server as _server
from sse_bridge._cli.main import main
from sse_bridge._resume.store import stream_tag
from sse_bridge._sidecar.options import ServerOptions, SidecarOptions
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._redis import redis_server, running_redis
from tests._servers import serve
from tests._wire import fetch

pytestmark = pytest.mark.anyio

SSE = {"accept": "text/event-stream"}


def chat(**fake: Any) -> bytes:
    body: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    if fake:
        body["fake"] = fake
    return json.dumps(body).encode()


def events(body: bytes) -> list[str]:
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def answer(body: bytes) -> list[Any]:
    """The events of a stream, without the timings that differ from one generation to the next."""
    values = [json.loads(data) for data in events(body)]
    for value in values:
        value.pop("usage", None)
    return values


async def test_the_api_key_guards_resume_and_stop() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=3))
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", resume="memory", api_key="k")
        with serve(app) as url:
            key = {"authorization": "Bearer k"}
            original = await fetch(f"{url}/api/chat", body=chat(), headers={**SSE, **key})
            sid = original.headers["x-stream-id"]
            path = f"{url}/streams/{sid}"
            anonymous = await fetch(path, method="GET", body=b"", headers=SSE)
            stop = await fetch(path, method="DELETE", body=b"")
            resumed = await fetch(path, method="GET", body=b"", headers={**SSE, **key})
    assert anonymous.status == 401
    assert stop.status == 401
    assert resumed.status == 200
    assert events(resumed.body) == events(original.body)


async def test_cors_exposes_the_stream_id() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=2))
    origin = "http://app.example"
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, resume="memory", cors_origins=[origin])
        with serve(app) as url:
            response = await fetch(
                f"{url}/api/chat", body=chat(), headers={**SSE, "origin": origin}
            )
            preflight = await fetch(
                f"{url}/streams/x",
                method="OPTIONS",
                body=b"",
                headers={"origin": origin, "access-control-request-method": "DELETE"},
            )
    exposed = [
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    ]
    assert "x-stream-id" in exposed
    assert preflight.status == 200
    assert "DELETE" in preflight.headers["access-control-allow-methods"]


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_log_lines_tag_the_stream_and_a_stop_without_its_id(
    caplog: pytest.LogCaptureFixture, log_format: Literal["text", "json"]
) -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=50, num_tokens=500))
    with serve(fake) as upstream:
        app = create_proxy(
            upstream=upstream, dialect="ollama", resume="memory", log_format=log_format
        )
        with caplog.at_level(logging.INFO, logger="sse_bridge"), serve(app) as url:
            async with anyio.create_task_group() as group:
                responses: list[Any] = []

                async def read() -> None:
                    responses.append(await fetch(f"{url}/api/chat", body=chat(), headers=SSE))

                group.start_soon(read)
                record = await fake.records.wait_for(
                    path="/api/chat", predicate=lambda r: r.tokens_sent >= 3, timeout=5
                )
                assert record is not None
                # The page would read X-Stream-Id; this client is still reading, so ask the
                # store for the one open stream.
                store = app.store
                assert store is not None
                (sid,) = store.streams  # type: ignore[attr-defined]
                stop = await fetch(f"{url}/streams/{sid}", method="DELETE", body=b"")
            cancelled = await fake.records.wait_for(
                path="/api/chat", outcome="cancelled", timeout=3
            )
    assert stop.status == 204
    assert cancelled.cancelled_phase == "streaming"
    assert json.loads(events(responses[0].body)[-1]) == {"finished": True, "done_reason": "stopped"}
    # The id is a key to the stream: no line carries it, each carries its tag.
    tag = stream_tag(sid)
    assert sid not in caplog.text
    lines = [r.getMessage() for r in caplog.records if r.name == "sse_bridge.access"]
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        chat_record = next(r for r in records if r["path"] == "/api/chat")
        assert (chat_record["outcome"], chat_record["stream_id"]) == ("stopped", tag)
        assert chat_record["events"] == len(events(responses[0].body))
        stop_record = next(r for r in records if r["method"] == "DELETE")
        assert (stop_record["path"], stop_record["status"]) == (f"/streams/{tag}", 204)
        assert (stop_record["outcome"], stop_record["stream_id"]) == ("stopped", tag)
        return
    chat_line = next(line for line in lines if "path=/api/chat" in line)
    assert chat_line.endswith(f"outcome=stopped stream_id={tag}")
    # Every event the client got is counted, the stop's final event included.
    assert f" events={len(events(responses[0].body))} " in chat_line, chat_line
    stop_line = next(line for line in lines if "method=DELETE" in line)
    assert f"path=/streams/{tag} status=204" in stop_line
    assert stop_line.endswith(f"outcome=stopped stream_id={tag}")


@pytest.mark.timing
async def test_a_client_that_leaves_is_given_the_grace_period() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=50, num_tokens=500))
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", resume="memory", resume_grace=0.5)
        with serve(app) as url:
            first = await fetch(f"{url}/api/chat", body=chat(), headers=SSE, stop_after_events=3)
            left = time.monotonic()
            cancelled = await fake.records.wait_for(
                path="/api/chat", outcome="cancelled", timeout=5
            )
            sid = first.headers["x-stream-id"]
            late = await fetch(f"{url}/streams/{sid}", method="GET", body=b"", headers=SSE)
    assert cancelled.ended_at is not None
    # The grace, and not a whole second of the store's polling more.
    assert 0.5 <= cancelled.ended_at - left < 0.5 + 0.35
    assert cancelled.tokens_sent > 3
    data = events(late.body)
    assert data[:3] == events(first.body)[:3]
    assert "nobody resumed it within 0.5 s" in json.loads(data[-1])["error"]
    assert len(fake.records) == 1


def test_memory_resume_refuses_several_workers() -> None:
    with pytest.raises(ValueError, match="use --resume redis://host:port/db with --workers"):
        _server.serve(
            ServerOptions(port=0, workers=2, log_level="warning"),
            SidecarOptions(upstream="http://127.0.0.1:9", resume="memory"),
        )


def test_serve_reads_the_resume_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(_server, "serve", lambda server, options: seen.update(options=options))
    env = {"SSE_BRIDGE_UPSTREAM": "http://127.0.0.1:11434", "SSE_BRIDGE_RESUME": "memory"}
    result = CliRunner().invoke(
        main, ["serve", "--resume-grace", "5", "--resume-ttl", "60"], env=env
    )
    assert result.exit_code == 0, result.output
    options = seen["options"]
    assert (options.resume, options.resume_grace, options.resume_ttl) == ("memory", 5, 60)
    result = CliRunner().invoke(main, ["serve"], env={"SSE_BRIDGE_UPSTREAM": "http://h"})
    assert seen["options"].resume is None


def test_serve_refuses_an_unknown_store() -> None:
    bad = CliRunner().invoke(main, ["serve", "--upstream", "http://h", "--resume", "disk"])
    assert bad.exit_code == 2
    assert "--resume must be 'memory', a redis://host:port/db URL, or off" in bad.output
    assert "store object" not in bad.output


# --- through Redis ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
        return
    with redis_server() as url:
        yield url


async def test_interrupted_at_event_5_and_resumed_through_either_store(store_url: str) -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=100, num_tokens=30))
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", resume=store_url)
        with serve(app) as url:
            whole = await fetch(f"{url}/api/chat", body=chat(), headers=SSE)
            generations = len(fake.records)
            first = await fetch(f"{url}/api/chat", body=chat(), headers=SSE, stop_after_events=5)
            sid = first.headers["x-stream-id"]
            rest = await fetch(
                f"{url}/streams/{sid}",
                method="GET",
                body=b"",
                headers={**SSE, "last-event-id": "5"},
            )
    assert rest.status == 200
    assert answer(first.body)[:5] + answer(rest.body) == answer(whole.body)
    assert len(answer(rest.body)) == 31 - 5
    assert len(fake.records) == generations + 1
    assert fake.records[-1].outcome == "completed"


def test_serve_exits_when_redis_cannot_be_reached() -> None:
    port = free_port()
    result = CliRunner().invoke(
        main,
        ["serve", "--upstream", "http://127.0.0.1:9", "--resume", f"redis://127.0.0.1:{port}/0"],
    )
    assert result.exit_code == 2
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in result.output


async def test_redis_lost_while_running(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=50, num_tokens=40))
    with running_redis() as redis, serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", resume=redis.url)
        with caplog.at_level(logging.WARNING, logger="sse_bridge"), serve(app) as url:
            whole = await fetch(f"{url}/api/chat", body=chat(), headers=SSE)
            streams: list[Any] = []

            async def read() -> None:
                streams.append(await fetch(f"{url}/api/chat", body=chat(), headers=SSE))

            async with anyio.create_task_group() as group:
                group.start_soon(read)
                await fake.records.wait_for(
                    predicate=lambda r: r.outcome is None and r.tokens_sent >= 3, timeout=5
                )
                await anyio.to_thread.run_sync(redis.stop)
                # The live stream goes on; a resume is refused until Redis returns.
                sid = app.store.live and next(iter(app.store.live))  # type: ignore[union-attr]
                with anyio.fail_after(10):
                    while True:
                        refused = await fetch(f"{url}/streams/{sid}", method="GET", body=b"")
                        if refused.status == 503:
                            break
                        await anyio.sleep(0.2)
            live = streams[0]
            assert answer(live.body) == answer(whole.body)
            await anyio.to_thread.run_sync(redis.start)
            store: Any = app.store
            # Until the owner has seen Redis back and sent it what it held: the stream (ended
            # meanwhile) is then Redis's alone to answer for.
            for _ in range(200):
                if store.available and not store.live:
                    break
                await anyio.sleep(0.05)
            with anyio.fail_after(10):
                while True:
                    again = await fetch(
                        f"{url}/streams/{live.headers['x-stream-id']}",
                        method="GET",
                        body=b"",
                        headers=SSE,
                    )
                    if again.status != 503:
                        break
                    await anyio.sleep(0.2)
            # Redis restarted empty (no persistence): the events it held are gone, and those
            # that waited in the owner while it was away reached it when it returned.
            assert again.status == 410
            oldest = int(
                re.findall(r"the oldest kept is (\d+)", json.loads(again.body)["error"])[0]
            )
            tail = await fetch(
                f"{url}/streams/{live.headers['x-stream-id']}",
                method="GET",
                body=b"",
                headers={**SSE, "last-event-id": str(oldest - 1)},
            )
            later = await fetch(f"{url}/api/chat", body=chat(), headers=SSE)
            resumed = await fetch(
                f"{url}/streams/{later.headers['x-stream-id']}", method="GET", body=b"", headers=SSE
            )
    assert json.loads(refused.body)["error"].startswith("the resume store (Redis at")
    assert answer(tail.body) == answer(whole.body)[oldest - 1 :]
    assert events(resumed.body) == events(later.body)
    transitions = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("sse_bridge: resume store")
    ]
    assert len(transitions) == 2
    assert transitions[0].startswith("sse_bridge: resume store unavailable")
    assert transitions[1] == "sse_bridge: resume store available again"
