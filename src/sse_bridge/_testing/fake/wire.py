"""What the fake writes: Go-style JSON, RFC 3339 timestamps and each endpoint's framing.

Ollama is written in Go, so its bytes are ``encoding/json``'s: compact, with ``<`` ``>`` ``&``
U+2028 and U+2029 escaped as ``\\uXXXX`` and any other non-ASCII character as raw UTF-8.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sse_bridge._testing.fake.job import Job, Token

ERROR_MESSAGE = "an error was encountered while running the model"
MALFORMED_LINE = "this is not json"
NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"
SSE = "text/event-stream"

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def encode(payload: object) -> bytes:
    """`payload` as Go's ``encoding/json`` writes it."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate can come in through a JSON escape and has no UTF-8 form.
    return text.translate(_GO_ESCAPES).encode("utf-8", "replace")


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as Go's ``time.RFC3339Nano`` in UTC."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    # Go's RFC3339Nano drops trailing zeros, and the dot when nothing is left.
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _created_at() -> str:
    return rfc3339(time.time_ns())


def nanoseconds(seconds: float) -> int:
    """A duration field: Ollama's are integer nanoseconds."""
    # Clients divide counts by these durations, so none may be zero.
    return max(1, int(seconds * 1e9))


def _joined(tokens: Sequence[Token], kind: str) -> str:
    return "".join(token.text for token in tokens if token.kind == kind)


class Framing:
    """How one endpoint frames tokens, the end of an answer, errors and whole answers."""

    stream_default = True
    stream_type = NDJSON

    def frame(self, payload: object) -> bytes:
        return encode(payload) + b"\n"

    def token(self, job: Job, token: Token) -> bytes:
        raise NotImplementedError

    def done(self, job: Job, metrics: dict[str, int]) -> list[bytes]:
        raise NotImplementedError

    def whole(self, job: Job, tokens: list[Token], metrics: dict[str, int]) -> object:
        raise NotImplementedError

    def loaded(self, job: Job) -> object:
        raise NotImplementedError

    def error(self, message: str, status: int) -> object:
        return {"error": message}

    def stream_error(self) -> bytes:
        return self.frame({"error": ERROR_MESSAGE})

    def malformed(self) -> bytes:
        return MALFORMED_LINE.encode() + b"\n"


class ChatFraming(Framing):
    """``/api/chat``: NDJSON chunks with a ``message``."""

    def _message(self, job: Job, tokens: Sequence[Token]) -> dict[str, object]:
        message: dict[str, object] = {"role": "assistant", "content": _joined(tokens, "content")}
        if thinking := _joined(tokens, "thinking"):
            message["thinking"] = thinking
        if job.tool and any(token.kind == "tool_call" for token in tokens):
            name, arguments = job.tool
            # Current Ollama adds `id` to each call and `index` inside `function`.
            function = {"index": 0, "name": name, "arguments": arguments}
            message["tool_calls"] = [{"id": f"call_{job.record_id:08x}", "function": function}]
        return message

    def token(self, job: Job, token: Token) -> bytes:
        message = self._message(job, [token])
        return self.frame(
            {"model": job.model, "created_at": _created_at(), "message": message, "done": False}
        )

    def done(self, job: Job, metrics: dict[str, int]) -> list[bytes]:
        return [self.frame(self.whole(job, [], metrics))]

    def whole(self, job: Job, tokens: list[Token], metrics: dict[str, int]) -> object:
        return {
            "model": job.model,
            "created_at": _created_at(),
            "message": self._message(job, tokens),
            "done": True,
            "done_reason": job.done_reason,
            **metrics,
        }

    def loaded(self, job: Job) -> object:
        return {
            "model": job.model,
            "created_at": _created_at(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "load",
        }


class GenerateFraming(Framing):
    """``/api/generate``: NDJSON chunks with a ``response``, and a ``context`` at the end."""

    def _fields(self, tokens: Sequence[Token]) -> dict[str, object]:
        fields: dict[str, object] = {"response": _joined(tokens, "content")}
        if thinking := _joined(tokens, "thinking"):
            fields["thinking"] = thinking
        return fields

    def token(self, job: Job, token: Token) -> bytes:
        fields = self._fields([token])
        return self.frame(
            {"model": job.model, "created_at": _created_at(), **fields, "done": False}
        )

    def done(self, job: Job, metrics: dict[str, int]) -> list[bytes]:
        return [self.frame(self.whole(job, [], metrics))]

    def whole(self, job: Job, tokens: list[Token], metrics: dict[str, int]) -> object:
        context = list(range(1, job.prompt_tokens + metrics["eval_count"] + 1))
        return {
            "model": job.model,
            "created_at": _created_at(),
            **self._fields(tokens),
            "done": True,
            "done_reason": job.done_reason,
            "context": context,
            **metrics,
        }

    def loaded(self, job: Job) -> object:
        return {
            "model": job.model,
            "created_at": _created_at(),
            "response": "",
            "done": True,
            "done_reason": "load",
        }


class OpenAIChatFraming(Framing):
    """``/v1/chat/completions``: SSE chunks like Ollama's OpenAI compatibility layer."""

    stream_default = False  # OpenAI's default, unlike Ollama's native endpoints.
    stream_type = SSE

    def frame(self, payload: object) -> bytes:
        return b"data: " + encode(payload) + b"\n\n"

    def _message(self, job: Job, tokens: Sequence[Token]) -> dict[str, object]:
        message: dict[str, object] = {"role": "assistant", "content": _joined(tokens, "content")}
        if reasoning := _joined(tokens, "thinking"):
            message["reasoning"] = reasoning
        if job.tool and any(token.kind == "tool_call" for token in tokens):
            name, arguments = job.tool
            # OpenAI carries arguments as a JSON string, where Ollama sends an object.
            function = {"name": name, "arguments": json.dumps(arguments, separators=(",", ":"))}
            call_id = f"call_{job.record_id:08x}"
            message["tool_calls"] = [
                {"id": call_id, "index": 0, "type": "function", "function": function}
            ]
        return message

    def _envelope(self, job: Job, kind: str, choices: list[object]) -> dict[str, object]:
        return {
            "id": f"chatcmpl-{job.record_id}",
            "object": kind,
            "created": job.created,
            "model": job.model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        }

    def _finish_reason(self, job: Job) -> str:
        return "tool_calls" if job.tool else job.done_reason

    def token(self, job: Job, token: Token) -> bytes:
        choice = {"index": 0, "delta": self._message(job, [token]), "finish_reason": None}
        return self.frame(self._envelope(job, "chat.completion.chunk", [choice]))

    def _usage(self, job: Job, metrics: dict[str, int]) -> dict[str, int]:
        prompt, completion = job.prompt_tokens, metrics["eval_count"]
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def done(self, job: Job, metrics: dict[str, int]) -> list[bytes]:
        delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "finish_reason": self._finish_reason(job)}
        frames = [self.frame(self._envelope(job, "chat.completion.chunk", [choice]))]
        if job.include_usage:
            usage = self._envelope(job, "chat.completion.chunk", []) | {
                "usage": self._usage(job, metrics)
            }
            frames.append(self.frame(usage))
        frames.append(b"data: [DONE]\n\n")
        return frames

    def whole(self, job: Job, tokens: list[Token], metrics: dict[str, int]) -> object:
        message = self._message(job, tokens)
        choice = {"index": 0, "message": message, "finish_reason": self._finish_reason(job)}
        return self._envelope(job, "chat.completion", [choice]) | {
            "usage": self._usage(job, metrics)
        }

    def error(self, message: str, status: int) -> object:
        kind = "invalid_request_error" if status == 400 else "api_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def stream_error(self) -> bytes:
        return self.frame({"error": {"message": ERROR_MESSAGE, "type": "api_error"}})

    def malformed(self) -> bytes:
        return f"data: {MALFORMED_LINE}\n\n".encode()
