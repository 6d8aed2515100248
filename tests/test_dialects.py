from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import sse_bridge
from sse_bridge import LineDecoder, ServerSentEvent, SSEBridgeMiddleware, Translator
from sse_bridge._dialects.builtin import CallableTranslator, resolve_dialect
from sse_bridge._dialects.translator import JSONTranslator, dumps
from sse_bridge._types import Receive, Scope, Send
from tests._sse import FIXTURES, fixture, httpx_sse_data, httpx_sse_json

# The texts the README quotes.
TRUNCATED = (
    "upstream closed the stream before its final chunk (done: true); the answer is incomplete"
)
EMPTY = "upstream closed the stream without sending anything"
AFTER_DONE = "upstream sent a line after its final chunk (done: true)"


def run(dialect: str | Callable[[Any], Iterable[Any]], body: bytes) -> bytes:
    """Translate a whole NDJSON body the way the middleware does, and encode it."""
    translator: Translator = resolve_dialect(dialect)()
    decoder = LineDecoder()
    events: list[bytes] = []
    for line in decoder.decode(body) + decoder.flush():
        events += translator.translate(line)
        if translator.finished:
            break
    else:
        events += translator.end()
    return b"".join(events)


ALL_FIXTURES = sorted(path.name for path in FIXTURES.glob("*.ndjson"))


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_raw_sends_every_line_verbatim(name: str) -> None:
    body = fixture(name)
    expected = [line.decode() for line in body.splitlines() if line.strip()]
    assert httpx_sse_data(run("raw", body)) == expected


def test_ollama_generate() -> None:
    events = httpx_sse_json(run("ollama", fixture("generate_stream.ndjson")))
    tokens = [e["token"] for e in events if "token" in e]
    assert "".join(tokens) == "That's a fantastic question!"
    # The done chunk carries the last token: it is delivered before the finished event.
    assert events[-2:] == [{"token": "!"}, {"finished": True, "done_reason": "stop", "usage": {}}]


def test_ollama_chat_with_usage() -> None:
    events = httpx_sse_json(run("ollama", fixture("chat_stream.ndjson")))
    assert events[:4] == [{"token": "The"}, {"token": " sky"}, {"token": " is"}, {"token": " blue"}]
    assert events[4] == {
        "finished": True,
        "done_reason": "stop",
        "usage": {
            "total_duration": 4883583458,
            "load_duration": 1334875,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 342546000,
            "eval_count": 282,
            "eval_duration": 4535599000,
        },
    }
    assert len(events) == 5


def test_ollama_escapes_and_newline_only_tokens_survive() -> None:
    body = run("ollama", fixture("chat_think_escaped.ndjson"))
    tokens = [e["token"] for e in httpx_sse_json(body)[:4]]
    assert tokens == ["\n\n", "</think>", "\n\n", "O"]
    # A token of newlines is escaped inside the JSON, so it never splits the data field.
    assert b'data: {"token":"\\n\\n"}\n\n' in body


def test_ollama_stream_without_done_ends_with_an_error() -> None:
    events = httpx_sse_json(run("ollama", fixture("chat_think_escaped.ndjson")))
    assert events[-1] == {"error": TRUNCATED, "finished": True}
    assert "before its final chunk" in TRUNCATED


def test_ollama_tool_calls() -> None:
    events = httpx_sse_json(run("ollama", fixture("chat_tool_calls.ndjson")))
    assert events[0] == {
        "token": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}],
    }
    assert events[1]["finished"] is True


def test_ollama_tool_calls_keep_their_thinking() -> None:
    body = (
        b'{"model":"m","message":{"content":"","thinking":"why","tool_calls":[{"function":'
        b'{"name":"f","arguments":{}}}]},"done":false}\n'
    )
    assert httpx_sse_json(run("ollama", body))[0] == {
        "token": "",
        "thinking": "why",
        "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
    }


def test_ollama_midstream_error_ends_the_stream() -> None:
    events = httpx_sse_json(run("ollama", fixture("generate_midstream_error.ndjson")))
    assert [e.get("token") for e in events[:4]] == [" Yes", ".", "I", "can"]
    assert events[4:] == [
        {"error": "an error was encountered while running the model", "finished": True}
    ]


def test_ollama_error_stops_at_once() -> None:
    body = b'{"error":"boom"}\n{"model":"m","response":"late","done":false}\n'
    assert httpx_sse_json(run("ollama", body)) == [{"error": "boom", "finished": True}]


def test_ollama_passes_other_objects_unchanged() -> None:
    body = fixture("pull_progress.ndjson")
    # No generation chunk, so no done chunk is expected and the end is clean.
    assert httpx_sse_data(run("ollama", body)) == [line.decode() for line in body.splitlines()]


def test_ollama_thinking_and_empty_chunks() -> None:
    body = (
        b'{"model":"m","message":{"role":"assistant","content":"","thinking":"hmm"},"done":false}\n'
        b'{"model":"m","message":{"role":"assistant","content":""},"done":false}\n'
        b'{"model":"m","response":"","thinking":"ok","done":false}\n'
        b'{"model":"m","response":"","done":true,"done_reason":"length","context":[1,2]}\n'
    )
    assert httpx_sse_json(run("ollama", body)) == [
        {"token": "", "thinking": "hmm"},
        {"token": "", "thinking": "ok"},
        {"finished": True, "done_reason": "length", "usage": {}, "context": [1, 2]},
    ]


def test_ollama_invalid_line_is_reported_and_the_stream_goes_on() -> None:
    body = (
        b'{"model":"m","response":"a","done":false}\n'
        b"not json\n"
        b'{"model":"m","response":"b","done":true}\n'
    )
    events = httpx_sse_json(run("ollama", body))
    assert events[0] == {"token": "a"}
    assert events[1]["line"] == "not json"
    assert events[1]["error"].startswith("upstream sent a line that is not JSON")
    assert "finished" not in events[1]
    assert events[2:] == [{"token": "b"}, {"finished": True, "done_reason": None, "usage": {}}]


def test_ollama_empty_stream_is_an_error() -> None:
    assert httpx_sse_json(run("ollama", b"")) == [{"error": EMPTY, "finished": True}]


def test_ollama_structured_error_value_is_kept_as_text() -> None:
    events = httpx_sse_json(run("ollama", b'{"error":{"code":3}}\n'))
    assert events == [{"error": '{"code":3}', "finished": True}]


def openai_chunks(body: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    data = httpx_sse_data(run("openai", body))
    return [json.loads(d) for d in data if d != "[DONE]"], data


def test_openai_chat() -> None:
    chunks, data = openai_chunks(fixture("chat_stream.ndjson"))
    assert data[-1] == "[DONE]"
    assert len({c["id"] for c in chunks}) == 1
    assert len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "llama3.2" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "The"}
    assert "".join(d.get("content", "") for d in deltas) == "The sky is blue"
    assert all("role" not in d for d in deltas[1:])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 26,
        "completion_tokens": 282,
        "total_tokens": 308,
    }


def test_openai_tool_calls() -> None:
    chunks, _ = openai_chunks(fixture("chat_tool_calls.ndjson"))
    (call,) = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_keeps_an_upstream_tool_call_id_and_string_arguments() -> None:
    body = (
        b'{"model":"m","message":{"role":"assistant","content":"","tool_calls":['
        b'{"id":"call_x","function":{"name":"f","arguments":"{}"}},{"function":{"name":"g"}}]},"done":false}\n'
    )
    chunks, _ = openai_chunks(body)
    calls = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "f", "{}"),
        (1, "g", "{}"),
    ]
    assert calls[0]["id"] == "call_x"


def test_openai_thinking_is_reasoning_and_length_is_kept() -> None:
    body = (
        b'{"model":"m","message":{"role":"assistant","content":"","thinking":"hmm"},"done":false}\n'
        b'{"model":"m","message":{"role":"assistant","content":"x"},"done":true,"done_reason":"length"}\n'
    )
    chunks, data = openai_chunks(body)
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "reasoning": "hmm",
    }
    assert chunks[1]["choices"][0]["delta"] == {"content": "x"}
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[2]
    assert data[-1] == "[DONE]"


def test_openai_error_and_truncation() -> None:
    _, data = openai_chunks(fixture("generate_midstream_error.ndjson"))
    assert json.loads(data[-1]) == {
        "error": {
            "message": "an error was encountered while running the model",
            "type": "api_error",
        }
    }
    assert "[DONE]" not in data
    _, data = openai_chunks(fixture("chat_think_escaped.ndjson"))
    assert json.loads(data[-1])["error"]["message"] == TRUNCATED
    _, data = openai_chunks(b"")
    assert json.loads(data[-1])["error"]["message"] == EMPTY


def test_openai_invalid_line_and_other_objects() -> None:
    body = b'nope\n{"status":"success"}\n{"model":"m","response":"","done":true}\n'
    chunks, data = openai_chunks(body)
    assert chunks[0]["error"]["message"].startswith("upstream sent a line that is not JSON")
    assert data[1] == '{"status":"success"}'
    # The role still goes out first, even on an empty answer.
    assert chunks[2]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert data[-1] == "[DONE]"


def test_callable_dialect() -> None:
    def dialect(obj: Any) -> Iterable[Any]:
        if obj.get("skip"):
            return []
        if "boom" in obj:
            raise RuntimeError("bug")
        return [obj["n"], f"text {obj['n']}", ServerSentEvent("e", event="custom")]

    body = b'{"n":1}\n{"skip":true}\n{"boom":1}\nbad\n{"n":2}\n'
    wire = run(dialect, body)
    data = httpx_sse_data(wire)
    assert data[:3] == ["1", "text 1", "e"]
    assert json.loads(data[3]) == {
        "error": "the dialect failed on a line (RuntimeError)",
        "line": '{"boom":1}',
    }
    assert json.loads(data[4])["line"] == "bad"
    assert data[5:] == ["2", "text 2", "e"]
    assert b"event: custom\n" in wire


@pytest.mark.parametrize("dialect", ["raw", "ollama", "openai", lambda obj: [obj]])
def test_fail_is_terminal_in_every_dialect(dialect: str | Callable[[Any], Iterable[Any]]) -> None:
    translator = resolve_dialect(dialect)()
    (event,) = translator.fail("line too long")
    assert translator.finished
    assert b"line too long" in event


@pytest.mark.parametrize("bad", ["sse", "", None, 3])
def test_unknown_dialect_is_refused(bad: Any) -> None:
    with pytest.raises(
        ValueError, match=r"unknown dialect .* use one of 'raw', 'ollama', 'openai'"
    ):
        resolve_dialect(bad)


def test_dumps_escapes_line_separators_for_splitlines_clients() -> None:
    text = dumps({"t": "a\u2028b\u2029c\u0085d<é"})
    assert text == '{"t":"a\\u2028b\\u2029c\\u0085d<é"}'
    assert len(text.splitlines()) == 1
    assert json.loads(text) == {"t": "a\u2028b\u2029c\u0085d<é"}


def test_openai_usage_needs_integer_counts() -> None:
    body = b'{"model":"m","response":"","done":true,"eval_count":"many","prompt_eval_count":1}\n'
    chunks, data = openai_chunks(body)
    assert "usage" not in chunks[-1]
    assert data[-1] == "[DONE]"


def test_openai_end_after_other_objects_names_the_truncation() -> None:
    _, data = openai_chunks(b'{"status":"pulling"}\n')
    assert json.loads(data[-1])["error"]["message"] == TRUNCATED


def test_ollama_reports_lines_after_the_done_chunk() -> None:
    body = fixture("generate_stream.ndjson") + b'{"model":"m","response":"late","done":false}\n'
    events = httpx_sse_json(run("ollama", body))
    assert events[-2]["finished"] is True
    assert events[-1] == {
        "error": "upstream sent a line after its final chunk (done: true)",
        "line": '{"model":"m","response":"late","done":false}',
    }


class Hooks(JSONTranslator):
    """The template with every hook recording what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def hook(self, name: str, value: Any) -> list[bytes]:
        self.calls.append((name, value))
        return [name.encode()]

    def on_chunk(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        return self.hook("chunk", chunk)

    def on_final(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        self.completed = True
        return self.hook("final", chunk)

    def on_error(self, value: dict[str, Any], line: str) -> list[bytes]:
        return self.hook("error", value)

    def on_other(self, value: Any, line: str) -> list[bytes]:
        return self.hook("other", value)


@pytest.mark.parametrize(
    ("line", "hook"),
    [
        ('{"response":"a","done":false}', "chunk"),
        ('{"done":null}', "chunk"),
        # Only true is final: Ollama writes a boolean, and 1 or "true" is not one.
        ('{"done":1}', "chunk"),
        ('{"done":"true"}', "chunk"),
        ('{"done":true}', "final"),
        ('{"response":"","done":true,"done_reason":"stop"}', "final"),
        # An error object is an error whatever else it holds.
        ('{"error":"boom"}', "error"),
        ('{"error":null,"done":true}', "error"),
        ('{"status":"pulling"}', "other"),
        ("{}", "other"),
        ('[{"done":true}]', "other"),
        ('"done"', "other"),
        ("3", "other"),
        ("null", "other"),
        # json accepts NaN where orjson does not: the template still parses it.
        ("NaN", "other"),
    ],
)
def test_the_template_parses_once_and_calls_one_hook(line: str, hook: str) -> None:
    translator = Hooks()
    assert translator.translate(line) == [hook.encode()]
    value = json.loads(line)
    if isinstance(value, float):
        assert translator.calls[0][0] == hook
    else:
        assert translator.calls == [(hook, value)]
    assert translator.seen_line


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "upstream sent a line that is not JSON (Expecting value at column 1)"),
        ('{"a":1', "upstream sent a line that is not JSON (Expecting ',' delimiter at column 7)"),
        ('{"a":1} x', "upstream sent a line that is not JSON (Extra data at column 9)"),
    ],
)
def test_the_template_reports_a_line_that_is_not_json(line: str, reason: str) -> None:
    translator = Hooks()
    (event,) = translator.translate(line)
    assert json.loads(httpx_sse_data(event)[0]) == {"error": reason, "line": line}
    assert translator.calls == []
    assert not translator.finished


def test_the_template_reports_every_line_after_the_final_chunk() -> None:
    translator = Hooks()
    translator.translate('{"done":true}')
    for line in ['{"done":false}', '{"error":"late"}', "not json"]:
        (event,) = translator.translate(line)
        assert json.loads(httpx_sse_data(event)[0]) == {"error": AFTER_DONE, "line": line}
    assert [name for name, _ in translator.calls] == ["final"]


def test_the_callable_sees_every_value_through_one_hook() -> None:
    seen: list[Any] = []

    def dialect(value: Any) -> list[Any]:
        seen.append(value)
        return []

    translator = CallableTranslator(dialect)
    lines = ['{"done":false}', '{"done":true}', '{"error":"x"}', '{"status":"s"}', "[1]", "bad"]
    for line in lines:
        translator.translate(line)
    assert seen == [json.loads(line) for line in lines[:-1]]
    # Only the function knows what a value means: the stream is never completed for it.
    assert not translator.completed
    assert not translator.finished


class Counting(Translator):
    """A stateful dialect: numbers its lines."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def translate(self, line: str) -> list[bytes]:
        self.count += 1
        return [ServerSentEvent(data=f"{self.count} {line}").encode()]


class Incomplete(Translator):
    """A Translator subclass without translate()."""


class OneValue:
    """Not a Translator: a class called with one decoded value, i.e. a DialectFunc."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __iter__(self) -> Any:
        return iter([f"n={self.value['n']}"])


def test_a_translator_subclass_is_its_own_factory() -> None:
    new_translator = resolve_dialect(Counting)
    first, second = new_translator(), new_translator()
    assert type(first) is Counting
    assert first is not second
    assert first.translate("a") + first.translate("b") == [b"data: 1 a\n\n", b"data: 2 b\n\n"]
    assert second.translate("c") == [b"data: 1 c\n\n"]


def test_any_other_class_is_still_a_function_of_one_value() -> None:
    translator = resolve_dialect(OneValue)()
    assert isinstance(translator, CallableTranslator)
    assert translator.translate('{"n":4}') == [b"data: n=4\n\n"]


@pytest.mark.parametrize("abstract", [Translator, Incomplete, JSONTranslator])
def test_an_abstract_translator_is_refused(abstract: type[Translator]) -> None:
    with pytest.raises(ValueError, match=r"is abstract: a Translator subclass must define"):
        resolve_dialect(abstract)
    with pytest.raises(ValueError, match=r"is abstract"):
        SSEBridgeMiddleware(ndjson_app([]), dialect=abstract)


@pytest.mark.parametrize(
    ("call", "events", "finished"),
    [
        (lambda t: t.end(), [], False),
        (lambda t: t.fail("gone"), [{"error": "gone"}], True),
        (lambda t: t.bad_line("x", "why"), [{"error": "why", "line": "x"}], False),
        (lambda t: t.stop(), [{"finished": True, "done_reason": "stopped"}], True),
    ],
)
def test_the_translator_defaults(
    call: Callable[[Translator], list[bytes]], events: list[Any], finished: bool
) -> None:
    translator = Counting()
    assert httpx_sse_json(b"".join(call(translator))) == events
    assert translator.finished is finished
    assert not translator.completed


def test_translator_is_public() -> None:
    assert sse_bridge.Translator is Translator
    assert "Translator" in sse_bridge.__all__


def ndjson_app(lines: list[bytes]) -> Callable[[Scope, Receive, Send], Any]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for line in lines:
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def readme_example(heading: str) -> dict[str, Any]:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split(f"### {heading}\n", 1)[1]
    (block,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    return namespace


def stream(app: SSEBridgeMiddleware) -> bytes:
    # Not as a context manager: the app has no lifespan to run.
    response = TestClient(app).post("/", headers={"accept": "text/event-stream"})
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    return response.content


def test_the_readme_stateful_dialect_runs_through_the_middleware() -> None:
    transcript = readme_example("A stateful custom dialect")["Transcript"]
    answer = [b'{"response":"Hel","done":false}\n', b'{"response":"lo","done":true}\n']
    bridged = SSEBridgeMiddleware(ndjson_app(answer), dialect=transcript)
    expected = (
        b'data: {"token": "Hel"}\n\n'
        b'data: {"token": "lo"}\n\n'
        b'event: answer\ndata: {"answer": "Hello"}\n\n'
    )
    # Twice: each stream gets a fresh translator, so the second answer is not "HelloHello".
    assert stream(bridged) == expected
    assert stream(bridged) == expected
    broken = [b'{"response":"Hel","done":false}\n', b"nope\n"]
    assert httpx_sse_json(stream(SSEBridgeMiddleware(ndjson_app(broken), dialect=transcript))) == [
        {"token": "Hel"},
        {"error": "the bridge could not translate this line (JSONDecodeError)", "line": "nope"},
        {"error": "the answer is incomplete"},
    ]
