"""How NDJSON lines become events: the ``raw``, ``ollama`` and ``openai`` dialects, or a callable.

A dialect is a factory of per-stream translators. A translator sees each complete line, the end of
the upstream body and any failure of the bridge itself, and answers with the events to send. Once
it has produced a terminal event (``finished``), the stream ends.

Every event is a single ``data:`` field holding compact JSON, the one form that hand-written
browser hooks, httpx-sse and the openai SDK all parse. The JSON is written as UTF-8 with U+2028,
U+2029 and U+0085 escaped, so that clients that split lines with ``str.splitlines()`` survive.

Translators answer with events already encoded (``bytes`` ending in the blank line), so the
middleware joins the events of one upstream read and sends them as one body message. The hot
events (a token) are written from templates around ``json``'s C string encoder, byte for byte
what ``json.dumps`` writes; lines are parsed with orjson when the ``speed`` extra installed it
(about five times faster here), and with ``json`` whenever orjson declines a line, so that what
is accepted and every error message stay the standard library's.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from typing import Any, Protocol

from ._codec import ServerSentEvent, encode_data, encode_json_data

try:
    import orjson
except ImportError:  # the speed extra is not installed
    orjson = None  # type: ignore[assignment]

logger = logging.getLogger("sse_bridge")

DialectFunc = Callable[[Any], Iterable[Any]]
"""A custom dialect: takes one decoded JSON value, returns the events to send for it.

Each item may be a :class:`ServerSentEvent`, a ``str`` (sent as the data field verbatim), or any
other JSON-serialisable value (sent as compact JSON)."""

TRUNCATED = (
    "upstream closed the stream before its final chunk (done: true); the answer is incomplete"
)
EMPTY = "upstream closed the stream without sending anything"
AFTER_DONE = "upstream sent a line after its final chunk (done: true)"

_UNSAFE = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def dumps(value: Any) -> str:
    """Compact JSON for a ``data:`` field (see the module docstring for the escaping)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Only non-ASCII text can hold the three characters (and isascii() is a flag lookup).
    return text if text.isascii() else text.translate(_UNSAFE)


def loads(line: str) -> Any:
    """``json.loads``, through orjson where it is installed and accepts the line."""
    if orjson is not None:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            # NaN, integers past 64 bits, lone surrogates, or not JSON: json decides, and
            # its message is the one reported.
            pass
    return json.loads(line)


def _string(value: str) -> bytes:
    """``dumps(value)`` for a str, as UTF-8: json's C string encoder, without the encoder object."""
    text = encode_basestring(value)
    if text.isascii():
        return text.encode("ascii")
    return text.translate(_UNSAFE).encode("utf-8", "backslashreplace")


def _data(value: Any) -> bytes:
    return encode_data(dumps(value))


def _not_json(error: json.JSONDecodeError) -> str:
    return f"upstream sent a line that is not JSON ({error.msg} at column {error.colno})"


class Translator(Protocol):
    """One stream's translation state."""

    finished: bool
    """True once a terminal event was produced (an error): the stream must end now."""
    completed: bool
    """True once the upstream's own final chunk was seen: the answer is whole, and the stream
    ends cleanly when the upstream's body does."""

    def line(self, line: str) -> list[bytes]:
        """The encoded events for one complete line."""
        ...

    def end(self) -> list[bytes]: ...

    def fail(self, message: str) -> list[bytes]: ...

    def bad_line(self, line: str, reason: str) -> list[bytes]:
        """A line that could not be translated: reported, and the stream goes on."""
        ...

    def stop(self) -> list[bytes]:
        """The final events of a stream stopped on purpose (a DELETE of its resume endpoint)."""
        ...


STOPPED = {"finished": True, "done_reason": "stopped"}


class _Translator:
    """What the dialects share: the state flags, and errors as ``{"error": "..."}``."""

    def __init__(self) -> None:
        self.finished = False
        self.completed = False

    def end(self) -> list[bytes]:
        return []

    def fail(self, message: str) -> list[bytes]:
        self.finished = True
        return [_data({"error": message})]

    def bad_line(self, line: str, reason: str) -> list[bytes]:
        # The line itself goes along: nothing the upstream sent is silently lost.
        return [_data({"error": reason, "line": line})]

    def stop(self) -> list[bytes]:
        # Ollama's final chunk names why it ended in done_reason; a stop is one more reason.
        self.finished = True
        return [_data(STOPPED)]


class RawTranslator(_Translator):
    """``raw``: every line verbatim as one event; errors as ``{"error": "..."}``."""

    def line(self, line: str) -> list[bytes]:
        return [encode_data(line)]


class CallableTranslator(_Translator):
    """A user function applied to each decoded JSON value."""

    def __init__(self, func: DialectFunc) -> None:
        super().__init__()
        self._func = func

    def line(self, line: str) -> list[bytes]:
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            return self.bad_line(line, _not_json(exc))
        try:
            return [_as_event(item) for item in self._func(value)]
        except Exception as exc:
            logger.exception("sse_bridge dialect %r failed on a line", self._func)
            return self.bad_line(line, f"the dialect failed on a line ({type(exc).__name__})")


def _as_event(item: Any) -> bytes:
    if isinstance(item, ServerSentEvent):
        return item.encode()
    if isinstance(item, str):
        return encode_data(item)
    return _data(item)


def _is_chunk(value: Any) -> bool:
    """An Ollama /api/chat or /api/generate chunk (as opposed to, say, /api/pull progress)."""
    return isinstance(value, dict) and "done" in value


def _parts(chunk: dict[str, Any]) -> tuple[str, str, list[Any]]:
    """The token, thinking and tool calls a chat or generate chunk carries."""
    message = chunk.get("message")
    if isinstance(message, dict):
        token = message.get("content") or ""
        thinking = message.get("thinking") or ""
        tool_calls = message.get("tool_calls") or []
    else:
        token = chunk.get("response") or ""
        thinking = chunk.get("thinking") or ""
        tool_calls = []
    return str(token), str(thinking), list(tool_calls)


def _usage(chunk: dict[str, Any]) -> dict[str, Any]:
    # Ollama's metrics are the *_count and *_duration (nanoseconds) keys of the done chunk.
    return {k: v for k, v in chunk.items() if k.endswith(("_count", "_duration"))}


def _error_text(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value)


class OllamaTranslator(_Translator):
    """``ollama``: ``{"token"}`` per chunk, ``{"finished"}`` at the end, ``{"error"}`` on error."""

    def __init__(self) -> None:
        super().__init__()
        self._seen_chunk = False
        self._seen_any = False

    def line(self, line: str) -> list[bytes]:
        self._seen_any = True
        if self.completed:
            # Ollama never does this; a server that does still has its line delivered.
            return self.bad_line(line, AFTER_DONE)
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            return self.bad_line(line, _not_json(exc))
        if isinstance(value, dict) and "error" in value:
            return self.fail(_error_text(value["error"]))
        if not _is_chunk(value):
            return [encode_data(line)]
        self._seen_chunk = True
        events = []
        token, thinking, tool_calls = _parts(value)
        if tool_calls:
            event: dict[str, Any] = {"token": token}
            if thinking:
                event["thinking"] = thinking
            event["tool_calls"] = tool_calls
            events.append(_data(event))
        elif thinking:
            thought = b'{"token":%b,"thinking":%b}' % (_string(token), _string(thinking))
            events.append(encode_json_data(thought))
        elif token:
            # Once per token: {"token": ...} from a template, as dumps() would write it.
            events.append(b'data: {"token":%b}\n\n' % _string(token))
        if value.get("done") is True:
            self.completed = True
            final: dict[str, Any] = {"finished": True, "done_reason": value.get("done_reason")}
            final["usage"] = _usage(value)
            if "context" in value:
                final["context"] = value["context"]
            events.append(_data(final))
        return events

    def end(self) -> list[bytes]:
        if self.completed:
            return []
        if self._seen_chunk:
            return self.fail(TRUNCATED)
        # A stream of other objects (e.g. /api/pull progress) has no done chunk to wait for.
        return [] if self._seen_any else self.fail(EMPTY)

    def fail(self, message: str) -> list[bytes]:
        self.finished = True
        return [_data({"error": message, "finished": True})]


class OpenAITranslator(_Translator):
    """``openai``: Ollama chunks as ``chat.completion.chunk`` objects, then ``[DONE]``."""

    def __init__(self) -> None:
        super().__init__()
        self._id = f"chatcmpl-{secrets.token_hex(12)}"
        self._created = int(time.time())
        self._role_sent = False
        self._seen_any = False
        self._tool_calls = 0
        self._model: Any = ""
        # What every chunk of this stream starts with, as dumps() writes it.
        self._prefix = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":'
            % (
                self._id.encode(),
                self._created,
            )
        )

    def line(self, line: str) -> list[bytes]:
        self._seen_any = True
        if self.completed:
            return self.bad_line(line, AFTER_DONE)
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            return self.bad_line(line, _not_json(exc))
        if isinstance(value, dict) and "error" in value:
            return self.fail(_error_text(value["error"]))
        if not _is_chunk(value):
            return [encode_data(line)]
        events = []
        token, thinking, tool_calls = _parts(value)
        model = self._model = value.get("model", "")
        if token and self._role_sent and not thinking and not tool_calls and isinstance(model, str):
            # Once per token: the chunk from a template, as _chunk() and dumps() would write it.
            events.append(
                self._prefix
                + b'%b,"choices":[{"index":0,"delta":{"content":%b},"finish_reason":null}]}\n\n'
                % (_string(model), _string(token))
            )
            token = thinking = ""
            tool_calls = []
            if value.get("done") is not True:
                return events
        delta: dict[str, Any] = {}
        if not self._role_sent:
            delta["role"] = "assistant"
            self._role_sent = True
        if token or not tool_calls:
            delta["content"] = token
        if thinking:
            delta["reasoning"] = thinking
        if tool_calls:
            delta["tool_calls"] = [self._tool_call(call) for call in tool_calls]
        if token or thinking or tool_calls or "role" in delta:
            events.append(self._chunk(value, delta, None))
        if value.get("done") is True:
            self.completed = True
            # Ollama's other reasons (load, unload) have no OpenAI name; they ended normally.
            if value.get("done_reason") == "length":
                reason = "length"
            else:
                reason = "tool_calls" if self._tool_calls else "stop"
            final = self._chunk(value, {}, reason)
            events.append(final)
            events.append(b"data: [DONE]\n\n")
        return events

    def end(self) -> list[bytes]:
        if self.completed:
            return []
        return self.fail(TRUNCATED if self._seen_any else EMPTY)

    def fail(self, message: str) -> list[bytes]:
        self.finished = True
        return [self._error(message)]

    def bad_line(self, line: str, reason: str) -> list[bytes]:
        return [self._error(reason)]

    def stop(self) -> list[bytes]:
        # As OpenAI ends a stream its client stopped: a finish chunk, then [DONE].
        self.finished = True
        final = self._chunk({"model": self._model}, {}, "stop")
        return [final, b"data: [DONE]\n\n"]

    def _error(self, message: str) -> bytes:
        # The openai SDK raises APIError for a data object with an "error" key.
        return _data({"error": {"message": message, "type": "api_error"}})

    def _tool_call(self, call: Any) -> dict[str, Any]:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        arguments = function.get("arguments", {})
        converted = {
            "index": self._tool_calls,
            "id": (call.get("id") if isinstance(call, dict) else None)
            or f"call_{secrets.token_hex(8)}",
            "type": "function",
            "function": {
                "name": function.get("name", ""),
                # OpenAI carries arguments as a JSON string; Ollama as an object.
                "arguments": arguments if isinstance(arguments, str) else dumps(arguments),
            },
        }
        self._tool_calls += 1
        return converted

    def _chunk(self, value: dict[str, Any], delta: dict[str, Any], reason: str | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": value.get("model", ""),
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        prompt = value.get("prompt_eval_count", 0)
        completion = value.get("eval_count")
        if reason is not None and _counts(prompt, completion):
            chunk["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return _data(chunk)


def _counts(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


DIALECTS: dict[str, Callable[[], Translator]] = {
    "raw": RawTranslator,
    "ollama": OllamaTranslator,
    "openai": OpenAITranslator,
}


def resolve_dialect(dialect: str | DialectFunc) -> Callable[[], Translator]:
    """The translator factory for a dialect name or a custom callable."""
    if callable(dialect):
        func = dialect
        return lambda: CallableTranslator(func)
    try:
        return DIALECTS[dialect]
    except (KeyError, TypeError):
        names = ", ".join(repr(name) for name in DIALECTS)
        raise ValueError(
            f"unknown dialect {dialect!r}: use one of {names} or a callable (obj) -> events"
        ) from None
