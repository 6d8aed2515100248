"""The sidecar in front of the fake Ollama, both on real uvicorn servers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sse_bridge import create_proxy
from sse_bridge.probe import Stream
from sse_bridge.testing import FakeOllama, FakeOllamaConfig, RequestRecord, answer_tokens
from tests._servers import serve
from tests._wire import fetch

pytestmark = pytest.mark.anyio

SSE = {"accept": "text/event-stream"}


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama(FakeOllamaConfig(tokens_per_second=100, num_tokens=5))


@pytest.fixture
def stack(fake: FakeOllama) -> Iterator[tuple[FakeOllama, str]]:
    with serve(fake) as upstream, serve(create_proxy(upstream=upstream, dialect="ollama")) as url:
        yield fake, url


def chat(fake_options: dict[str, Any] | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    if fake_options:
        body["fake"] = fake_options
    body.update(extra)
    return json.dumps(body).encode()


def data(response: Stream) -> list[dict[str, Any]]:
    return [json.loads(event.data) for event in response.events]


async def test_ndjson_clients_and_sse_clients_through_the_sidecar(
    stack: tuple[FakeOllama, str],
) -> None:
    _, url = stack
    plain = await fetch(f"{url}/api/chat", body=chat())
    events = await fetch(f"{url}/api/chat", body=chat(), headers=SSE)
    assert plain.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in plain.body.splitlines()]
    assert [line["done"] for line in lines] == [False] * 5 + [True]
    assert events.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert events.headers["cache-control"] == "no-cache, no-transform"
    assert events.headers["x-accel-buffering"] == "no"
    tokens = [e["token"] for e in data(events)[:-1]]
    assert tokens == [line["message"]["content"] for line in lines[:-1]]
    assert data(events)[-1]["finished"] is True


def test_a_proxied_response_has_one_date_and_one_server_header(
    stack: tuple[FakeOllama, str],
) -> None:
    _, url = stack
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        for _ in range(1000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].decode().lower().splitlines()
    assert head[0] == "http/1.1 200 ok"
    names = [line.split(":", 1)[0] for line in head[1:]]
    assert names.count("date") == 1, head
    assert names.count("server") == 1, head


async def test_errors_before_the_stream_keep_their_status(stack: tuple[FakeOllama, str]) -> None:
    _, url = stack
    response = await fetch(f"{url}/api/chat", body=chat(model="nope"), headers=SSE)
    assert response.status == 404
    assert json.loads(response.body) == {"error": 'model "nope" not found, try pulling it first'}


async def test_midstream_error_and_abrupt_close(stack: tuple[FakeOllama, str]) -> None:
    _, url = stack
    failed = await fetch(f"{url}/api/chat", body=chat({"fail_after": 2}), headers=SSE)
    closed = await fetch(
        f"{url}/api/chat", body=chat({"fail_after": 2, "failure": "close"}), headers=SSE
    )
    assert data(failed)[-1] == {
        "error": "an error was encountered while running the model",
        "finished": True,
    }
    assert [e.get("token") is not None for e in data(closed)] == [True, True, False]
    assert data(closed)[-1]["error"].startswith("upstream connection lost mid-stream")
    assert closed.complete


@pytest.mark.timing
async def test_a_slow_model_load_commits_the_stream_and_sends_keepalives() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=50, num_tokens=3, load_delay=5))
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", keepalive=1, commit_after=1)
        with serve(app) as url:
            sse: list[Stream] = []
            plain: list[Stream] = []

            async def ask_sse() -> None:
                sse.append(await fetch(f"{url}/api/chat", body=chat(), headers=SSE, deadline=15))

            async def ask_plain() -> None:
                plain.append(await fetch(f"{url}/api/chat", body=chat(), deadline=15))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ask_sse)
                tasks.start_soon(ask_plain)
    (events,) = sse
    headers_at = events.time_to_headers
    assert headers_at is not None
    assert 0.9 <= headers_at <= 2.5, headers_at
    assert events.status == 200
    assert events.parser.comments.count("ping") >= 3
    assert [e.get("token") is not None for e in data(events)] == [True, True, True, False]
    first_token_at = events.event_times[0]
    assert first_token_at >= 4.9
    # A client that did not ask for SSE gets Ollama's behaviour: nothing until the model loads.
    (ndjson,) = plain
    assert ndjson.time_to_headers is not None
    assert ndjson.time_to_headers >= 4.9
    assert ndjson.headers["content-type"] == "application/x-ndjson"


async def test_stream_false_is_not_committed_but_a_late_json_answer_fits_a_commit() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=3, load_delay=0.6))
    with serve(fake) as upstream:
        app = create_proxy(upstream=upstream, dialect="ollama", commit_after=0.2)
        with serve(app) as url:
            whole = await fetch(f"{url}/api/chat", body=chat(stream=False), headers=SSE)
            error = await fetch(
                f"{url}/api/chat", body=chat({"fail_after": 0}, stream=False), headers=SSE
            )
            # Ollama answers a chat without messages with one JSON object (it only loads
            # the model), whatever the client asked: after a commit it becomes one line.
            load_only = json.dumps({"model": "llama3.2", "messages": []}).encode()
            loaded = await fetch(f"{url}/api/chat", body=load_only, headers=SSE)
    # "stream": false asks for one JSON answer: it arrives as such, when the model is ready.
    assert whole.headers["content-type"].startswith("application/json")
    assert whole.time_to_headers is not None
    assert whole.time_to_headers >= 0.55
    assert json.loads(whole.body)["message"]["content"] == fake_text(3)
    assert error.status == 500
    assert json.loads(error.body) == {"error": "an error was encountered while running the model"}
    assert loaded.status == 200
    assert loaded.headers["content-type"] == "text/event-stream; charset=utf-8"
    # Committed at 0.2 s, answered at 0.6 s: the headers come well ahead of the answer, however
    # slow the machine (an absolute bound would measure the machine).
    assert loaded.time_to_headers is not None
    assert loaded.time_to_headers < loaded.event_times[0] - 0.2
    (event,) = data(loaded)
    assert event["finished"] is True
    assert event["done_reason"] == "load"


def fake_text(tokens: int) -> str:
    """The first tokens of the fake's answer, joined."""
    return "".join(answer_tokens(tokens))


async def cancellation(fake: FakeOllama) -> RequestRecord:
    return await fake.records.wait_for(path="/api/chat", outcome="cancelled", timeout=3)


DISCONNECTS = pytest.mark.parametrize(
    ("fake_options", "commit_after", "stop_after", "phase"),
    [
        pytest.param({"load_delay": 10}, 0, 0, "before_headers", id="before-headers"),
        pytest.param({"load_delay": 10}, 0.2, 0, "before_headers", id="committed-before-headers"),
        pytest.param(
            {"tokens_per_second": 10, "num_tokens": 100}, 1, 3, "streaming", id="mid-stream"
        ),
        pytest.param(
            {"stall_after": 2, "stall_seconds": 30}, 1, 2, "stalled", id="during-keepalive-gap"
        ),
    ],
)


async def disconnect(
    fake_options: dict[str, Any], commit_after: float, stop_after: int
) -> tuple[RequestRecord, float]:
    """Leave a stream through the sidecar; the fake's record of it and when the client closed."""
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=100, num_tokens=5))
    with serve(fake) as upstream:
        app = create_proxy(
            upstream=upstream, dialect="ollama", keepalive=0.2, commit_after=commit_after
        )
        with serve(app) as url:

            async def client() -> None:
                await fetch(
                    f"{url}/api/chat",
                    body=chat(fake_options),
                    headers=SSE,
                    stop_after_events=stop_after or None,
                    deadline=0.8 if not stop_after else 10,
                )

            if stop_after:
                await client()
            else:
                # Nothing arrives before the client gives up: it leaves mid-wait.
                with pytest.raises(TimeoutError):
                    await client()
            closed_at = time.monotonic()
            record = await cancellation(fake)
    return record, closed_at


@DISCONNECTS
async def test_client_disconnect_cancels_the_upstream(
    fake_options: dict[str, Any], commit_after: float, stop_after: int, phase: str
) -> None:
    # Left alone, each of these generations would run for 10 s or more: a cancellation the fake
    # records within `cancellation`'s 3 s comes from the disconnect.
    record, _ = await disconnect(fake_options, commit_after, stop_after)
    assert record.outcome == "cancelled"
    assert record.cancelled_phase == phase


@pytest.mark.timing
@DISCONNECTS
async def test_client_disconnect_cancels_the_upstream_within_a_second(
    fake_options: dict[str, Any], commit_after: float, stop_after: int, phase: str
) -> None:
    # The promise: the upstream generation stops within 1 s of the client closing its socket.
    # Both times are read in this process (the servers run in its threads) on one clock.
    record, closed_at = await disconnect(fake_options, commit_after, stop_after)
    assert record.cancelled_phase == phase
    assert record.ended_at is not None
    assert record.ended_at - closed_at < 1.0


async def test_openai_compatible_sse_passes_through_with_anti_buffering_headers(
    stack: tuple[FakeOllama, str],
) -> None:
    _, url = stack
    body = chat(stream=True)
    response = await fetch(f"{url}/v1/chat/completions", body=body, headers=SSE)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.events[-1].data == "[DONE]"


def test_the_official_clients_work_through_the_sidecar(stack: tuple[FakeOllama, str]) -> None:
    _, url = stack
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    with ollama.Client(host=url) as client:
        parts = list(client.chat(model="llama3.2", messages=messages, stream=True))
    assert parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == fake_text(5)
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stream = sdk.chat.completions.create(model="llama3.2", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == fake_text(5)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=messages)
    sdk.close()


def test_the_official_clients_raise_on_a_midstream_error() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=5, fail_after=2))
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    with serve(fake) as upstream, serve(create_proxy(upstream=upstream)) as url:
        with (
            ollama.Client(host=url) as client,
            pytest.raises(ollama.ResponseError, match="an error was encountered"),
        ):
            list(client.chat(model="llama3.2", messages=messages, stream=True))
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = sdk.chat.completions.create(model="llama3.2", messages=messages, stream=True)
        with pytest.raises(openai.APIError, match="an error was encountered"):
            list(stream)
        sdk.close()


@pytest.mark.timing
async def test_the_pool_does_not_cap_concurrent_streams_at_100() -> None:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=5, num_tokens=50))
    streams = 120
    with serve(fake) as upstream, serve(create_proxy(upstream=upstream, dialect="ollama")) as url:
        host, port = url.removeprefix("http://").split(":")
        firsts: list[float] = []
        all_started = anyio.Event()
        body = chat()
        request = (
            f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

        async def one() -> None:
            # Every stream stays open until all have their first event: with a pool capped at
            # 100 connections, the last 20 would never get theirs.
            async with await anyio.connect_tcp(host, int(port)) as connection:
                await connection.send(request)
                received = b""
                while b"data: " not in received:
                    received += await connection.receive()
                # A token, not the error event a stream gets after waiting for a connection.
                if b'data: {"token"' in received:
                    firsts.append(time.monotonic())
                if len(firsts) == streams:
                    all_started.set()
                await all_started.wait()

        with anyio.move_on_after(8):
            async with anyio.create_task_group() as tasks:
                for _ in range(streams):
                    tasks.start_soon(one)
    assert len(firsts) == streams
    assert max(firsts) - min(firsts) < 2.0
