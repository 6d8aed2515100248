"""A client that leaves stops the generation, and the record says in which phase it left."""

from __future__ import annotations

import json
import time

import anyio
import pytest

from sse_bridge._testing.fake import FakeOllama
from sse_bridge._types import Message
from tests.fake._asgi import body_count, call, chat


@pytest.mark.anyio
async def test_disconnect_during_load_delay_cancels_before_headers() -> None:
    app = FakeOllama()
    started = time.monotonic()
    sent = await call(app, "POST", "/api/chat", chat(load_delay=30), disconnect=lambda _: True)
    assert time.monotonic() - started < 5
    assert sent.messages == []
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.status) == (
        "cancelled",
        "before_headers",
        None,
    )
    assert record.ended_at is not None


@pytest.mark.anyio
async def test_disconnect_while_streaming_stops_generation() -> None:
    app = FakeOllama()
    sent = await call(
        app, "POST", "/api/chat", chat(num_tokens=10_000), disconnect=lambda e: body_count(e) >= 3
    )
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase) == ("cancelled", "streaming")
    assert 3 <= record.tokens_sent < 10
    assert not sent.finished


@pytest.mark.anyio
async def test_disconnect_during_stall_is_cancelled_stalled() -> None:
    app = FakeOllama()
    options = chat(num_tokens=10, stall_after=2, stall_seconds=30)
    sent = await call(app, "POST", "/api/chat", options, disconnect=lambda e: body_count(e) >= 2)
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.tokens_sent) == (
        "cancelled",
        "stalled",
        2,
    )
    assert len(sent.chunks) == 2


@pytest.mark.anyio
async def test_disconnect_during_non_streaming_generation() -> None:
    app = FakeOllama()
    options = chat(tokens_per_second=10) | {"stream": False}
    sent = await call(app, "POST", "/api/chat", options, disconnect=lambda _: True)
    assert sent.messages == []
    assert app.records[0].cancelled_phase == "before_headers"


@pytest.mark.anyio
async def test_disconnect_while_reading_the_body() -> None:
    app = FakeOllama()
    messages: list[Message] = []
    script: list[Message] = [
        {"type": "http.request", "body": b'{"model":', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return script.pop(0)

    async def send(message: Message) -> None:
        messages.append(message)  # pragma: no cover

    scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
    await app(scope, receive, send)
    assert messages == []
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.body) == (
        "cancelled",
        "before_headers",
        None,
    )


@pytest.mark.anyio
async def test_send_raising_oserror_counts_as_cancelled() -> None:
    app = FakeOllama()
    await call(app, "POST", "/api/chat", chat(), send_error=lambda e: body_count(e) >= 4)
    record = app.records[0]
    assert (record.outcome, record.cancelled_phase, record.tokens_sent) == (
        "cancelled",
        "streaming",
        4,
    )


@pytest.mark.anyio
async def test_watcher_ignores_stray_request_messages() -> None:
    app = FakeOllama()
    script: list[Message] = [
        {"type": "http.request", "body": json.dumps(chat(num_tokens=3)).encode()},
        {"type": "http.request", "body": b""},
    ]
    messages: list[Message] = []

    async def receive() -> Message:
        if script:
            return script.pop(0)
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/chat", "headers": []}
    with anyio.fail_after(5):
        await app(scope, receive, send)
    assert app.records[0].outcome == "completed"
    assert len(messages) == 1 + 3 + 1
