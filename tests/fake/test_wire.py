"""The fake's bytes: Go's JSON and timestamps, and each endpoint's framing, as Ollama writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sse_bridge._testing.fake import FakeOllama, FakeOllamaConfig
from sse_bridge._testing.fake.job import SAMPLE_ANSWER, SAMPLE_THINKING
from sse_bridge._testing.fake.wire import rfc3339
from tests.fake._asgi import (
    ANSWER_TOKENS,
    CHAT,
    CREATED_AT,
    FAST,
    METRICS,
    WEATHER_TOOL,
    call,
    go_json,
)

# Ollama's own text when a model fails mid-generation, which the fake sends.
ERROR_MESSAGE = "an error was encountered while running the model"


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_690_000_000_123_456_789, "2023-07-22T04:26:40.123456789Z"),
        (1_690_000_000_120_000_000, "2023-07-22T04:26:40.12Z"),
        (1_690_000_000_000_000_001, "2023-07-22T04:26:40.000000001Z"),
    ],
)
def test_created_at_is_rfc3339_with_gos_trimmed_nanoseconds(ns: int, text: str) -> None:
    assert rfc3339(ns) == text


@pytest.mark.anyio
async def test_chat_streams_one_go_escaped_line_per_message() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    sent = await call(app, "POST", "/api/chat", CHAT)

    assert sent.status == 200
    assert sent.headers["content-type"] == "application/x-ndjson"
    assert "content-length" not in sent.headers
    # One line per ASGI message, so every token is its own write (its own flush).
    assert all(chunk.count(b"\n") == 1 and chunk.endswith(b"\n") for chunk in sent.chunks)
    assert sent.finished
    lines = sent.lines()
    assert len(lines) == len(ANSWER_TOKENS) + 1
    assert "".join(line["message"]["content"] for line in lines) == SAMPLE_ANSWER
    first = lines[0]
    assert list(first) == ["model", "created_at", "message", "done"]
    assert first["message"] == {"role": "assistant", "content": ANSWER_TOKENS[0]}
    assert first["model"] == "llama3.2"
    assert all(CREATED_AT.match(line["created_at"]) for line in lines)
    done = lines[-1]
    assert done["done"] is True
    assert done["done_reason"] == "stop"
    assert done["message"] == {"role": "assistant", "content": ""}
    assert all(isinstance(done[key], int) and done[key] > 0 for key in METRICS)
    assert done["eval_count"] == len(ANSWER_TOKENS)
    # Go's encoder: compact, <>& escaped, other non-ASCII raw.
    assert b"\\u003c" in sent.body
    assert b"\\u0026" in sent.body
    assert b"<" not in sent.body
    assert b"&" not in sent.body
    assert all(line == go_json(json.loads(line)) for line in sent.body.split(b"\n")[:-1])
    assert "\u2014".encode() in sent.body
    record = app.records[0]
    assert (record.outcome, record.status, record.tokens_sent) == ("completed", 200, 66)
    assert record.cancelled_phase is None
    assert record.body == CHAT


@pytest.mark.anyio
async def test_line_separators_and_lone_surrogates_never_go_out_raw() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0, models=("odd\u2028name\u2029",)))
    sent = await call(app, "POST", "/api/chat", CHAT | {"model": "odd\u2028name\u2029"})
    assert sent.lines()[0]["model"] == "odd\u2028name\u2029"
    assert b"odd\\u2028name\\u2029" in sent.body
    assert "\u2028".encode() not in sent.body
    # A lone surrogate has no UTF-8 form; it must not crash the error response.
    missing = await call(app, "POST", "/api/chat", b'{"model":"\\ud800","messages":[]}')
    assert missing.status == 404
    assert missing.json() == {"error": 'model "?" not found, try pulling it first'}


@pytest.mark.anyio
async def test_generate_streams_response_field_and_context() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    sent = await call(app, "POST", "/api/generate", {"model": "gemma4", "prompt": "Say hi"})
    lines = sent.lines()
    assert list(lines[0]) == ["model", "created_at", "response", "done"]
    assert "".join(line["response"] for line in lines) == SAMPLE_ANSWER
    done = lines[-1]
    assert (done["done"], done["done_reason"], done["response"]) == (True, "stop", "")
    assert done["context"] == list(range(1, 2 + len(ANSWER_TOKENS) + 1))
    assert all(done[key] > 0 for key in METRICS)


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "field"), [("/api/chat", "message"), ("/api/generate", "")])
async def test_stream_false_returns_one_json_object(path: str, field: str) -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    body = CHAT | {"prompt": "hi", "stream": False}
    sent = await call(app, "POST", path, body)
    assert sent.status == 200
    assert sent.headers["content-type"] == "application/json; charset=utf-8"
    assert int(sent.headers["content-length"]) == len(sent.body)
    answer = sent.json()
    text = answer["message"]["content"] if field else answer["response"]
    assert text == SAMPLE_ANSWER
    assert (answer["done"], answer["done_reason"]) == (True, "stop")
    assert answer["eval_count"] == len(ANSWER_TOKENS) == app.records[0].tokens_sent


# --- the OpenAI-compatible endpoint ---------------------------------------------------------


def openai_body(**extra: Any) -> dict[str, Any]:
    return CHAT | {"fake": FAST} | extra


@pytest.mark.anyio
async def test_openai_streams_sse_chunks_then_done() -> None:
    app = FakeOllama()
    sent = await call(app, "POST", "/v1/chat/completions", openai_body(stream=True))
    assert sent.headers["content-type"] == "text/event-stream"
    assert all(chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1 for chunk in sent.chunks)
    events = sent.events()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "llama3.2" for chunk in chunks)
    assert isinstance(chunks[0]["created"], int)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
    assert text == SAMPLE_ANSWER
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[-2:]] == [None, "stop"]
    assert b"\\u003c" in sent.body


@pytest.mark.anyio
async def test_openai_without_stream_returns_a_completion_with_usage() -> None:
    app = FakeOllama()
    completion = (await call(app, "POST", "/v1/chat/completions", openai_body())).json()
    assert completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": SAMPLE_ANSWER}
    assert choice["finish_reason"] == "stop"
    assert completion["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": len(ANSWER_TOKENS),
        "total_tokens": 5 + len(ANSWER_TOKENS),
    }


@pytest.mark.anyio
async def test_openai_usage_tools_reasoning_and_length() -> None:
    app = FakeOllama()
    usage = await call(
        app,
        "POST",
        "/v1/chat/completions",
        openai_body(stream=True, max_tokens=3, stream_options={"include_usage": True}),
    )
    events = usage.events()
    finish, totals = json.loads(events[-3]), json.loads(events[-2])
    assert finish["choices"][0]["finish_reason"] == "length"
    assert totals["choices"] == []
    assert totals["usage"]["completion_tokens"] == 3

    tools = await call(
        app, "POST", "/v1/chat/completions", openai_body(stream=True, tools=[WEATHER_TOOL])
    )
    first, finish = (json.loads(event) for event in tools.events()[:2])
    (tool_call,) = first["choices"][0]["delta"]["tool_calls"]
    assert (tool_call["index"], tool_call["type"]) == (0, "function")
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"])["city"] == "example"
    assert finish["choices"][0]["finish_reason"] == "tool_calls"

    reasoning = await call(app, "POST", "/v1/chat/completions", openai_body(reasoning_effort="low"))
    message = reasoning.json()["choices"][0]["message"]
    assert (message["reasoning"], message["content"]) == (SAMPLE_THINKING, SAMPLE_ANSWER)
    plain = await call(app, "POST", "/v1/chat/completions", openai_body(reasoning_effort="none"))
    assert "reasoning" not in plain.json()["choices"][0]["message"]
    capped = await call(app, "POST", "/v1/chat/completions", openai_body(max_completion_tokens=2))
    assert capped.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.anyio
async def test_openai_faults_use_its_own_framing() -> None:
    app = FakeOllama()
    failing = openai_body(stream=True, fake=FAST | {"fail_after": 2})
    events = (await call(app, "POST", "/v1/chat/completions", failing)).events()
    assert len(events) == 3
    assert json.loads(events[-1]) == {"error": {"message": ERROR_MESSAGE, "type": "api_error"}}
    malformed = openai_body(stream=True, fake=FAST | {"num_tokens": 2, "malformed_every": 1})
    events = (await call(app, "POST", "/v1/chat/completions", malformed)).events()
    assert events.count("this is not json") == 2
    failing = openai_body(fake=FAST | {"fail_after": 0})
    sent = await call(app, "POST", "/v1/chat/completions", failing)
    assert sent.status == 500
    assert sent.json()["error"]["type"] == "api_error"


@pytest.mark.anyio
async def test_openai_errors_have_openais_shape() -> None:
    app = FakeOllama()
    missing = await call(app, "POST", "/v1/chat/completions", CHAT | {"model": "gpt-4o"})
    assert missing.status == 404
    assert missing.json() == {
        "error": {
            "message": 'model "gpt-4o" not found, try pulling it first',
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }
    empty = await call(app, "POST", "/v1/chat/completions", {"model": "llama3.2", "messages": []})
    assert empty.status == 400
    assert empty.json()["error"]["type"] == "invalid_request_error"
    assert "messages" in empty.json()["error"]["message"]
    bad = await call(app, "POST", "/v1/chat/completions", CHAT | {"max_tokens": "10"})
    assert "max_tokens must be an integer" in bad.json()["error"]["message"]
