"""The ``openai`` dialect: Ollama chunks as OpenAI ``chat.completion.chunk`` objects.

Written so that the official ``openai`` SDK streams from an Ollama-style upstream: one stable
``id`` and ``created`` per stream, the role on the first delta, tool calls and finish reasons in
OpenAI's shapes, and errors as the ``{"error": {...}}`` objects the SDK raises as ``APIError``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sse_bridge._dialects.translator import (
    EMPTY,
    TRUNCATED,
    JSONTranslator,
    chunk_parts,
    dumps,
    json_event,
    json_string,
)

DONE = b"data: [DONE]\n\n"


class OpenAITranslator(JSONTranslator):
    """``openai``: Ollama chunks as ``chat.completion.chunk`` objects, then ``[DONE]``."""

    def __init__(self) -> None:
        super().__init__()
        self._id = f"chatcmpl-{secrets.token_hex(12)}"
        self._created = int(time.time())
        self._role_sent = False
        self._tool_calls_sent = 0
        self._model: Any = ""
        # What every chunk of this stream starts with, as dumps() writes it.
        self._prefix = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":'
            % (
                self._id.encode(),
                self._created,
            )
        )

    def on_chunk(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        token, thinking, tool_calls = chunk_parts(chunk)
        model = self._model = chunk.get("model", "")
        if token and self._role_sent and not thinking and not tool_calls and isinstance(model, str):
            # Once per token: the chunk from a template, as _chunk_event() and dumps() would
            # write it.
            return [
                self._prefix
                + b'%b,"choices":[{"index":0,"delta":{"content":%b},"finish_reason":null}]}\n\n'
                % (json_string(model), json_string(token))
            ]
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
            return [self._chunk_event(chunk, delta, None)]
        return []

    def on_final(self, chunk: dict[str, Any], line: str) -> list[bytes]:
        events = self.on_chunk(chunk, line)
        self.completed = True
        # Ollama's other reasons (load, unload) have no OpenAI name; they ended normally.
        if chunk.get("done_reason") == "length":
            reason = "length"
        else:
            reason = "tool_calls" if self._tool_calls_sent else "stop"
        events.append(self._chunk_event(chunk, {}, reason))
        events.append(DONE)
        return events

    def end(self) -> list[bytes]:
        if self.completed:
            return []
        return self.fail(TRUNCATED if self.seen_line else EMPTY)

    def fail(self, message: str) -> list[bytes]:
        self.finished = True
        return [self._error_event(message)]

    def bad_line(self, line: str, reason: str) -> list[bytes]:
        return [self._error_event(reason)]

    def stop(self) -> list[bytes]:
        # As OpenAI ends a stream its client stopped: a finish chunk, then [DONE].
        self.finished = True
        return [self._chunk_event({"model": self._model}, {}, "stop"), DONE]

    def _error_event(self, message: str) -> bytes:
        # The openai SDK raises APIError for a data object with an "error" key.
        return json_event({"error": {"message": message, "type": "api_error"}})

    def _tool_call(self, call: Any) -> dict[str, Any]:
        """An Ollama tool call in OpenAI's shape, numbered in the order they were sent."""
        function = call.get("function", {}) if isinstance(call, dict) else {}
        arguments = function.get("arguments", {})
        converted = {
            "index": self._tool_calls_sent,
            "id": (call.get("id") if isinstance(call, dict) else None)
            or f"call_{secrets.token_hex(8)}",
            "type": "function",
            "function": {
                "name": function.get("name", ""),
                # OpenAI carries arguments as a JSON string; Ollama as an object.
                "arguments": arguments if isinstance(arguments, str) else dumps(arguments),
            },
        }
        self._tool_calls_sent += 1
        return converted

    def _chunk_event(
        self, chunk: dict[str, Any], delta: dict[str, Any], reason: str | None
    ) -> bytes:
        """A ``chat.completion.chunk`` event; a finishing one carries Ollama's token counts."""
        event: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": chunk.get("model", ""),
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        prompt = chunk.get("prompt_eval_count", 0)
        completion = chunk.get("eval_count")
        if reason is not None and _are_counts(prompt, completion):
            event["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return json_event(event)


def _are_counts(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)
