"""The ``ai-sdk`` dialect, chunk by chunk: Ollama's lines in, the AI SDK's UI message chunks out.

Every chunk is checked against the keys ``ai`` 5.0's strict schema allows for its type (copied
from its ``uiMessageChunkSchema``): a key more and that release refuses the whole stream.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from sse_bridge import LineDecoder, SSEBridgeMiddleware
from sse_bridge._dialects.ai_sdk import AISDKTranslator
from sse_bridge._dialects.builtin import resolve_dialect
from sse_bridge._types import Receive, Scope, Send
from tests._sse import FIXTURES, fixture, httpx_sse_data
from tests.test_dialects import AFTER_DONE, EMPTY, TRUNCATED

# ai 5.0.0's strictObject schemas: the keys each chunk type may hold.
STRICT_KEYS: dict[str, set[str]] = {
    "start": {"messageId", "messageMetadata"},
    "start-step": set(),
    "text-start": {"id", "providerMetadata"},
    "text-delta": {"id", "delta", "providerMetadata"},
    "text-end": {"id", "providerMetadata"},
    "reasoning-start": {"id", "providerMetadata"},
    "reasoning-delta": {"id", "delta", "providerMetadata"},
    "reasoning-end": {"id", "providerMetadata"},
    "tool-input-available": {
        "toolCallId",
        "toolName",
        "input",
        "providerExecuted",
        "providerMetadata",
        "dynamic",
    },
    "finish-step": set(),
    "finish": {"messageMetadata"},
    "error": {"errorText"},
    "data-ollama": {"id", "data", "transient"},
}
REQUIRED = {
    "text-start": {"id"},
    "text-delta": {"id", "delta"},
    "text-end": {"id"},
    "reasoning-start": {"id"},
    "reasoning-delta": {"id", "delta"},
    "reasoning-end": {"id"},
    "tool-input-available": {"toolCallId", "toolName", "input"},
    "error": {"errorText"},
    "data-ollama": {"data"},
}


def chat(content: str = "", done: bool = False, **fields: Any) -> str:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    for key in ("thinking", "tool_calls"):
        if key in fields:
            message[key] = fields.pop(key)
    return json.dumps({"model": "m", "message": message, "done": done, **fields})


def translate(lines: list[str], *, end: bool = True) -> tuple[list[Any], AISDKTranslator]:
    """The chunks for ``lines`` (``"[DONE]"`` as a string), checked against the strict keys."""
    translator = AISDKTranslator()
    events: list[bytes] = []
    for line in lines:
        events += translator.translate(line)
        if translator.finished:
            break
    else:
        if end:
            events += translator.end()
    return parse(b"".join(events)), translator


def parse(body: bytes) -> list[Any]:
    chunks: list[Any] = []
    for data in httpx_sse_data(body):
        if data == "[DONE]":
            chunks.append(data)
            continue
        chunk = json.loads(data)
        kind = chunk["type"]
        keys = set(chunk) - {"type"}
        assert keys <= STRICT_KEYS[kind], (kind, keys - STRICT_KEYS[kind])
        assert REQUIRED.get(kind, set()) <= keys, chunk
        chunks.append(chunk)
    return chunks


def kinds(chunks: list[Any]) -> list[str]:
    return [c if isinstance(c, str) else c["type"] for c in chunks]


def test_text_becomes_one_text_part_then_the_finish_and_done() -> None:
    chunks, translator = translate([chat("Hi"), chat(" there"), chat("!", done=True)])
    assert kinds(chunks) == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
        "[DONE]",
    ]
    assert chunks[:2] == [{"type": "start"}, {"type": "start-step"}]
    ids = {c["id"] for c in chunks if "id" in c}
    assert len(ids) == 1
    deltas = [c["delta"] for c in chunks if isinstance(c, dict) and c["type"] == "text-delta"]
    assert "".join(deltas) == "Hi there!"
    assert translator.completed


def test_thinking_is_reasoning_ahead_of_the_text_in_ollamas_order() -> None:
    lines = [
        chat(thinking="Let me"),
        chat(thinking=" think."),
        chat("Answer"),
        chat(thinking="More?"),
        chat(" done", done=True),
    ]
    chunks, _ = translate(lines)
    assert kinds(chunks)[2:-3] == [
        "reasoning-start",
        "reasoning-delta",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
    ]
    # Each part has an id of its own; the start, deltas and end of one part share it.
    part_ids = [c["id"] for c in chunks if isinstance(c, dict) and c["type"].endswith("-start")]
    assert len(set(part_ids)) == 4


def test_a_chunk_with_thinking_and_content_sends_the_reasoning_first() -> None:
    chunks, _ = translate([chat("text", thinking="thought", done=True)])
    assert kinds(chunks)[2:8] == [
        "reasoning-start",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-end",
    ]


def test_generate_chunks_are_text_and_thinking_too() -> None:
    lines = [
        json.dumps({"response": "", "thinking": "hm", "done": False}),
        json.dumps({"response": "Yes", "done": False}),
        json.dumps({"response": "", "done": True, "done_reason": "stop", "context": [1, 2]}),
    ]
    chunks, _ = translate(lines)
    assert [c["delta"] for c in chunks if isinstance(c, dict) and "delta" in c] == ["hm", "Yes"]
    assert chunks[-2]["messageMetadata"] == {"finishReason": "stop", "doneReason": "stop"}


def test_the_fixture_of_a_real_chat_ends_with_usage_in_the_metadata() -> None:
    body = fixture("chat_stream.ndjson")
    decoder = LineDecoder()
    chunks, _ = translate(decoder.decode(body) + decoder.flush())
    metadata = chunks[-2]["messageMetadata"]
    assert metadata["finishReason"] == "stop"
    usage = metadata["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert metadata["ollama"]["eval_count"] == usage["outputTokens"]
    assert "total_duration" in metadata["ollama"]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.ndjson")))
def test_every_fixture_gives_chunks_the_strict_schema_accepts(name: str) -> None:
    decoder = LineDecoder()
    body = fixture(name)
    chunks, _ = translate(decoder.decode(body) + decoder.flush())
    assert chunks[-1] == "[DONE]"
    # Every part opened is closed, whatever the ending.
    opened = [c["id"] for c in chunks if isinstance(c, dict) and c["type"].endswith("-start")]
    closed = [c["id"] for c in chunks if isinstance(c, dict) and c["type"].endswith("-end")]
    assert opened == closed


def test_tool_calls_become_tool_input_available() -> None:
    calls = [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
        {"function": {"name": "add", "arguments": '{"a": 1}'}},
        {"function": {"name": "raw", "arguments": "not json"}},
        "not a call",
    ]
    chunks, _ = translate([chat("Checking", tool_calls=calls), chat(done=True)])
    tools = [c for c in chunks if isinstance(c, dict) and c["type"] == "tool-input-available"]
    assert tools[0] == {
        "type": "tool-input-available",
        "toolCallId": "call_1",
        "toolName": "get_weather",
        "input": {"city": "Tokyo"},
    }
    assert tools[1]["toolCallId"].startswith("call-")
    assert tools[1]["input"] == {"a": 1}
    assert tools[2]["input"] == "not json"
    assert tools[3]["toolName"] == ""
    assert tools[3]["input"] == {}
    # The text part closes before the calls; the finish says why the answer stopped.
    assert kinds(chunks)[4] == "text-end"
    assert chunks[-2]["messageMetadata"]["finishReason"] == "tool-calls"


@pytest.mark.parametrize(
    ("done_reason", "reason"),
    [("stop", "stop"), ("length", "length"), ("load", "other"), (None, "stop"), (7, "stop")],
)
def test_the_finish_reason_in_the_ai_sdks_words(done_reason: Any, reason: str) -> None:
    fields = {} if done_reason is None else {"done_reason": done_reason}
    chunks, _ = translate([chat("a"), chat(done=True, **fields)])
    metadata = chunks[-2]["messageMetadata"]
    assert metadata["finishReason"] == reason
    if isinstance(done_reason, str):
        assert metadata["doneReason"] == done_reason
    else:
        assert "doneReason" not in metadata


@pytest.mark.parametrize(
    ("counts", "usage"),
    [
        (
            {"prompt_eval_count": 3, "eval_count": 4},
            {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        ),
        ({"eval_count": 4}, {"outputTokens": 4}),
        ({"prompt_eval_count": 3}, {"inputTokens": 3}),
        ({"prompt_eval_count": True, "eval_count": "4"}, None),
    ],
)
def test_usage_counts_only_what_ollama_counted(counts: dict[str, Any], usage: Any) -> None:
    chunks, _ = translate([chat("a", done=True, **counts)])
    assert chunks[-2]["messageMetadata"].get("usage") == usage


def test_an_upstream_error_closes_the_part_then_errors_and_ends() -> None:
    chunks, translator = translate([chat("Hi"), json.dumps({"error": "model crashed"}), chat("x")])
    assert kinds(chunks)[-4:] == ["text-delta", "text-end", "error", "[DONE]"]
    assert chunks[-2]["errorText"] == "model crashed"
    assert translator.finished


def test_an_error_object_that_is_not_a_string_is_sent_as_json() -> None:
    chunks, _ = translate([json.dumps({"error": {"code": 1}})])
    assert chunks == [{"type": "error", "errorText": '{"code":1}'}, "[DONE]"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [([chat("Hi"), chat(thinking="hm")], TRUNCATED), ([], EMPTY)],
)
def test_a_stream_that_breaks_off_ends_with_an_error(lines: list[str], message: str) -> None:
    chunks, _ = translate(lines)
    assert chunks[-2:] == [{"type": "error", "errorText": message}, "[DONE]"]
    if lines:
        assert kinds(chunks)[-3] == "reasoning-end"


def test_a_line_that_is_not_json_is_an_error_with_the_line_and_the_stream_goes_on() -> None:
    chunks, _ = translate([chat("a"), "this is not json", chat("b", done=True)])
    errors = [c for c in chunks if isinstance(c, dict) and c["type"] == "error"]
    assert len(errors) == 1
    assert errors[0]["errorText"].startswith("upstream sent a line that is not JSON")
    assert errors[0]["errorText"].endswith(": this is not json")
    assert kinds(chunks)[2:-3] == [
        "text-start",
        "text-delta",
        "text-end",
        "error",
        "text-start",
        "text-delta",
        "text-end",
    ]
    assert chunks[-2]["type"] == "finish"


def test_a_line_after_the_final_chunk_is_reported() -> None:
    chunks, _ = translate([chat("a", done=True), chat("late")])
    assert chunks[-1] == {"type": "error", "errorText": f"{AFTER_DONE}: {chat('late')}"}


def test_a_stop_closes_the_open_part_and_finishes_as_interrupted() -> None:
    translator = AISDKTranslator()
    events = translator.translate(chat("Hi")) + translator.stop()
    chunks = parse(b"".join(events))
    assert kinds(chunks)[-5:] == ["text-delta", "text-end", "finish-step", "finish", "[DONE]"]
    assert chunks[-2]["messageMetadata"] == {"finishReason": "interrupted", "doneReason": "stopped"}
    assert translator.finished


def test_a_stop_before_any_chunk_is_still_a_whole_message() -> None:
    translator = AISDKTranslator()
    chunks = parse(b"".join(translator.stop()))
    assert kinds(chunks) == ["start", "start-step", "finish-step", "finish", "[DONE]"]


def test_a_failure_of_the_bridge_is_an_error_chunk() -> None:
    translator = AISDKTranslator()
    chunks = parse(b"".join(translator.fail("line too long")))
    assert chunks == [{"type": "error", "errorText": "line too long"}, "[DONE]"]


def test_other_json_becomes_a_data_part_and_needs_no_final_chunk() -> None:
    lines = [json.dumps({"status": "pulling"}), json.dumps([1, 2])]
    chunks, translator = translate(lines)
    assert [c["data"] for c in chunks if isinstance(c, dict) and "data" in c] == [
        {"status": "pulling"},
        [1, 2],
    ]
    assert kinds(chunks)[-3:] == ["finish-step", "finish", "[DONE]"]
    assert chunks[-2]["messageMetadata"] == {"finishReason": "other"}
    assert translator.completed
    assert translator.end() == []


def test_the_hot_path_writes_what_json_would() -> None:
    translator = AISDKTranslator()
    translator.translate(chat("a"))
    token = 'qu"ote \\ \u2028 \U0001f600 </script>'
    [event] = translator.translate(chat(token))
    assert parse(event) == [{"type": "text-delta", "id": "text-1", "delta": token}]
    assert b"\\u2028" in event


def test_the_dialect_is_registered_with_its_protocol_header() -> None:
    assert resolve_dialect("ai-sdk") is AISDKTranslator
    assert AISDKTranslator.headers == ((b"x-vercel-ai-ui-message-stream", b"v1"),)


@pytest.mark.anyio
async def test_the_middleware_sends_the_dialects_header_once() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"application/x-ndjson"),
            (b"x-vercel-ai-ui-message-stream", b"v0"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": chat("a", done=True).encode() + b"\n"})

    middleware = SSEBridgeMiddleware(app, dialect="ai-sdk", convert="always")
    sent: list[Any] = []

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Any:
        if requests:
            return requests.pop()
        await anyio.Event().wait()  # the client stays: the stream ends by itself

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/chat",
        "headers": [],
        "query_string": b"",
    }
    await middleware(scope, receive, send)
    headers = sent[0]["headers"]
    assert [v for k, v in headers if k == b"x-vercel-ai-ui-message-stream"] == [b"v1"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert kinds(parse(body))[-1] == "[DONE]"
