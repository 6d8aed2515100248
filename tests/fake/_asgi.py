"""Calling the fake as an ASGI app, with a recording `send` and a scripted `receive`.

httpx's ASGITransport buffers whole bodies and cannot show streaming or disconnects, so the
tests drive the app directly and keep every message with the time it was sent.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from sse_bridge._testing.fake import FakeOllama
from sse_bridge._testing.fake.job import SAMPLE_ANSWER, SAMPLE_THINKING
from sse_bridge._types import Message

ANSWER_TOKENS = re.findall(r"\s*\S+", SAMPLE_ANSWER)
THINKING_TOKENS = re.findall(r"\s*\S+", SAMPLE_THINKING)
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
FAST = {"tokens_per_second": 0}
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "hours": {"type": "array"},
                "where": {"type": "object"},
                "odd": {"type": ["string", "null"]},
            },
        },
    },
}


def go_json(value: object) -> bytes:
    """What Go's encoding/json writes: compact, with <>& and the JS line separators escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode()


def chat(**fake: Any) -> dict[str, Any]:
    """A chat request body with per-request fake overrides (unpaced unless asked)."""
    return CHAT | {"fake": FAST | fake}


@dataclass
class Exchange:
    """Everything the app sent for one request, each message with the time it was sent."""

    messages: list[Message] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def finished(self) -> bool:
        return self.messages[-1]["type"] == "http.response.body" and not self.messages[-1].get(
            "more_body", False
        )

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.split(b"\n") if line]

    def events(self) -> list[str]:
        assert self.body.endswith(b"\n\n")
        blocks = self.body.decode().split("\n\n")[:-1]
        assert all(block.startswith("data: ") and "\n" not in block for block in blocks)
        return [block.removeprefix("data: ") for block in blocks]


async def call(
    app: FakeOllama,
    method: str,
    path: str,
    body: object = None,
    *,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    disconnect: Callable[[Exchange], bool] | None = None,
    send_error: Callable[[Exchange], bool] | None = None,
    into: Exchange | None = None,
) -> Exchange:
    """Run one request through the app and return what it sent (also kept in `into`).

    `disconnect(exchange)` decides when the client leaves; `send_error(exchange)` when send()
    raises as an ASGI 2.4 server's does after a disconnect. The body arrives in two parts.
    """
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    exchange = Exchange() if into is None else into
    gone = anyio.Event()
    parts = [raw[: len(raw) // 2], raw[len(raw) // 2 :]]

    async def receive() -> Message:
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        if disconnect is not None and disconnect(exchange):
            gone.set()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if send_error is not None and send_error(exchange):
            raise ConnectionResetError("client went away")
        exchange.messages.append(message)
        exchange.times.append(time.monotonic())
        if disconnect is not None and disconnect(exchange):
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 11434),
    }
    with anyio.fail_after(5):
        await app(scope, receive, send)
    return exchange


def body_count(exchange: Exchange) -> int:
    return len(exchange.chunks)
