"""What every dialect shares: the ``Translator`` base class, the JSON template, the event writers.

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
from abc import ABC, abstractmethod
from json.encoder import encode_basestring
from typing import Any

from sse_bridge._core.codec import encode_data

try:
    import orjson
except ImportError:  # the speed extra is not installed
    orjson = None  # type: ignore[assignment]

TRUNCATED = (
    "upstream closed the stream before its final chunk (done: true); the answer is incomplete"
)
EMPTY = "upstream closed the stream without sending anything"
AFTER_DONE = "upstream sent a line after its final chunk (done: true)"
STOPPED = {"finished": True, "done_reason": "stopped"}

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


def json_string(value: str) -> bytes:
    """``dumps(value)`` for a str, as UTF-8: json's C string encoder, without the encoder object."""
    text = encode_basestring(value)
    if text.isascii():
        return text.encode("ascii")
    return text.translate(_UNSAFE).encode("utf-8", "backslashreplace")


def json_event(value: Any) -> bytes:
    """The encoded event whose data is ``value`` as compact JSON."""
    return encode_data(dumps(value))


def not_json(error: json.JSONDecodeError) -> str:
    return f"upstream sent a line that is not JSON ({error.msg} at column {error.colno})"


def error_text(value: Any) -> str:
    """The message of an upstream ``{"error": ...}``: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else dumps(value)


class Translator(ABC):
    """One stream's translation from NDJSON lines to events: subclass it for a stateful dialect.

    Pass the subclass itself as ``dialect=``: the middleware calls it with no arguments once
    per converted stream, so every stream starts from fresh state. A subclass that defines
    ``__init__`` calls ``super().__init__()`` first.

    Every method returns the events to send, in order, already encoded: ``bytes`` ending in the
    blank line that ends an event, such as ``ServerSentEvent(data=...).encode()``. An empty
    list sends nothing. The methods are called from the event loop, one at a time, and must not
    block.

    Attributes:
        finished: ``True`` once the translator produced a terminal event (an error, a stop).
            The middleware checks it after every call: the events returned with it are sent,
            the rest of the upstream body is dropped and the stream ends.
        completed: ``True`` once the upstream's own final object was seen: the answer is whole,
            and the stream ends cleanly when the upstream's body does. Leave it ``False`` for a
            format that has no final object; then the end of the body is the end of the answer
            unless :meth:`end` says otherwise.
        headers: response headers the format needs beyond an event stream's own, as
            ``(name, value)`` byte pairs in lower case (say a protocol version its clients
            check); the middleware adds them to every stream of this dialect, resumed ones too.
    """

    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self) -> None:
        self.finished = False
        self.completed = False

    @abstractmethod
    def translate(self, line: str) -> list[bytes]:
        """The events for one complete line of the body.

        Called for each non-blank line, in order, without its line ending (decoded as UTF-8,
        bad bytes as U+FFFD). If it raises, the exception is logged and :meth:`bad_line` is
        called with the same line instead; the stream goes on.
        """

    def end(self) -> list[bytes]:
        """The events after the last line, when the upstream's body ended and the stream is not
        ``finished``. Set ``finished`` here (with an error event) to report an answer that
        broke off. By default nothing."""
        return []

    def fail(self, message: str) -> list[bytes]:
        """The terminal error event for a failure of the bridge or of the app (a line over
        ``max_line_bytes``, the app raising or returning early, a stream abandoned by its
        client). Must set ``finished``. It may be called on a fresh translator that saw no line.
        By default ``{"error": message}``."""
        self.finished = True
        return [json_event({"error": message})]

    def bad_line(self, line: str, reason: str) -> list[bytes]:
        """The events for a line that could not be translated (:meth:`translate` raised);
        ``reason`` says why. The stream goes on. By default ``{"error": reason, "line": line}``:
        nothing the upstream sent is silently lost."""
        return [json_event({"error": reason, "line": line})]

    def stop(self) -> list[bytes]:
        """The final events of a stream stopped on purpose (a ``DELETE`` of its resume
        endpoint, docs/resume.md). Must set ``finished``. By default
        ``{"finished": true, "done_reason": "stopped"}``, as Ollama's final chunk names why it
        ended in ``done_reason``."""
        self.finished = True
        return [json_event(STOPPED)]

    def shutdown(self, message: str) -> list[bytes]:
        """The final events of a stream the bridge itself ends as it shuts down (SIGTERM, once
        ``--grace`` is over): the answer is incomplete, and a retry elsewhere may complete it.
        Must set ``finished``. By default the dialect's error event (:meth:`fail`)."""
        return self.fail(message)


class JSONTranslator(Translator):
    """The template of the JSON dialects: each line is parsed once, then sorted into one hook.

    ``{"error": ...}`` goes to :meth:`on_error`; an Ollama chat or generate chunk (an object with
    ``done``) to :meth:`on_final` if ``done`` is ``true``, else to :meth:`on_chunk`; any other
    JSON value (say ``/api/pull`` progress) to :meth:`on_other`. A line that is not JSON, or
    any line after the final chunk, is a :meth:`bad_line`. Each hook gets the decoded value
    and its line, positionally (so that one function can serve as several hooks).
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen_line = False

    def translate(self, line: str) -> list[bytes]:
        self.seen_line = True
        if self.completed:
            # Ollama never does this; a server that does still has its line delivered.
            return self.bad_line(line, AFTER_DONE)
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            return self.bad_line(line, not_json(exc))
        if isinstance(value, dict):
            if "error" in value:
                return self.on_error(value, line)
            if "done" in value:
                if value["done"] is True:
                    return self.on_final(value, line)
                return self.on_chunk(value, line)
        return self.on_other(value, line)

    @abstractmethod
    def on_chunk(self, chunk: dict[str, Any], line: str, /) -> list[bytes]:
        """A chunk of the answer (``done`` is anything but ``true``)."""

    @abstractmethod
    def on_final(self, chunk: dict[str, Any], line: str, /) -> list[bytes]:
        """The final chunk (``done: true``), which may carry the last token too. It sets
        ``completed``."""

    def on_error(self, value: dict[str, Any], line: str, /) -> list[bytes]:
        """The upstream's error object: it ends the stream."""
        return self.fail(error_text(value["error"]))

    def on_other(self, value: Any, line: str, /) -> list[bytes]:
        """Any other JSON value: sent as it came."""
        return [encode_data(line)]


def chunk_parts(chunk: dict[str, Any]) -> tuple[str, str, list[Any]]:
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
