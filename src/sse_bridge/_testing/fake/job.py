"""What one request asks the fake to generate: the canned answer's tokens and a planned `Job`.

Planning reads a request body and decides everything (model, length, thinking, tool call,
streaming) before a byte is written, or refuses it with the status Ollama would answer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from sse_bridge._testing.fake.config import FakeOllamaConfig, apply_overrides

SAMPLE_ANSWER = (
    "Hello! This answer is streamed token by token from sse_bridge's fake Ollama \u2014 no model "
    "to download, no GPU to warm up. Each word travels as its own NDJSON line, paced like a real "
    "model, so you can watch a proxy & a browser keep up as it arrives. Markup such as <b>bold</b> "
    "stays plain text, and errors, stalls & cancellations can be injected on request."
)
SAMPLE_THINKING = "The user wants to see tokens stream, so I will explain where they come from."

# Tokens are words with their leading whitespace, the way real tokenizers split English.
_WORD = re.compile(r"\s*\S+")
ANSWER_TOKENS: tuple[str, ...] = tuple(_WORD.findall(SAMPLE_ANSWER))
THINKING_TOKENS: tuple[str, ...] = tuple(_WORD.findall(SAMPLE_THINKING))


class Reject(Exception):
    """A request the fake refuses before answering, with Ollama's status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Token(NamedTuple):
    kind: Literal["thinking", "content", "tool_call"]
    text: str


@dataclass(frozen=True)
class Job:
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

    def token(self, index: int) -> Token:
        # Computed per index rather than listed, so a huge num_tokens costs no memory.
        if index < self.thinking_tokens:
            return Token("thinking", THINKING_TOKENS[index % len(THINKING_TOKENS)])
        if self.tool:
            return Token("tool_call", "")
        return Token("content", _answer_token(index - self.thinking_tokens))


def _answer_token(index: int) -> str:
    word = ANSWER_TOKENS[index % len(ANSWER_TOKENS)]
    if index >= len(ANSWER_TOKENS) and not word[0].isspace():
        word = " " + word
    return word


def answer_tokens(num_tokens: int | None = None) -> list[str]:
    """The content tokens the fake streams for a request with this ``num_tokens``, in order.

    For tests and load tests that check every token arrived, once and in order.
    """
    count = len(ANSWER_TOKENS) if num_tokens is None else num_tokens
    return [_answer_token(index) for index in range(count)]


def canonical(model: str) -> str:
    """The model name with Ollama's default ``:latest`` tag when it has none."""
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


class Request(NamedTuple):
    """What every generation endpoint reads first: body, config in force, model, `stream`."""

    body: dict[str, Any]
    config: FakeOllamaConfig
    model: str
    stream: bool
    record_id: int


def read_request(
    body: dict[str, Any] | None,
    body_error: str,
    defaults: FakeOllamaConfig,
    *,
    record_id: int,
    stream_default: bool,
) -> Request:
    """The checks every generation endpoint shares: body, overrides, model name and `stream`."""
    if body is None:
        raise Reject(400, body_error)
    config = defaults
    if "fake" in body:
        try:
            config = apply_overrides(defaults, body["fake"])
        except ValueError as exc:
            raise Reject(400, str(exc)) from None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Reject(400, "model is required")
    stream = body.get("stream")
    if stream is None:
        stream = stream_default
    elif not isinstance(stream, bool):
        raise Reject(400, "stream must be true or false")
    return Request(body, config, model, stream, record_id)


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Reject(400, f"{key} must be a list")
    return value


def _limit(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Reject(400, f"{name} must be an integer")
    # Ollama reads a negative num_predict as "no limit".
    return value if value >= 0 else None


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise Reject(400, "options must be an object")
    return options


def _message_words(messages: list[Any]) -> int:
    return sum(_words(m.get("content")) for m in messages if isinstance(m, dict))


def _job(
    request: Request,
    *,
    prompt_tokens: int,
    think: bool,
    tools: list[Any],
    limit: int | None,
    load: bool = False,
    include_usage: bool = False,
) -> Job:
    config, model = request.config, request.model
    known = {canonical(name) for name in config.models}
    if canonical(model) not in known:
        raise Reject(404, f'model "{model}" not found, try pulling it first')
    content_tokens = len(ANSWER_TOKENS) if config.num_tokens is None else config.num_tokens
    done_reason: Literal["stop", "length", "load"] = "load" if load else "stop"
    if not load and limit is not None and limit < content_tokens:
        content_tokens, done_reason = limit, "length"
    return Job(
        record_id=request.record_id,
        config=config,
        model=model,
        stream=request.stream,
        prompt_tokens=max(1, prompt_tokens),
        thinking_tokens=len(THINKING_TOKENS) if think or config.think else 0,
        content_tokens=content_tokens,
        done_reason=done_reason,
        tool=_example_call(tools) if tools else None,
        include_usage=include_usage,
        created=int(time.time()),
    )


def plan_chat(request: Request) -> Job:
    """``POST /api/chat``."""
    body = request.body
    messages = _list(body, "messages")
    tools = _list(body, "tools")
    return _job(
        request,
        prompt_tokens=_message_words(messages),
        think=body.get("think") not in (None, False),
        # A model that has just been given a tool's result answers with text, as a real one
        # does; so a client that runs tools and sends their results back gets an answer.
        tools=[] if _after_tool_result(messages) else tools,
        limit=_limit(_options(body).get("num_predict"), "options.num_predict"),
        # Ollama answers a chat without messages by loading the model, nothing more.
        load=not messages,
    )


def _after_tool_result(messages: list[Any]) -> bool:
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"


def plan_generate(request: Request) -> Job:
    """``POST /api/generate``."""
    body = request.body
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise Reject(400, "prompt must be a string")
    return _job(
        request,
        prompt_tokens=_words(prompt),
        think=body.get("think") not in (None, False),
        tools=[],
        limit=_limit(_options(body).get("num_predict"), "options.num_predict"),
        load=not prompt,
    )


def plan_openai_chat(request: Request) -> Job:
    """``POST /v1/chat/completions``."""
    body = request.body
    messages = _list(body, "messages")
    if not messages:
        raise Reject(400, "messages must be a non-empty list")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    return _job(
        request,
        prompt_tokens=_message_words(messages),
        think=body.get("reasoning_effort") not in (None, "none"),
        tools=_list(body, "tools"),
        limit=_limit(limit, "max_tokens"),
        include_usage=include_usage,
    )
