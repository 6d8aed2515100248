"""An Ollama-compatible fake upstream: a small pure ASGI app that streams a canned answer.

It is sse_bridge's embedded default upstream (a new user sees tokens stream without installing a
model) and the paced, fault-injecting upstream of the tests and load tests. It writes what the real
server writes (see the README next to the Ollama fixtures in tests/fixtures/ollama):

- NDJSON, one compact object per line, escaped like Go's ``encoding/json``: ``<`` ``>`` ``&``
  U+2028 and U+2029 as ``\\uXXXX``, any other non-ASCII character as raw UTF-8. ``created_at`` is
  RFC 3339 in UTC with Go's trimmed nanoseconds.
- Headers go out with the first line, so while a model "loads" the client sees nothing at all.
- An error before the stream is a real status with ``{"error": ...}``; an error during it keeps the
  200, ends with an ``{"error": ...}`` line and sends no done chunk.
- ``/v1/chat/completions`` speaks SSE like Ollama's OpenAI compatibility layer, with ``role`` in
  every delta as Ollama sends it.

Deliberate deviations from the real server:

- The done chunk is paced like one more token: a real model generates an end-of-sequence token.
- ``fail_after``, ``stall_after`` and ``malformed_every`` count every token line, thinking and tool
  call chunks included; ``options.num_predict`` caps only the answer's content tokens.
- A known path with the wrong method answers 405 (Gin answers 404 for both).
- ``/_fake/requests`` is not Ollama's: it exposes what the fake saw, for tests in another process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import anyio
import anyio.lowlevel

from ._validate import check_count, check_seconds

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from sse_bridge._types import Message, Receive, Scope, Send

__all__ = [
    "FakeOllama",
    "FakeOllamaAbort",
    "FakeOllamaConfig",
    "RequestRecord",
]

OLLAMA_VERSION = "0.12.0"
ERROR_MESSAGE = "an error was encountered while running the model"
MALFORMED_LINE = "this is not json"
SAMPLE_ANSWER = (
    "Hello! This answer is streamed token by token from sse_bridge's fake Ollama \u2014 no model "
    "to download, no GPU to warm up. Each word travels as its own NDJSON line, paced like a real "
    "model, so you can watch a proxy & a browser keep up as it arrives. Markup such as <b>bold</b> "
    "stays plain text, and errors, stalls & cancellations can be injected on request."
)
SAMPLE_THINKING = "The user wants to see tokens stream, so I will explain where they come from."

Failure = Literal["error", "close"]
Outcome = Literal["completed", "cancelled", "failed"]
Phase = Literal["before_headers", "streaming", "stalled"]

# Tokens are words with their leading whitespace, the way real tokenizers split English.
_WORD = re.compile(r"\s*\S+")
_ANSWER_TOKENS: tuple[str, ...] = tuple(_WORD.findall(SAMPLE_ANSWER))
_THINKING_TOKENS = tuple(_WORD.findall(SAMPLE_THINKING))
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_NDJSON = "application/x-ndjson"
_JSON = "application/json; charset=utf-8"
_SSE = "text/event-stream"


@dataclass(frozen=True)
class FakeOllamaConfig:
    """Defaults for every request a `FakeOllama` answers.

    A request overrides any field but ``models`` with a top-level ``"fake": {...}`` object.

    Args:
        tokens_per_second: pace of the token lines; 0 sends them as fast as possible.
        load_delay: seconds before any response header, like Ollama loading a model.
        num_tokens: answer length in tokens; None is the whole sample answer, a number cycles it.
        fail_after: inject a failure after this many token lines; None never fails.
        failure: "error" writes Ollama's ``{"error": ...}`` line and ends the body normally (the
            status stays 200); "close" drops the connection without finishing the body.
        malformed_every: insert a non-JSON line after every Nth token line; None never does.
        think: send thinking chunks before the answer even when the request does not ask.
        stall_after: go silent after this many token lines for ``stall_seconds``, then go on.
        stall_seconds: length of that silence.
        models: the model names the server knows; a name without a tag means ``:latest``.

    Raises:
        ValueError: a field is out of range; the message says what is accepted.
    """

    tokens_per_second: float = 20.0
    load_delay: float = 0.0
    num_tokens: int | None = None
    fail_after: int | None = None
    failure: Failure = "error"
    malformed_every: int | None = None
    think: bool = False
    stall_after: int | None = None
    stall_seconds: float = 0.0
    models: tuple[str, ...] = ("llama3.2", "gemma4", "qwen2.5:7b")

    def __post_init__(self) -> None:
        check_seconds("tokens_per_second", self.tokens_per_second, "0 turns pacing off")
        check_seconds("load_delay", self.load_delay, "0 answers at once")
        check_seconds("stall_seconds", self.stall_seconds, "used with stall_after")
        check_count("num_tokens", self.num_tokens, 0, "None sends the whole sample", optional=True)
        check_count("fail_after", self.fail_after, 0, "None never fails", optional=True)
        check_count(
            "malformed_every", self.malformed_every, 1, "None never sends bad lines", optional=True
        )
        check_count("stall_after", self.stall_after, 0, "None never stalls", optional=True)
        if self.failure not in ("error", "close"):
            raise ValueError(f'failure must be "error" or "close", got {self.failure!r}')
        if not isinstance(self.think, bool):
            raise ValueError(f"think must be true or false, got {self.think!r}")
        if not isinstance(self.models, tuple) or not all(
            isinstance(name, str) and name for name in self.models
        ):
            raise ValueError(
                'models must be a tuple of non-empty names such as ("llama3.2",), '
                f"got {self.models!r}"
            )


_OVERRIDABLE = tuple(
    sorted(f.name for f in dataclasses.fields(FakeOllamaConfig) if f.name != "models")
)


@dataclass
class RequestRecord:
    """What the fake saw of one request and how it ended.

    The app updates a record from the server's event loop while a test may read it from another
    thread: every field is written once or only grows, and ``outcome`` is written last.

    Attributes:
        id: 1, 2, 3... in arrival order.
        method: the HTTP method.
        path: the request path, without the query string.
        headers: request headers with lower-case names; repeated headers are joined by ", ".
        started_at: ``time.monotonic()`` when the request arrived.
        body: the parsed JSON body when it was an object, else None.
        status: the response status, once headers were sent.
        headers_sent_at: ``time.monotonic()`` when the response headers were sent.
        ended_at: ``time.monotonic()`` when the response ended, failed or was cancelled.
        tokens_sent: token lines written (or generated, for a non-streaming answer).
        outcome: "completed", "cancelled" (the client went away) or "failed" (injected failure).
        cancelled_phase: for "cancelled": "before_headers", "streaming" or "stalled".
    """

    id: int
    method: str
    path: str
    headers: dict[str, str]
    started_at: float
    body: dict[str, Any] | None = None
    status: int | None = None
    headers_sent_at: float | None = None
    ended_at: float | None = None
    tokens_sent: int = 0
    outcome: Outcome | None = None
    cancelled_phase: Phase | None = None


def _finish(record: RequestRecord, outcome: Outcome, phase: Phase | None = None) -> None:
    # Pollers wait on `outcome`, so it is written after everything they may then read.
    record.ended_at = time.monotonic()
    record.cancelled_phase = phase
    record.outcome = outcome


class FakeOllamaAbort(Exception):
    """Raised by `FakeOllama` to drop a connection on purpose (``failure="close"``).

    A server that sees an exception after the response started closes the connection without
    finishing the body, which is the failure being simulated; uvicorn also logs it.
    """


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Token(NamedTuple):
    kind: Literal["thinking", "content", "tool_call"]
    text: str


@dataclass(frozen=True)
class _Job:
    """One generation, fully decided before anything is written."""

    record_id: int
    config: FakeOllamaConfig
    model: str
    stream: bool
    prompt_tokens: int
    thinking_tokens: int
    content_tokens: int
    done_reason: Literal["stop", "length", "load"]
    tool: tuple[str, dict[str, Any]] | None = None
    include_usage: bool = False
    created: int = 0

    @property
    def total(self) -> int:
        return self.thinking_tokens + (1 if self.tool else self.content_tokens)

    def token(self, index: int) -> _Token:
        # Computed per index rather than listed, so a huge num_tokens costs no memory.
        if index < self.thinking_tokens:
            return _Token("thinking", _THINKING_TOKENS[index % len(_THINKING_TOKENS)])
        if self.tool:
            return _Token("tool_call", "")
        return _Token("content", _answer_token(index - self.thinking_tokens))


def _answer_token(index: int) -> str:
    word = _ANSWER_TOKENS[index % len(_ANSWER_TOKENS)]
    if index >= len(_ANSWER_TOKENS) and not word[0].isspace():
        word = " " + word
    return word


def answer_tokens(num_tokens: int | None = None) -> list[str]:
    """The content tokens the fake streams for a request with this ``num_tokens``, in order.

    For tests and load tests that check every token arrived, once and in order.
    """
    count = len(_ANSWER_TOKENS) if num_tokens is None else num_tokens
    return [_answer_token(index) for index in range(count)]


def _encode(payload: object) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate can come in through a JSON escape and has no UTF-8 form.
    return text.translate(_GO_ESCAPES).encode("utf-8", "replace")


def _rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    # Go's RFC3339Nano drops trailing zeros, and the dot when nothing is left.
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _created_at() -> str:
    return _rfc3339(time.time_ns())


def _ns(seconds: float) -> int:
    # Clients divide counts by these durations, so none may be zero.
    return max(1, int(seconds * 1e9))


def _canonical(model: str) -> str:
    name = model.rsplit("/", 1)[-1]
    return model if ":" in name else f"{model}:latest"


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _example_call(tools: list[Any]) -> tuple[str, dict[str, Any]]:
    """Name and arguments of a call to the first tool, arguments filled in from its schema."""
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    examples: dict[str, object] = {
        "integer": 1,
        "number": 1,
        "boolean": True,
        "array": [],
        "object": {},
    }
    arguments = {}
    for key, schema in (properties if isinstance(properties, dict) else {}).items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        arguments[key] = examples.get(kind, "example") if isinstance(kind, str) else "example"
    return (name if isinstance(name, str) and name else "tool"), arguments


def _metrics(
    job: _Job, record: RequestRecord, loaded_at: float, load_took: float
) -> dict[str, int]:
    now = time.monotonic()
    return {
        "total_duration": _ns(now - record.started_at),
        "load_duration": _ns(load_took),
        "prompt_eval_count": job.prompt_tokens,
        "prompt_eval_duration": _ns(job.prompt_tokens * 0.0002),
        "eval_count": record.tokens_sent,
        "eval_duration": _ns(now - loaded_at),
    }


class _Dialect:
    """How one endpoint frames tokens, the end of an answer, errors and whole answers."""

    stream_default = True
    stream_type = _NDJSON

    def frame(self, payload: object) -> bytes:
        return _encode(payload) + b"\n"

    def token(self, job: _Job, token: _Token) -> bytes:
        raise NotImplementedError

    def done(self, job: _Job, metrics: dict[str, int]) -> list[bytes]:
        raise NotImplementedError

    def whole(self, job: _Job, tokens: list[_Token], metrics: dict[str, int]) -> object:
        raise NotImplementedError

    def loaded(self, job: _Job) -> object:
        raise NotImplementedError

    def error(self, message: str, status: int) -> object:
        return {"error": message}

    def stream_error(self) -> bytes:
        return self.frame({"error": ERROR_MESSAGE})

    def malformed(self) -> bytes:
        return MALFORMED_LINE.encode() + b"\n"


def _joined(tokens: Sequence[_Token], kind: str) -> str:
    return "".join(token.text for token in tokens if token.kind == kind)


class _OllamaChat(_Dialect):
    def _message(self, job: _Job, tokens: Sequence[_Token]) -> dict[str, object]:
        message: dict[str, object] = {"role": "assistant", "content": _joined(tokens, "content")}
        if thinking := _joined(tokens, "thinking"):
            message["thinking"] = thinking
        if job.tool and any(token.kind == "tool_call" for token in tokens):
            name, arguments = job.tool
            # Current Ollama adds `id` to each call and `index` inside `function`.
            function = {"index": 0, "name": name, "arguments": arguments}
            message["tool_calls"] = [{"id": f"call_{job.record_id:08x}", "function": function}]
        return message

    def token(self, job: _Job, token: _Token) -> bytes:
        message = self._message(job, [token])
        return self.frame(
            {"model": job.model, "created_at": _created_at(), "message": message, "done": False}
        )

    def done(self, job: _Job, metrics: dict[str, int]) -> list[bytes]:
        return [self.frame(self.whole(job, [], metrics))]

    def whole(self, job: _Job, tokens: list[_Token], metrics: dict[str, int]) -> object:
        return {
            "model": job.model,
            "created_at": _created_at(),
            "message": self._message(job, tokens),
            "done": True,
            "done_reason": job.done_reason,
            **metrics,
        }

    def loaded(self, job: _Job) -> object:
        return {
            "model": job.model,
            "created_at": _created_at(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "load",
        }


class _OllamaGenerate(_Dialect):
    def _fields(self, tokens: Sequence[_Token]) -> dict[str, object]:
        fields: dict[str, object] = {"response": _joined(tokens, "content")}
        if thinking := _joined(tokens, "thinking"):
            fields["thinking"] = thinking
        return fields

    def token(self, job: _Job, token: _Token) -> bytes:
        fields = self._fields([token])
        return self.frame(
            {"model": job.model, "created_at": _created_at(), **fields, "done": False}
        )

    def done(self, job: _Job, metrics: dict[str, int]) -> list[bytes]:
        return [self.frame(self.whole(job, [], metrics))]

    def whole(self, job: _Job, tokens: list[_Token], metrics: dict[str, int]) -> object:
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

    def loaded(self, job: _Job) -> object:
        return {
            "model": job.model,
            "created_at": _created_at(),
            "response": "",
            "done": True,
            "done_reason": "load",
        }


class _OpenAIChat(_Dialect):
    stream_default = False  # OpenAI's default, unlike Ollama's native endpoints.
    stream_type = _SSE

    def frame(self, payload: object) -> bytes:
        return b"data: " + _encode(payload) + b"\n\n"

    def _message(self, job: _Job, tokens: Sequence[_Token]) -> dict[str, object]:
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

    def _envelope(self, job: _Job, kind: str, choices: list[object]) -> dict[str, object]:
        return {
            "id": f"chatcmpl-{job.record_id}",
            "object": kind,
            "created": job.created,
            "model": job.model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
        }

    def _finish_reason(self, job: _Job) -> str:
        return "tool_calls" if job.tool else job.done_reason

    def token(self, job: _Job, token: _Token) -> bytes:
        choice = {"index": 0, "delta": self._message(job, [token]), "finish_reason": None}
        return self.frame(self._envelope(job, "chat.completion.chunk", [choice]))

    def _usage(self, job: _Job, metrics: dict[str, int]) -> dict[str, int]:
        prompt, completion = job.prompt_tokens, metrics["eval_count"]
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def done(self, job: _Job, metrics: dict[str, int]) -> list[bytes]:
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

    def whole(self, job: _Job, tokens: list[_Token], metrics: dict[str, int]) -> object:
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


_CHAT = _OllamaChat()
_GENERATE = _OllamaGenerate()
_OPENAI = _OpenAIChat()


def _parse_object(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The body as a JSON object, or None and the reason it is not one."""
    if not raw.strip():
        return None, "missing request body"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return None, f"invalid JSON body: {exc}"
    if not isinstance(value, dict):
        return None, "the request body must be a JSON object"
    return value, ""


class _Exchange:
    """One HTTP request and response: the ASGI callables, the record and the parsed body."""

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, record: RequestRecord, raw: bytes
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.record = record
        self.json, self.json_error = _parse_object(raw)
        record.body = self.json

    async def start(
        self, status: int, content_type: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        message: Message = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), *headers],
        }
        await self.send(message)
        self.record.status = status
        self.record.headers_sent_at = time.monotonic()

    async def body(self, data: bytes, *, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(
        self,
        status: int,
        content_type: str,
        data: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        length = (b"content-length", str(len(data)).encode())
        await self.start(status, content_type, [length, *headers])
        await self.body(data, more=False)

    async def respond_json(
        self, status: int, payload: object, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        await self.respond(status, _JSON, _encode(payload), headers)


class _Generation:
    """Writes one job's answer while watching for the client to go away."""

    def __init__(self, exchange: _Exchange, dialect: _Dialect, job: _Job) -> None:
        self.exchange = exchange
        self.record = exchange.record
        self.dialect = dialect
        self.job = job
        self.phase: Phase = "before_headers"

    async def run(self) -> None:
        abort = False
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch, scope)
                    abort = await self._produce_until_gone()
                    scope.cancel()
        finally:
            # Still open here means cancelled: by the watcher, a send() that raised, or a caller.
            if self.record.outcome is None:
                _finish(self.record, "cancelled", self.phase)
        if abort:
            # Raised outside the task group, so the server sees this exception, not a group.
            raise FakeOllamaAbort("failure='close': connection dropped on purpose")

    async def _watch(self, scope: anyio.CancelScope) -> None:
        # uvicorn's send() keeps returning after the client left (ASGI 2.3); only receive()
        # tells, and it is safe to read now because the body was consumed before we started.
        while (await self.exchange.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _produce_until_gone(self) -> bool:
        try:
            return await self._produce()
        except OSError:
            # ASGI 2.4 servers raise an OSError from send() once the client has gone.
            return False

    async def _produce(self) -> bool:
        job, config, record, exchange = self.job, self.job.config, self.record, self.exchange
        load_started = time.monotonic()
        if config.load_delay:
            await anyio.sleep(config.load_delay)
        loaded_at = time.monotonic()
        if job.done_reason == "load":
            await exchange.respond_json(200, self.dialect.loaded(job))
            _finish(record, "completed")
            return False
        if job.stream:
            await exchange.start(200, self.dialect.stream_type)
            self.phase = "streaming"
        interval = 1 / config.tokens_per_second if config.tokens_per_second else 0.0
        base = time.monotonic()
        collected: list[_Token] = []
        # One step per token, then one for the done chunk, so stalls and failures can land
        # between the last token and the end of the answer too.
        for index in range(job.total + 1):
            if index == config.stall_after and config.stall_seconds:
                phase, self.phase = self.phase, "stalled"
                await anyio.sleep(config.stall_seconds)
                self.phase = phase
                base = time.monotonic() - index * interval
            delay = base + index * interval - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            else:
                # Unpaced, still yield once per token: the watcher must get to run.
                await anyio.lowlevel.checkpoint()
            if index == config.fail_after:
                return await self._fail()
            if index < job.total:
                token = job.token(index)
                if job.stream:
                    await exchange.body(self.dialect.token(job, token))
                    if config.malformed_every and (index + 1) % config.malformed_every == 0:
                        await exchange.body(self.dialect.malformed())
                else:
                    collected.append(token)
                record.tokens_sent = index + 1
        metrics = _metrics(job, record, loaded_at, loaded_at - load_started)
        if job.stream:
            *frames, last = self.dialect.done(job, metrics)
            for frame in frames:
                await exchange.body(frame)
            await exchange.body(last, more=False)
        else:
            await exchange.respond_json(200, self.dialect.whole(job, collected, metrics))
        _finish(record, "completed")
        return False

    async def _fail(self) -> bool:
        if self.job.config.failure == "close":
            if not self.job.stream:
                # Headers first, so the client sees a response cut short rather than a 500.
                await self.exchange.start(200, _JSON)
            _finish(self.record, "failed")
            return True
        if self.job.stream:
            await self.exchange.body(self.dialect.stream_error(), more=False)
        else:
            await self.exchange.respond_json(500, self.dialect.error(ERROR_MESSAGE, 500))
        _finish(self.record, "failed")
        return False


def _apply_overrides(config: FakeOllamaConfig, overrides: object) -> FakeOllamaConfig:
    if not isinstance(overrides, dict):
        raise _Reject(400, '"fake" must be a JSON object of FakeOllamaConfig fields')
    for key in overrides:
        if key not in _OVERRIDABLE:
            raise _Reject(
                400, f'unknown "fake" option "{key}"; valid options: {", ".join(_OVERRIDABLE)}'
            )
    try:
        return dataclasses.replace(config, **overrides)
    except ValueError as exc:
        raise _Reject(400, f'invalid "fake" option: {exc}') from None


def _plan(
    exchange: _Exchange, defaults: FakeOllamaConfig, dialect: _Dialect
) -> tuple[dict[str, Any], FakeOllamaConfig, str, bool]:
    """The checks every generation endpoint shares: body, overrides, model name and `stream`."""
    body = exchange.json
    if body is None:
        raise _Reject(400, exchange.json_error)
    config = _apply_overrides(defaults, body["fake"]) if "fake" in body else defaults
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Reject(400, "model is required")
    stream = body.get("stream")
    if stream is None:
        stream = dialect.stream_default
    elif not isinstance(stream, bool):
        raise _Reject(400, "stream must be true or false")
    return body, config, model, stream


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Reject(400, f"{key} must be a list")
    return value


def _limit(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Reject(400, f"{name} must be an integer")
    # Ollama reads a negative num_predict as "no limit".
    return value if value >= 0 else None


def _job(
    *,
    record_id: int,
    config: FakeOllamaConfig,
    model: str,
    stream: bool,
    prompt_tokens: int,
    think: bool,
    tools: list[Any],
    limit: int | None,
    load: bool = False,
    include_usage: bool = False,
) -> _Job:
    known = {_canonical(name) for name in config.models}
    if _canonical(model) not in known:
        raise _Reject(404, f'model "{model}" not found, try pulling it first')
    content_tokens = len(_ANSWER_TOKENS) if config.num_tokens is None else config.num_tokens
    done_reason: Literal["stop", "length", "load"] = "load" if load else "stop"
    if not load and limit is not None and limit < content_tokens:
        content_tokens, done_reason = limit, "length"
    return _Job(
        record_id=record_id,
        config=config,
        model=model,
        stream=stream,
        prompt_tokens=max(1, prompt_tokens),
        thinking_tokens=len(_THINKING_TOKENS) if think or config.think else 0,
        content_tokens=content_tokens,
        done_reason=done_reason,
        tool=_example_call(tools) if tools else None,
        include_usage=include_usage,
        created=int(time.time()),
    )


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _Reject(400, "options must be an object")
    return options


def _message_words(messages: list[Any]) -> int:
    return sum(_words(m.get("content")) for m in messages if isinstance(m, dict))


async def _lifespan(receive: Receive, send: Send) -> None:
    # The protocol is exactly one startup, then one shutdown; nothing to set up or tear down.
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class FakeOllama:
    """An Ollama-compatible upstream that streams a canned answer, paced and with faults on demand.

    Serves ``POST /api/chat``, ``POST /api/generate``, ``POST /v1/chat/completions``,
    ``GET /api/tags``, ``GET /api/version`` and ``GET /`` like Ollama, plus ``GET`` and ``DELETE
    /_fake/requests`` to read and clear `records` from another process.

    Args:
        config: the defaults for every request; each request may override them with a top-level
            ``"fake": {...}`` object in its JSON body.

    Attributes:
        config: the defaults in force.
        records: one `RequestRecord` per request (``/_fake/`` paths excepted), in arrival order.
            Read it from any thread; append-only but for ``DELETE /_fake/requests``.
    """

    def __init__(self, config: FakeOllamaConfig | None = None) -> None:
        self.config = config if config is not None else FakeOllamaConfig()
        self.records: list[RequestRecord] = []
        self._ids = itertools.count(1)
        # The app runs on the server's loop, often in another thread than the test reading records.
        self._lock = threading.Lock()
        self._routes: dict[str, dict[str, Callable[[_Exchange], Awaitable[None]]]] = {
            "/": {"GET": self._root},
            "/api/version": {"GET": self._version},
            "/api/tags": {"GET": self._tags},
            "/api/chat": {"POST": self._chat},
            "/api/generate": {"POST": self._generate},
            "/v1/chat/completions": {"POST": self._openai_chat},
            "/_fake/requests": {"GET": self._list_records, "DELETE": self._clear_records},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI connection: HTTP requests and the lifespan protocol."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # A websocket that is never accepted gets a 403 from the server.
        path: str = scope["path"]
        methods = self._routes.get(path)
        handler = self._not_found if methods is None else methods.get(scope["method"])
        record = self._new_record(scope, keep=not path.startswith("/_fake/"))
        raw = await _read_body(receive)
        if raw is None:
            _finish(record, "cancelled", "before_headers")
            return
        exchange = _Exchange(scope, receive, send, record, raw)
        await (handler or self._method_not_allowed)(exchange)
        if record.outcome is None:
            _finish(record, "completed")

    def wait_for_record(
        self,
        *,
        path: str | None = None,
        outcome: Outcome | None = None,
        predicate: Callable[[RequestRecord], bool] | None = None,
        timeout: float = 5.0,
    ) -> RequestRecord:
        """Block until a record matches every given criterion, and return the first that does.

        For tests that run the app in a server thread; it polls `records` and never waits longer
        than `timeout`.

        Args:
            path: the record's path must equal this.
            outcome: the record's outcome must equal this ("completed", "cancelled", "failed").
            predicate: any further condition on the record.
            timeout: seconds to wait before giving up.

        Raises:
            TimeoutError: nothing matched in time; the message lists what was recorded.
        """
        deadline = time.monotonic() + timeout
        while True:
            for record in list(self.records):
                if (
                    (path is None or record.path == path)
                    and (outcome is None or record.outcome == outcome)
                    and (predicate is None or predicate(record))
                ):
                    return record
            if time.monotonic() >= deadline:
                seen = [(r.id, r.method, r.path, r.outcome) for r in list(self.records)]
                raise TimeoutError(
                    f"no request matched path={path!r} outcome={outcome!r} within {timeout} s; "
                    f"recorded (id, method, path, outcome): {seen}"
                )
            time.sleep(0.005)

    def _new_record(self, scope: Scope, *, keep: bool) -> RequestRecord:
        """A record for the request, kept in `records` unless it is a /_fake/ control request."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        record = RequestRecord(
            id=0,
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            started_at=time.monotonic(),
        )
        if keep:
            with self._lock:
                record.id = next(self._ids)
                self.records.append(record)
        return record

    async def _root(self, exchange: _Exchange) -> None:
        await exchange.respond(200, "text/plain; charset=utf-8", b"Ollama is running")

    async def _version(self, exchange: _Exchange) -> None:
        await exchange.respond_json(200, {"version": OLLAMA_VERSION})

    async def _tags(self, exchange: _Exchange) -> None:
        models = []
        for model in self.config.models:
            name = _canonical(model)
            family = re.sub(r"[^a-z].*", "", name.rsplit("/", 1)[-1].lower()) or "fake"
            details = {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": "fake",
                "quantization_level": "Q4_K_M",
            }
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": 2_019_393_189,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": details,
                }
            )
        await exchange.respond_json(200, {"models": models})

    async def _not_found(self, exchange: _Exchange) -> None:
        await exchange.respond_json(404, {"error": "not found"})

    async def _method_not_allowed(self, exchange: _Exchange) -> None:
        allow = ", ".join(self._routes[exchange.scope["path"]])
        await exchange.respond_json(
            405, {"error": "method not allowed"}, [(b"allow", allow.encode())]
        )

    async def _list_records(self, exchange: _Exchange) -> None:
        records = [dataclasses.asdict(record) for record in list(self.records)]
        await exchange.respond(200, _JSON, json.dumps(records).encode())

    async def _clear_records(self, exchange: _Exchange) -> None:
        self.records.clear()
        await exchange.start(204, _JSON)
        await exchange.body(b"", more=False)

    async def _run(self, exchange: _Exchange, dialect: _Dialect, plan: Callable[[], _Job]) -> None:
        try:
            job = plan()
        except _Reject as reject:
            await exchange.respond_json(reject.status, dialect.error(reject.message, reject.status))
            return
        await _Generation(exchange, dialect, job).run()

    async def _chat(self, exchange: _Exchange) -> None:
        def plan() -> _Job:
            body, config, model, stream = _plan(exchange, self.config, _CHAT)
            messages = _list(body, "messages")
            return _job(
                record_id=exchange.record.id,
                config=config,
                model=model,
                stream=stream,
                prompt_tokens=_message_words(messages),
                think=body.get("think") not in (None, False),
                tools=_list(body, "tools"),
                limit=_limit(_options(body).get("num_predict"), "options.num_predict"),
                # Ollama answers a chat without messages by loading the model, nothing more.
                load=not messages,
            )

        await self._run(exchange, _CHAT, plan)

    async def _generate(self, exchange: _Exchange) -> None:
        def plan() -> _Job:
            body, config, model, stream = _plan(exchange, self.config, _GENERATE)
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                raise _Reject(400, "prompt must be a string")
            return _job(
                record_id=exchange.record.id,
                config=config,
                model=model,
                stream=stream,
                prompt_tokens=_words(prompt),
                think=body.get("think") not in (None, False),
                tools=[],
                limit=_limit(_options(body).get("num_predict"), "options.num_predict"),
                load=not prompt,
            )

        await self._run(exchange, _GENERATE, plan)

    async def _openai_chat(self, exchange: _Exchange) -> None:
        def plan() -> _Job:
            body, config, model, stream = _plan(exchange, self.config, _OPENAI)
            messages = _list(body, "messages")
            if not messages:
                raise _Reject(400, "messages must be a non-empty list")
            limit = body.get("max_completion_tokens", body.get("max_tokens"))
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and bool(
                stream_options.get("include_usage")
            )
            return _job(
                record_id=exchange.record.id,
                config=config,
                model=model,
                stream=stream,
                prompt_tokens=_message_words(messages),
                think=body.get("reasoning_effort") not in (None, "none"),
                tools=_list(body, "tools"),
                limit=_limit(limit, "max_tokens"),
                include_usage=include_usage,
            )

        await self._run(exchange, _OPENAI, plan)
