"""The fake Ollama upstream: wire format, options, faults and cancellation.

ASGI-level tests call the app with a recording `send` and a scripted `receive`, because
httpx's ASGITransport buffers whole bodies and cannot show streaming or disconnects. The
end-to-end tests run it under real uvicorn and read with httpx's raw iterators, the official
`ollama` client and the official `openai` SDK.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import ollama
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_bridge._fake_ollama import (
    SAMPLE_ANSWER,
    SAMPLE_THINKING,
    FakeOllama,
    FakeOllamaAbort,
    FakeOllamaConfig,
    RequestRecord,
    _rfc3339,
)
from sse_bridge._types import Message
from tests._servers import serve

ANSWER_TOKENS = re.findall(r"\s*\S+", SAMPLE_ANSWER)
THINKING_TOKENS = re.findall(r"\s*\S+", SAMPLE_THINKING)
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
FAST = {"tokens_per_second": 0}
# Ollama's own text when a model fails mid-generation, which the fake sends.
ERROR_MESSAGE = "an error was encountered while running the model"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "hours": {"type": "array"},
                "where": {"type": "object"},
                "odd": {"type": ["string", "null"]},
            },
        },
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def go_json(value: object) -> bytes:
    """What Go's encoding/json writes: compact, with <>& and the JS line separators escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode()


def chat(**fake: Any) -> dict[str, Any]:
    """A chat request body with per-request fake overrides (unpaced unless asked)."""
    return CHAT | {"fake": FAST | fake}


# --- ASGI-level harness ----------------------------------------------------------------------


@dataclass
class Exchange:
    """Everything the app sent for one request, each message with the time it was sent."""

    messages: list[Message] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def finished(self) -> bool:
        return self.messages[-1]["type"] == "http.response.body" and not self.messages[-1].get(
            "more_body", False
        )

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.split(b"\n") if line]

    def events(self) -> list[str]:
        assert self.body.endswith(b"\n\n")
        blocks = self.body.decode().split("\n\n")[:-1]
        assert all(block.startswith("data: ") and "\n" not in block for block in blocks)
        return [block.removeprefix("data: ") for block in blocks]


async def call(
    app: FakeOllama,
    method: str,
    path: str,
    body: object = None,
    *,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    disconnect: Callable[[Exchange], bool] | None = None,
    send_error: Callable[[Exchange], bool] | None = None,
    into: Exchange | None = None,
) -> Exchange:
    """Run one request through the app and return what it sent (also kept in `into`).

    `disconnect(exchange)` decides when the client leaves; `send_error(exchange)` when send()
    raises as an ASGI 2.4 server's does after a disconnect. The body arrives in two parts.
    """
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    exchange = Exchange() if into is None else into
    gone = anyio.Event()
    parts = [raw[: len(raw) // 2], raw[len(raw) // 2 :]]

    async def receive() -> Message:
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        if disconnect is not None and disconnect(exchange):
            gone.set()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if send_error is not None and send_error(exchange):
            raise ConnectionResetError("client went away")
        exchange.messages.append(message)
        exchange.times.append(time.monotonic())
        if disconnect is not None and disconnect(exchange):
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 11434),
    }
    with anyio.fail_after(5):
        await app(scope, receive, send)
    return exchange


def body_count(exchange: Exchange) -> int:
    return len(exchange.chunks)


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"tokens_per_second": -1}, "tokens_per_second"),
        ({"tokens_per_second": math.nan}, "tokens_per_second"),
        ({"tokens_per_second": True}, "tokens_per_second"),
        ({"tokens_per_second": "fast"}, "tokens_per_second"),
        ({"load_delay": -0.5}, "load_delay"),
        ({"load_delay": 10**400}, "load_delay"),
        ({"stall_seconds": math.inf}, "stall_seconds"),
        ({"num_tokens": -1}, "num_tokens"),
        ({"num_tokens": 2.5}, "num_tokens"),
        ({"num_tokens": True}, "num_tokens"),
        ({"fail_after": -1}, "fail_after"),
        ({"malformed_every": 0}, "malformed_every"),
        ({"stall_after": -3}, "stall_after"),
        ({"failure": "explode"}, "failure"),
        ({"think": "yes"}, "think"),
        ({"models": ["llama3.2"]}, "models"),
        ({"models": ("",)}, "models"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=f"^{named} must be"):
        FakeOllamaConfig(**options)


def test_config_accepts_edge_values() -> None:
    config = FakeOllamaConfig(
        tokens_per_second=0,
        load_delay=0,
        num_tokens=0,
        fail_after=0,
        failure="close",
        malformed_every=1,
        think=True,
        stall_after=0,
        stall_seconds=1.5,
        models=(),
    )
    assert config.num_tokens == 0
    assert FakeOllama().config == FakeOllamaConfig()


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
    assert _rfc3339(ns) == text


# --- /api/chat and /api/generate over ASGI ------------------------------------------------


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


# --- faults over ASGI ------------------------------------------------------------------------


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


# --- cancellation over ASGI ----------------------------------------------------------------


@pytest.mark.anyio
async def test_disconnect_during_load_delay_cancels_before_headers() -> None:
    app = FakeOllama()
    started = time.monotonic()
    sent = await call(app, "POST", "/api/chat", chat(load_delay=30), disconnect=lambda _: True)
    assert time.monotonic() - started < 5
    assert sent.messages == []
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.status) == (
        "cancelled",
        "before_headers",
        None,
    )
    assert record.ended_at is not None


@pytest.mark.anyio
async def test_disconnect_while_streaming_stops_generation() -> None:
    app = FakeOllama()
    sent = await call(
        app, "POST", "/api/chat", chat(num_tokens=10_000), disconnect=lambda e: body_count(e) >= 3
    )
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase) == ("cancelled", "streaming")
    assert 3 <= record.tokens_sent < 10
    assert not sent.finished


@pytest.mark.anyio
async def test_disconnect_during_stall_is_cancelled_stalled() -> None:
    app = FakeOllama()
    options = chat(num_tokens=10, stall_after=2, stall_seconds=30)
    sent = await call(app, "POST", "/api/chat", options, disconnect=lambda e: body_count(e) >= 2)
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.tokens_sent) == (
        "cancelled",
        "stalled",
        2,
    )
    assert len(sent.chunks) == 2


@pytest.mark.anyio
async def test_disconnect_during_non_streaming_generation() -> None:
    app = FakeOllama()
    options = chat(tokens_per_second=10) | {"stream": False}
    sent = await call(app, "POST", "/api/chat", options, disconnect=lambda _: True)
    assert sent.messages == []
    assert app.records[0].cancelled_phase == "before_headers"


@pytest.mark.anyio
async def test_disconnect_while_reading_the_body() -> None:
    app = FakeOllama()
    messages: list[Message] = []
    script: list[Message] = [
        {"type": "http.request", "body": b'{"model":', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return script.pop(0)

    async def send(message: Message) -> None:
        messages.append(message)  # pragma: no cover

    scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
    await app(scope, receive, send)
    assert messages == []
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.body) == (
        "cancelled",
        "before_headers",
        None,
    )


@pytest.mark.anyio
async def test_send_raising_oserror_counts_as_cancelled() -> None:
    app = FakeOllama()
    await call(app, "POST", "/api/chat", chat(), send_error=lambda e: body_count(e) >= 4)
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.tokens_sent) == (
        "cancelled",
        "streaming",
        4,
    )


@pytest.mark.anyio
async def test_watcher_ignores_stray_request_messages() -> None:
    app = FakeOllama()
    script: list[Message] = [
        {"type": "http.request", "body": json.dumps(chat(num_tokens=3)).encode()},
        {"type": "http.request", "body": b""},
    ]
    messages: list[Message] = []

    async def receive() -> Message:
        if script:
            return script.pop(0)
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
    with anyio.fail_after(5):
        await app(scope, receive, send)
    assert app.records[0].outcome == "completed"
    assert len(messages) == 1 + 3 + 1


# --- request validation and the small endpoints --------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", None, 400, "missing request body"),
        ("/api/chat", b"{not json", 400, "invalid JSON body"),
        ("/api/chat", b"\xff\xfe", 400, "invalid JSON body"),
        ("/api/chat", [1, 2], 400, "must be a JSON object"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", {"model": ""}, 400, "model is required"),
        ("/api/chat", {"model": "llama3.2", "stream": "yes"}, 400, "stream must be"),
        ("/api/chat", {"model": "llama3.2", "messages": "hi"}, 400, "messages must be a list"),
        ("/api/chat", CHAT | {"tools": {"a": 1}}, 400, "tools must be a list"),
        ("/api/chat", CHAT | {"options": [1]}, 400, "options must be an object"),
        ("/api/chat", CHAT | {"options": {"num_predict": "5"}}, 400, "num_predict must be"),
        ("/api/chat", CHAT | {"options": {"num_predict": True}}, 400, "num_predict must be"),
        ("/api/generate", {"model": "gemma4", "prompt": 5}, 400, "prompt must be a string"),
        ("/api/chat", CHAT | {"fake": []}, 400, '"fake" must be a JSON object'),
        ("/api/chat", CHAT | {"fake": {"speed": 1}}, 400, 'unknown "fake" option "speed"'),
        ("/api/chat", CHAT | {"fake": {"models": ["x"]}}, 400, 'unknown "fake" option "models"'),
        ("/api/chat", CHAT | {"fake": {"num_tokens": -2}}, 400, "num_tokens must be"),
        ("/api/chat", CHAT | {"fake": {"failure": "boom"}}, 400, "failure must be"),
        ("/api/chat", CHAT | {"model": "llama3"}, 404, 'model "llama3" not found, try pulling'),
        ("/api/chat", CHAT | {"model": "qwen2.5"}, 404, 'model "qwen2.5" not found'),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, 'model "nope" not found'),
    ],
)
async def test_bad_requests_get_ollama_errors_before_streaming(
    path: str, body: object, status: int, error: str
) -> None:
    app = FakeOllama()
    sent = await call(app, "POST", path, body)
    assert sent.status == status
    assert sent.headers["content-type"] == "application/json; charset=utf-8"
    payload = sent.json()
    assert list(payload) == ["error"]
    assert error in payload["error"]
    record = app.records[0]
    assert (record.status, record.outcome, record.tokens_sent) == (status, "completed", 0)


@pytest.mark.anyio
async def test_model_names_default_to_the_latest_tag() -> None:
    app = FakeOllama(FakeOllamaConfig(tokens_per_second=0, models=("llama3.2", "me/qwen:7b")))
    for model in ("llama3.2:latest", "llama3.2", "me/qwen:7b"):
        sent = await call(app, "POST", "/api/chat", CHAT | {"model": model, "stream": False})
        assert (sent.status, sent.json()["model"]) == (200, model)
    sent = await call(app, "POST", "/api/chat", CHAT | {"model": "me/qwen"})
    assert sent.status == 404


@pytest.mark.anyio
async def test_root_version_and_tags() -> None:
    app = FakeOllama(FakeOllamaConfig(models=("llama3.2", "qwen2.5:7b", "x/42")))
    root = await call(app, "GET", "/")
    assert (root.status, root.body) == (200, b"Ollama is running")
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    assert (await call(app, "GET", "/api/version")).json() == {"version": "0.12.0"}
    tags = (await call(app, "GET", "/api/tags")).json()["models"]
    assert [model["name"] for model in tags] == ["llama3.2:latest", "qwen2.5:7b", "x/42:latest"]
    assert [model["details"]["family"] for model in tags] == ["llama", "qwen", "fake"]
    assert all(len(model["digest"]) == 64 and model["size"] > 0 for model in tags)
    assert [r.path for r in app.records] == ["/", "/api/version", "/api/tags"]


@pytest.mark.anyio
async def test_unknown_path_is_404_and_wrong_method_is_405() -> None:
    app = FakeOllama()
    missing = await call(app, "GET", "/api/pull")
    assert (missing.status, missing.json()) == (404, {"error": "not found"})
    wrong = await call(app, "GET", "/api/chat")
    assert (wrong.status, wrong.json()) == (405, {"error": "method not allowed"})
    assert wrong.headers["allow"] == "POST"
    control = await call(app, "POST", "/_fake/requests")
    assert (control.status, control.headers["allow"]) == (405, "GET, DELETE")
    assert [(r.path, r.status) for r in app.records] == [("/api/pull", 404), ("/api/chat", 405)]


@pytest.mark.anyio
async def test_records_keep_lower_case_headers_and_the_control_endpoint() -> None:
    app = FakeOllama()
    headers = ((b"X-Request-ID", b"abc"), (b"Accept", b"a"), (b"accept", b"b"))
    await call(app, "GET", "/api/version", headers=headers)
    assert app.records[0].headers["x-request-id"] == "abc"
    assert app.records[0].headers["accept"] == "a, b"

    listed = await call(app, "GET", "/_fake/requests")
    assert listed.headers["content-type"] == "application/json; charset=utf-8"
    (record,) = listed.json()
    assert record["id"] == 1
    assert record["path"] == "/api/version"
    assert record["outcome"] == "completed"
    assert set(record) == set(RequestRecord.__dataclass_fields__)

    cleared = await call(app, "DELETE", "/_fake/requests")
    assert (cleared.status, cleared.body) == (204, b"")
    assert app.records == []
    await call(app, "GET", "/")
    assert app.records[0].id == 2  # ids keep counting, so old and new never collide


@pytest.mark.anyio
async def test_lifespan_and_websocket_scopes() -> None:
    app = FakeOllama()
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    outgoing: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        outgoing.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in outgoing] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    outgoing.clear()
    await app({"type": "websocket", "path": "/"}, receive, send)
    assert outgoing == []
    assert app.records == []


def test_wait_for_record_filters_and_times_out() -> None:
    app = FakeOllama()
    app.records.append(
        RequestRecord(id=1, method="GET", path="/a", headers={}, started_at=0, outcome="completed")
    )
    app.records.append(
        RequestRecord(id=2, method="GET", path="/b", headers={}, started_at=0, outcome="failed")
    )
    assert app.wait_for_record(path="/b").id == 2
    assert app.wait_for_record(outcome="completed").id == 1
    assert app.wait_for_record(predicate=lambda r: r.id == 2).path == "/b"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no request matched path='/a' outcome='failed'"):
        app.wait_for_record(path="/a", outcome="failed", timeout=0.05)
    assert time.monotonic() - started < 2


# --- the OpenAI-compatible endpoint over ASGI ----------------------------------------------


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


# --- end to end under uvicorn --------------------------------------------------------------


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
    assert app.wait_for_record(outcome="completed").tokens_sent == 10


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
    record = app.wait_for_record(outcome="completed")
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
    record = app.wait_for_record(outcome="cancelled")
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
    record = app.wait_for_record(outcome="cancelled")
    assert record.cancelled_phase == "streaming"
    assert 2 <= record.tokens_sent < 500


def test_e2e_cancel_while_stalled_is_visible_over_http(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    body = chat(num_tokens=10, stall_after=2, stall_seconds=30)
    with httpx.Client(base_url=url, timeout=5) as client:
        with client.stream("POST", "/api/chat", json=body) as response:
            assert len(read_lines(response, stop_after=2)) == 2
        record = app.wait_for_record(outcome="cancelled")
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
    record = app.wait_for_record(outcome="failed")
    assert record.tokens_sent == 3


def test_e2e_records_forwarded_headers(fake: tuple[FakeOllama, str]) -> None:
    app, url = fake
    with httpx.Client(base_url=url, timeout=5) as client:
        response = client.get("/api/version", headers={"X-Forwarded-For": "10.0.0.1"})
    assert response.json() == {"version": "0.12.0"}
    record = app.wait_for_record(path="/api/version")
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
        assert app.wait_for_record(outcome="failed").tokens_sent == 3


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
    assert app.wait_for_record(outcome="failed").tokens_sent == 2
