"""How NDJSON lines become events: the raw, ollama, openai and ai-sdk dialects, or your own.

A dialect is a name, a callable applied to each decoded JSON value (:data:`DialectFunc`), or a
:class:`Translator` subclass; :func:`resolve_dialect` turns each into a factory of per-stream
translators. The JSON dialects are hooks of one template, :class:`JSONTranslator` (in
``translator.py``, with the event writers they share); ``openai`` lives in ``openai.py``, ``ai-sdk``
in ``ai_sdk.py``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

from sse_bridge._core.codec import ServerSentEvent, encode_data, encode_json_data
from sse_bridge._dialects.ai_sdk import AISDKTranslator
from sse_bridge._dialects.openai import OpenAITranslator
from sse_bridge._dialects.translator import (
    EMPTY,
    TRUNCATED,
    JSONTranslator,
    Translator,
    chunk_parts,
    json_event,
    json_string,
)

logger = logging.getLogger("sse_bridge")

DialectFunc = Callable[[Any], Iterable[Any]]
"""A custom dialect: takes one decoded JSON value, returns the events to send for it.

Each item may be a :class:`ServerSentEvent`, a ``str`` (sent as the data field verbatim), or any
other JSON-serialisable value (sent as compact JSON)."""

# What ``dialect=`` takes: a name, a function of one JSON value, or a Translator class.
Dialect = str | DialectFunc | type[Translator]


class RawTranslator(Translator):
    """``raw``: every line verbatim as one event (no parsing); errors as ``{"error": "..."}``."""

    def translate(self, line: str) -> list[bytes]:
        return [encode_data(line)]


class CallableTranslator(JSONTranslator):
    """A :data:`DialectFunc` applied to each decoded JSON value, whatever its shape."""

    def __init__(self, func: DialectFunc) -> None:
        super().__init__()
        self._func = func

    def on_other(self, value: Any, line: str) -> list[bytes]:
        events = []
        try:
            # A loop, not a comprehension or a helper per item: each would be one more frame.
            for item in self._func(value):
                if isinstance(item, ServerSentEvent):
                    events.append(item.encode())
                elif isinstance(item, str):
                    events.append(encode_data(item))
                else:
                    events.append(json_event(item))
        except Exception as exc:
            logger.exception("sse_bridge dialect %r failed on a line", self._func)
            return self.bad_line(line, f"the dialect failed on a line ({type(exc).__name__})")
        return events

    # The function sees error objects and final chunks too, and decides what they mean; it never
    # marks the stream completed.
    on_chunk = on_final = on_error = on_other


def _usage(chunk: dict[str, Any]) -> dict[str, Any]:
    # Ollama's metrics are the *_count and *_duration (nanoseconds) keys of the done chunk.
    return {k: v for k, v in chunk.items() if k.endswith(("_count", "_duration"))}


class OllamaTranslator(JSONTranslator):
    """``ollama``: ``{"token"}`` per chunk, ``{"finished"}`` at the end, ``{"error"}`` on error."""

    def __init__(self) -> None:
        super().__init__()
        self._seen_chunk = False

    def on_chunk(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        self._seen_chunk = True
        token, thinking, tool_calls = chunk_parts(chunk)
        if tool_calls:
            event: dict[str, Any] = {"token": token}
            if thinking:
                event["thinking"] = thinking
            event["tool_calls"] = tool_calls
            return [json_event(event)]
        if thinking:
            thought = b'{"token":%b,"thinking":%b}' % (json_string(token), json_string(thinking))
            return [encode_json_data(thought)]
        if token:
            # Once per token: {"token": ...} from a template, as dumps() would write it.
            return [b'data: {"token":%b}\n\n' % json_string(token)]
        return []

    def on_final(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        events = self.on_chunk(chunk, line)
        self.completed = True
        final: dict[str, Any] = {"finished": True, "done_reason": chunk.get("done_reason")}
        final["usage"] = _usage(chunk)
        if "context" in chunk:
            final["context"] = chunk["context"]
        events.append(json_event(final))
        return events

    def end(self) -> list[bytes]:
        if self.completed:
            return []
        if self._seen_chunk:
            return self.fail(TRUNCATED)
        # A stream of other objects (e.g. /api/pull progress) has no done chunk to wait for.
        return [] if self.seen_line else self.fail(EMPTY)

    def fail(self, message: str) -> list[bytes]:
        self.finished = True
        return [json_event({"error": message, "finished": True})]

    def shutdown(self, message: str) -> list[bytes]:
        # The error event still (a client that knows only errors retries), and why it ended
        # where Ollama's final chunk says it: done_reason.
        self.finished = True
        return [json_event({"error": message, "finished": True, "done_reason": "shutdown"})]


DIALECTS: dict[str, Callable[[], Translator]] = {
    "raw": RawTranslator,
    "ollama": OllamaTranslator,
    "openai": OpenAITranslator,
    "ai-sdk": AISDKTranslator,
}


def resolve_dialect(dialect: str | DialectFunc | type[Translator]) -> Callable[[], Translator]:
    """The translator factory for a dialect name, a :class:`Translator` subclass or a callable."""
    if isinstance(dialect, type) and issubclass(dialect, Translator):
        if inspect.isabstract(dialect):
            raise ValueError(
                f"dialect {dialect.__name__} is abstract: a Translator subclass must define"
                " translate(line)"
            )
        return dialect
    if callable(dialect):
        # Any other callable, a class included, is a function of one decoded value.
        func = cast(DialectFunc, dialect)
        return lambda: CallableTranslator(func)
    try:
        return DIALECTS[dialect]
    except (KeyError, TypeError):
        names = ", ".join(repr(name) for name in DIALECTS)
        raise ValueError(
            f"unknown dialect {dialect!r}: use one of {names}, a Translator subclass or a"
            " callable (obj) -> events"
        ) from None
