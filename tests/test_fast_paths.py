"""The fast paths write exactly what the general ones would: orjson or json, template or dumps."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_bridge._core.codec import ServerSentEvent
from sse_bridge._dialects import translator as _translator
from sse_bridge._dialects.builtin import resolve_dialect
from sse_bridge._dialects.translator import dumps, json_event, json_string

# Text with what JSON and SSE find awkward: quotes, controls, line separators, lone surrogates.
awkward = st.text(
    st.characters(codec=None, exclude_categories=())
    | st.sampled_from('"\\\r\n\x00\u2028\u2029\x85')
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | awkward,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(awkward, inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_translator, "orjson", None)


def test_orjson_is_installed_with_the_speed_extra() -> None:
    # CI installs the speed extra: the fast path is the one tested by everything else.
    assert vars(_translator)["orjson"] is not None


@settings(deadline=None, max_examples=300)
@given(awkward)
def test_the_string_template_is_what_dumps_writes(text: str) -> None:
    assert json_string(text) == dumps(text).encode("utf-8", "backslashreplace")
    assert b'data: {"token":%b}\n\n' % json_string(text) == json_event({"token": text})
    assert json_event({"token": text}) == ServerSentEvent(data=dumps({"token": text})).encode()


def translate(dialect: str, lines: list[str]) -> bytes:
    translator = resolve_dialect(dialect)()
    if dialect == "openai":
        # The id and creation time are random per stream: pin them for the comparison.
        translator._id = "chatcmpl-x"  # type: ignore[attr-defined]
        translator._created = 1  # type: ignore[attr-defined]
        translator._prefix = (  # type: ignore[attr-defined]
            b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":'
        )
    out: list[bytes] = []
    for line in lines:
        try:
            out += translator.translate(line)
        except Exception as exc:  # what the middleware reports as an untranslatable line
            out.append(type(exc).__name__.encode())
        if translator.finished:
            break
    return b"".join(out + translator.end())


def chunk_lines(values: list[Any]) -> list[str]:
    lines = []
    for value in values:
        if isinstance(value, dict):
            lines.append(json.dumps({"model": "m", "done": False, **value}))
        lines.append(json.dumps(value, ensure_ascii=bool(len(lines) % 2)))
    return lines


@settings(deadline=None, max_examples=200)
@given(st.lists(json_values, max_size=6), st.lists(awkward, max_size=4))
@pytest.mark.parametrize("dialect", ["raw", "ollama", "openai"])
def test_orjson_and_json_give_the_same_events(
    dialect: str, values: list[Any], tokens: list[str]
) -> None:
    chunks = [{"model": "m", "response": t, "done": False} for t in tokens]
    chat = [
        {"model": "m", "message": {"content": t, "thinking": t[:1]}, "done": False} for t in tokens
    ]
    lines = chunk_lines(values) + [json.dumps(c) for c in chunks + chat] + ["not json", "NaN"]
    lines.append(json.dumps({"model": "m", "response": "", "done": True, "eval_count": 2}))
    fast = translate(dialect, lines)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_translator, "orjson", None)
        slow = translate(dialect, lines)
    assert fast == slow


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_the_token_templates_match_the_general_path(dialect: str, without_orjson: None) -> None:
    lines = [
        json.dumps({"model": "m\u2028", "response": 'a"\\\n\u2028\ud83d', "done": False}),
        json.dumps({"model": 5, "response": "b", "done": False}),
        json.dumps({"model": "m", "response": "c", "done": True, "eval_count": 1}),
    ]
    wire = translate(dialect, lines)
    # Every event parses back, and the escapes survive the template.
    datas = [block[len(b"data: ") :] for block in wire.split(b"\n\n") if block]
    parsed = [json.loads(d) for d in datas if d != b"[DONE]"]
    assert b"\\u2028" in wire
    assert b"\\ud83d" in wire
    if dialect == "ollama":
        assert parsed[0] == {"token": 'a"\\\n\u2028\ud83d'}
    else:
        assert parsed[1]["choices"][0]["delta"] == {"content": "b"}
        assert parsed[1]["model"] == 5
