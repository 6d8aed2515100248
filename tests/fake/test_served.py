"""The fake under real uvicorn: read with httpx's raw iterators, the official `ollama` client and
the official `openai` SDK.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from sse_bridge._testing.fake import FakeOllama, FakeOllamaConfig
from sse_bridge._testing.fake.job import SAMPLE_ANSWER, SAMPLE_THINKING
from tests._servers import serve
from tests.fake._asgi import ANSWER_TOKENS, WEATHER_TOOL, chat


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeOllama, str]]:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    with serve(app) as base_url:
        yield app, base_url


@pytest.fixture
def fake(server: tuple[FakeOllama, str]) -> tuple[FakeOllama, str]:
    server[0].records.clear()
    return server


def read_lines(response: httpx.Response, *, stop_after: int = 100_000) -> list[tuple[float, bytes]]:
    """Split the raw body on b"\\n" only, stamping each line with the read that completed it."""
    buffer, lines = b"", list[tuple[float, bytes]]()
    for chunk in response.iter_raw():
        at = time.monotonic()
        *complete, buffer = (buffer + chunk).split(b"\n")
        lines.extend((at, line) for line in complete)
        if len(lines) >= stop_after:
            break
    return lines


def test_e2e_tokens_are_paced_and_arrive_one_by_one(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    body = chat(tokens_per_second=50, num_tokens=10)
    with (
        httpx.Client(base_url=url, timeout=5) as client,
        client.stream("POST", "/api/chat", json=body) as response,
    ):
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = read_lines(response)
    assert len(lines) == 11
    token_times = [at for at, _ in lines[:10]]
    assert token_times[-1] - token_times[0] >= 0.15
    assert len(set(token_times)) >= 5  # separate reads: the server flushed per token
    assert app.records.wait_for_blocking(outcome="completed").tokens_sent == 10


def test_e2e_load_delay_holds_back_the_headers(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    started = time.monotonic()
    with (
        httpx.Client(base_url=url, timeout=5) as client,
        client.stream("POST", "/api/chat", json=chat(load_delay=0.25, num_tokens=1)) as response,
    ):
        headers_at = time.monotonic()
        assert len(read_lines(response)) == 2
    assert headers_at - started >= 0.2
    record = app.records.wait_for_blocking(outcome="completed")
    assert record.headers_sent_at is not None
    # uvloop's timers have millisecond resolution and may fire a little early.
    assert record.headers_sent_at - record.started_at >= 0.24


def test_e2e_stall_leaves_a_gap(fake: tuple[FakeOllama, str]) -> None:
    _, url = fake
    body = chat(num_tokens=6, stall_after=3, stall_seconds=0.3)
    with (
        httpx.Client(base_url=url, timeout=5) as client,
        client.stream("POST", "/api/chat", json=body) as response,
    ):
        times = [at for at, _ in read_lines(response)]
    assert len(times) == 7
    assert times[3] - times[2] >= 0.25
    assert times[2] - times[0] < 0.25


def test_e2e_cancel_before_headers(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    timeout = httpx.Timeout(5, read=0.2)
    with httpx.Client(base_url=url, timeout=timeout) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/api/chat", json=chat(load_delay=30))
    record = app.records.wait_for_blocking(outcome="cancelled")
    assert (record.cancelled_phase, record.status, record.tokens_sent) == (
        "before_headers",
        None,
        0,
    )
    assert record.ended_at is not None
    assert record.ended_at - record.started_at < 5


def test_e2e_cancel_while_streaming(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    body = chat(tokens_per_second=50, num_tokens=500)
    with (
        httpx.Client(base_url=url, timeout=5) as client,
        client.stream("POST", "/api/chat", json=body) as response,
    ):
        assert len(read_lines(response, stop_after=2)) >= 2
    record = app.records.wait_for_blocking(outcome="cancelled")
    assert record.cancelled_phase == "streaming"
    assert 2 <= record.tokens_sent < 500


def test_e2e_cancel_while_stalled_is_visible_over_http(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    body = chat(num_tokens=10, stall_after=2, stall_seconds=30)
    with httpx.Client(base_url=url, timeout=5) as client:
        with client.stream("POST", "/api/chat", json=body) as response:
            assert len(read_lines(response, stop_after=2)) == 2
        record = app.records.wait_for_blocking(outcome="cancelled")
        assert (record.cancelled_phase, record.tokens_sent) == ("stalled", 2)
        # Tests that run the fake in another process ask over HTTP instead.
        listed = client.get("/_fake/requests").json()
        assert [(r["outcome"], r["cancelled_phase"]) for r in listed] == [("cancelled", "stalled")]
        assert client.delete("/_fake/requests").status_code == 204
        assert client.get("/_fake/requests").json() == []


def test_e2e_failure_close_drops_the_connection(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    body = chat(num_tokens=10, fail_after=3, failure="close")
    with (
        httpx.Client(base_url=url, timeout=5) as client,
        client.stream("POST", "/api/chat", json=body) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        read_lines(response)
    record = app.records.wait_for_blocking(outcome="failed")
    assert record.tokens_sent == 3


def test_e2e_records_forwarded_headers(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    with httpx.Client(base_url=url, timeout=5) as client:
        response = client.get("/api/version", headers={"X-Forwarded-For": "10.0.0.1"})
    assert response.json() == {"version": "0.12.0"}
    record = app.records.wait_for_blocking(path="/api/version")
    assert record.headers["x-forwarded-for"] == "10.0.0.1"


def test_e2e_official_ollama_client(fake: tuple[FakeOllama, str]) -> None:
    _, url = fake
    with ollama.Client(host=url) as client:
        parts = list(
            client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
        assert "".join(part.message.content or "" for part in parts) == SAMPLE_ANSWER
        assert parts[-1].done is True
        assert parts[-1].done_reason == "stop"
        assert parts[-1].eval_count == len(ANSWER_TOKENS)

        reply = client.generate(model="gemma4", prompt="hi", think=True)
        assert (reply.response, reply.thinking) == (SAMPLE_ANSWER, SAMPLE_THINKING)
        tools = client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]
        )
        assert tools.message.tool_calls is not None
        assert tools.message.tool_calls[0].function.name == "get_weather"
        listed = client.list()
        assert [model.model for model in listed.models] == [
            "llama3.2:latest",
            "gemma4:latest",
            "qwen2.5:7b",
        ]
        with pytest.raises(ollama.ResponseError) as missing:
            client.chat(model="llama9", messages=[{"role": "user", "content": "hi"}])
        assert missing.value.status_code == 404
        assert 'model "llama9" not found' in missing.value.error


def test_e2e_ollama_client_sees_the_midstream_error() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0, fail_after=3))
    with serve(app) as url, ollama.Client(host=url) as client:
        stream = client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(ollama.ResponseError, match="an error was encountered"):
            for _ in stream:
                pass
        assert app.records.wait_for_blocking(outcome="failed").tokens_sent == 3


def test_e2e_official_openai_sdk(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": "hi"}]
        stream = client.chat.completions.create(model="llama3.2", messages=messages, stream=True)
        chunks = list(stream)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        assert text == SAMPLE_ANSWER
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert len({chunk.id for chunk in chunks}) == 1

        completion = client.chat.completions.create(model="llama3.2", messages=messages)
        assert completion.choices[0].message.content == SAMPLE_ANSWER
        assert completion.usage is not None
        assert completion.usage.completion_tokens == len(ANSWER_TOKENS)

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=messages)
        failing = client.chat.completions.create(
            model="llama3.2", messages=messages, stream=True, extra_body={"fake": {"fail_after": 2}}
        )
        with pytest.raises(openai.APIError, match="an error was encountered"):
            for _ in failing:
                pass
    assert app.records.wait_for_blocking(outcome="failed").tokens_sent == 2
