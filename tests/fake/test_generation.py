"""What a request gets generated: thinking, tool calls, lengths, pacing and the injected faults."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_bridge._testing.fake import FakeOllama, FakeOllamaAbort, FakeOllamaConfig, answer_tokens
from sse_bridge._testing.fake.job import SAMPLE_ANSWER, SAMPLE_THINKING
from tests.fake._asgi import (
    ANSWER_TOKENS,
    CHAT,
    FAST,
    THINKING_TOKENS,
    WEATHER_TOOL,
    Exchange,
    body_count,
    call,
    chat,
)

# Ollama's own text when a model fails mid-generation, which the fake sends.
ERROR_MESSAGE = "an error was encountered while running the model"


@pytest.mark.anyio
async def test_think_sends_thinking_chunks_first() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    asked = (await call(app, "POST", "/api/chat", CHAT | {"think": True})).lines()
    forced = (await call(app, "POST", "/api/chat", chat(think=True))).lines()
    for lines in (asked, forced):
        thinking = lines[: len(THINKING_TOKENS)]
        assert all(line["message"]["content"] == "" for line in thinking)
        assert "".join(line["message"]["thinking"] for line in thinking) == SAMPLE_THINKING
        rest = lines[len(THINKING_TOKENS) : -1]
        assert "".join(line["message"]["content"] for line in rest) == SAMPLE_ANSWER
        assert not any("thinking" in line["message"] for line in rest)
        assert lines[-1]["eval_count"] == len(THINKING_TOKENS) + len(ANSWER_TOKENS)

    generate = {"model": "gemma4", "prompt": "hi", "think": "low", "stream": False}
    answer = (await call(app, "POST", "/api/generate", generate)).json()
    assert (answer["thinking"], answer["response"]) == (SAMPLE_THINKING, SAMPLE_ANSWER)
    quiet = (await call(app, "POST", "/api/chat", CHAT | {"think": False})).lines()
    assert not any("thinking" in line["message"] for line in quiet)


@pytest.mark.anyio
async def test_tools_give_one_tool_call_chunk_then_done() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    sent = await call(app, "POST", "/api/chat", CHAT | {"tools": [WEATHER_TOOL]})
    lines = sent.lines()
    assert len(lines) == 2
    message = lines[0]["message"]
    assert message["content"] == ""
    (tool_call,) = message["tool_calls"]
    assert tool_call["id"].startswith("call_")
    assert tool_call["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {
            "city": "example",
            "days": 1,
            "metric": True,
            "hours": [],
            "where": {},
            "odd": "example",
        },
    }
    assert (lines[1]["done"], lines[1]["done_reason"], lines[1]["eval_count"]) == (True, "stop", 1)

    nameless = {"model": "llama3.2", "messages": [{"role": "user"}], "stream": False}
    odd_tools: list[list[Any]] = [[{}], ["not a tool"], [{"function": {"parameters": []}}]]
    for tools in odd_tools:
        answer = (await call(app, "POST", "/api/chat", nameless | {"tools": tools})).json()
        assert answer["message"]["tool_calls"][0]["function"]["name"] == "tool"
        assert answer["message"]["tool_calls"][0]["function"]["arguments"] == {}


@pytest.mark.anyio
async def test_after_a_tools_result_the_answer_is_text() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0, num_tokens=3))
    result = {"role": "tool", "tool_name": "get_weather", "content": "20 degrees"}
    body = CHAT | {"tools": [WEATHER_TOOL], "stream": False}
    answer = (await call(app, "POST", "/api/chat", body | {"messages": [result]})).json()
    assert "tool_calls" not in answer["message"]
    assert answer["message"]["content"] == "".join(answer_tokens(3))
    # A tool message earlier in the chat does not count: the last one is the user's.
    again = body | {"messages": [result, {"role": "user", "content": "and tomorrow?"}]}
    answer = (await call(app, "POST", "/api/chat", again)).json()
    assert answer["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("num_predict", "tokens", "reason"),
    [(5, 5, "length"), (0, 0, "length"), (-1, 66, "stop"), (66, 66, "stop"), (1000, 66, "stop")],
)
async def test_num_predict_caps_tokens(num_predict: int, tokens: int, reason: str) -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    sent = await call(app, "POST", "/api/chat", CHAT | {"options": {"num_predict": num_predict}})
    lines = sent.lines()
    assert len(lines) == tokens + 1
    assert (lines[-1]["done_reason"], lines[-1]["eval_count"]) == (reason, tokens)


@pytest.mark.anyio
async def test_num_tokens_cycles_the_sample_to_exact_length() -> None:
    app = FakeOllama()
    lines = (await call(app, "POST", "/api/chat", chat(num_tokens=150))).lines()
    assert len(lines) == 151
    text = "".join(line["message"]["content"] for line in lines)
    cycled = (SAMPLE_ANSWER + " ") * 3
    assert text == cycled[: len(text)]
    assert len(re.findall(r"\s*\S+", text)) == 150

    empty = (await call(app, "POST", "/api/chat", chat(num_tokens=0))).lines()
    assert len(empty) == 1
    assert empty[0]["done"] is True


@pytest.mark.anyio
async def test_no_messages_or_prompt_only_loads_the_model() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    loaded = await call(
        app, "POST", "/api/chat", {"model": "llama3.2", "options": {"num_predict": 1}}
    )
    assert loaded.headers["content-type"] == "application/json; charset=utf-8"
    assert loaded.json()["done_reason"] == "load"
    assert loaded.json()["message"] == {"role": "assistant", "content": ""}
    loaded = await call(app, "POST", "/api/generate", {"model": "llama3.2", "prompt": ""})
    assert (loaded.json()["done_reason"], loaded.json()["response"]) == ("load", "")
    assert [(r.outcome, r.tokens_sent) for r in app.records] == [("completed", 0)] * 2


# --- faults ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_failure_error_writes_ollamas_error_line_and_ends_the_body() -> None:
    app = FakeOllama()
    sent = await call(app, "POST", "/api/chat", chat(fail_after=3))
    assert sent.status == 200
    assert sent.finished
    lines = sent.lines()
    assert len(lines) == 4
    assert lines[-1] == {"error": ERROR_MESSAGE}
    assert not any(line.get("done") for line in lines)
    record = app.records[0]
    assert (record.outcome, record.tokens_sent, record.cancelled_phase) == ("failed", 3, None)


@pytest.mark.anyio
async def test_failure_error_without_streaming_is_a_500() -> None:
    app = FakeOllama()
    sent = await call(app, "POST", "/api/chat", chat(fail_after=0) | {"stream": False})
    assert (sent.status, sent.json()) == (500, {"error": ERROR_MESSAGE})
    assert app.records[0].outcome == "failed"


@pytest.mark.anyio
async def test_failure_close_raises_and_leaves_the_body_unfinished() -> None:
    app = FakeOllama()
    sent = Exchange()
    with pytest.raises(FakeOllamaAbort, match="close"):
        await call(app, "POST", "/api/chat", chat(fail_after=2, failure="close"), into=sent)
    assert len(sent.chunks) == 2
    assert not sent.finished
    record = app.records[0]
    assert (record.outcome, record.tokens_sent, record.status) == ("failed", 2, 200)
    assert record.ended_at is not None

    sent = Exchange()
    body = {"model": "gemma4", "prompt": "hi", "stream": False}
    body["fake"] = FAST | {"fail_after": 1, "failure": "close"}
    with pytest.raises(FakeOllamaAbort):
        await call(app, "POST", "/api/generate", body, into=sent)
    # Non-streaming: the headers go out, so the client sees a cut-short response, not a 500.
    assert [m["type"] for m in sent.messages] == ["http.response.start"]
    assert sent.status == 200


@pytest.mark.anyio
async def test_malformed_every_inserts_an_extra_bad_line() -> None:
    app = FakeOllama()
    sent = await call(app, "POST", "/api/chat", chat(num_tokens=5, malformed_every=2))
    lines = sent.body.split(b"\n")[:-1]
    bad = [i for i, line in enumerate(lines) if line == b"this is not json"]
    assert bad == [2, 5]
    assert len(lines) == 5 + 2 + 1
    assert json.loads(lines[-1])["done"] is True
    assert app.records[0].tokens_sent == 5


@pytest.mark.anyio
async def test_stall_goes_silent_then_continues() -> None:
    app = FakeOllama()
    sent = await call(
        app, "POST", "/api/chat", chat(num_tokens=4, stall_after=2, stall_seconds=0.2)
    )
    gaps = [later - earlier for earlier, later in zip(sent.times, sent.times[1:], strict=False)]
    # Messages: start, token 1, token 2, <stall>, token 3, token 4, done.
    assert gaps[2] >= 0.15
    assert max(gaps[:2] + gaps[3:]) < 0.15
    assert len(sent.lines()) == 5
    assert app.records[0].outcome == "completed"


@pytest.mark.anyio
async def test_pacing_follows_a_schedule_and_load_delay_holds_headers() -> None:
    app = FakeOllama()
    started = time.monotonic()
    sent = await call(
        app, "POST", "/api/chat", chat(tokens_per_second=50, num_tokens=10, load_delay=0.1)
    )
    assert sent.times[0] - started >= 0.09  # nothing at all before the load delay is over
    assert sent.times[10] - sent.times[1] >= 0.15  # 9 intervals of 20 ms
    record = app.records[0]
    assert record.headers_sent_at is not None
    assert record.headers_sent_at - record.started_at >= 0.09
    assert sent.lines()[-1]["load_duration"] >= 90_000_000


@pytest.mark.anyio
async def test_first_token_follows_the_headers_at_once() -> None:
    app = FakeOllama()
    # At one token a second, a first token that waited for its interval would take 1 s.
    sent = await call(
        app,
        "POST",
        "/api/chat",
        chat(tokens_per_second=1, num_tokens=5),
        disconnect=lambda e: body_count(e) >= 1,
    )
    assert sent.times[1] - sent.times[0] < 0.5
    assert app.records[0].tokens_sent == 1


# --- a property over the fault options ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    num_tokens=st.integers(0, 80),
    malformed_every=st.none() | st.integers(1, 9),
    fail_after=st.none() | st.integers(0, 90),
    think=st.booleans(),
)
def test_any_mix_of_faults_keeps_the_line_structure(
    num_tokens: int, malformed_every: int | None, fail_after: int | None, think: bool
) -> None:
    app = FakeOllama()
    options = {"num_tokens": num_tokens, "malformed_every": malformed_every}
    options |= {"fail_after": fail_after, "think": think}
    sent = anyio.run(call, app, "POST", "/api/chat", chat(**options))
    total = num_tokens + (len(THINKING_TOKENS) if think else 0)
    sent_tokens = total if fail_after is None else min(fail_after, total)
    lines = sent.body.split(b"\n")
    assert lines.pop() == b""
    bad = sum(line == b"this is not json" for line in lines)
    assert bad == (sent_tokens // malformed_every if malformed_every else 0)
    parsed = [json.loads(line) for line in lines if line != b"this is not json"]
    assert len(parsed) == sent_tokens + 1
    failed = fail_after is not None and fail_after <= total
    assert parsed[-1] == {"error": ERROR_MESSAGE} if failed else parsed[-1]["done"]
    assert app.records[0].tokens_sent == sent_tokens
    assert app.records[0].outcome == ("failed" if failed else "completed")
