"""ASGI-level tests with a recording send and a scripted receive.

httpx's ASGITransport and Starlette's TestClient collect the whole body, so they cannot see when a
message is sent; these tests call the middleware directly and look at every message and its time.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from sse_bridge import SSEBridgeMiddleware
from sse_bridge._core.context import EVENT_STREAM_KEY as SCOPE_KEY
from sse_bridge._core.context import STREAM_KEY, StreamContext
from sse_bridge._types import Message, Receive, Scope, Send
from tests._sse import httpx_sse_data, httpx_sse_json

pytestmark = pytest.mark.anyio

# The README quotes the first.
APP_FAILED = "the stream failed inside the server; the answer is incomplete"
APP_ENDED = "the stream ended before the server finished it; the answer may be incomplete"

NDJSON = [(b"content-type", b"application/x-ndjson")]
SSE_ACCEPT = [(b"accept", b"text/event-stream")]


def http_scope(headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/chat",
        "query_string": b"",
        "headers": SSE_ACCEPT if headers is None else headers,
    }
    scope.update(extra)
    return scope


class Client:
    """The server side of one request: what the middleware sent, and when the client leaves."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.sent: list[tuple[float, Message]] = []
        self.body = body
        self.gone = anyio.Event()
        self.started = time.monotonic()

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None  # type: ignore[assignment]
            return {"type": "http.request", "body": body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append((time.monotonic(), message))

    @property
    def start(self) -> Message:
        assert self.sent[0][1]["type"] == "http.response.start"
        return self.sent[0][1]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start["headers"])

    @property
    def bodies(self) -> list[Message]:
        return [m for _, m in self.sent if m["type"] == "http.response.body"]

    @property
    def body_bytes(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.bodies)


def ndjson_app(
    chunks: list[bytes],
    *,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] = NDJSON,
    between: Callable[[int], Awaitable[None]] | None = None,
    finish: bool = True,
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            if between is not None:
                await between(i)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if finish:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def call(app: Any, client: Client, scope: Scope | None = None, **options: Any) -> None:
    middleware = SSEBridgeMiddleware(app, keepalive=options.pop("keepalive", None), **options)
    with anyio.fail_after(5):
        await middleware(scope or http_scope(), client.receive, client.send)


async def test_converted_response_headers() -> None:
    headers = [*NDJSON, (b"content-length", b"42"), (b"set-cookie", b"a=1"), (b"etag", b'"x"')]
    client = Client()
    await call(ndjson_app([b'{"a":1}\n'], headers=headers), client)
    assert client.start["status"] == 200
    assert client.start["headers"] == [
        (b"set-cookie", b"a=1"),
        (b"vary", b"Accept"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-accel-buffering", b"no"),
        (b"connection", b"keep-alive"),
    ]
    assert client.body_bytes == b'data: {"a":1}\n\n'


async def test_no_connection_header_on_http2() -> None:
    client = Client()
    await call(ndjson_app([b"{}\n"]), client, http_scope(http_version="2"))
    assert b"connection" not in client.headers
    assert client.headers[b"content-type"] == b"text/event-stream; charset=utf-8"


@pytest.mark.parametrize(
    "accept",
    [
        b"text/event-stream",
        b"application/json, text/event-stream",
        b"Text/Event-Stream; q=0.5",
        b"text/html,text/event-stream;charset=utf-8",
    ],
)
async def test_negotiate_converts_when_the_client_asks(accept: bytes) -> None:
    client = Client()
    await call(ndjson_app([b"{}\n"]), client, http_scope([(b"accept", accept)]))
    assert client.headers[b"content-type"].startswith(b"text/event-stream")


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"accept", b"application/x-ndjson")],
        [(b"accept", b"*/*")],
        [(b"accept", b"text/event-stream;q=0")],
        [(b"accept", b"text/event-stream;q=zero")],
    ],
)
async def test_ndjson_clients_get_the_body_byte_for_byte(
    headers: list[tuple[bytes, bytes]],
) -> None:
    chunks = [b'{"a":1}\n{"b"', b":2}\n", b"tail"]
    inner = Client()
    await ndjson_app(chunks, headers=[*NDJSON, (b"content-length", b"19")])(
        http_scope(headers), inner.receive, inner.send
    )
    client = Client()
    await call(
        ndjson_app(chunks, headers=[*NDJSON, (b"content-length", b"19")]),
        client,
        http_scope(headers),
    )
    assert client.bodies == inner.bodies
    assert client.headers == {**inner.headers, b"vary": b"Accept"}


async def test_always_converts_without_accept() -> None:
    client = Client()
    await call(ndjson_app([b"{}\n"]), client, http_scope([]), convert="always")
    assert client.headers[b"content-type"].startswith(b"text/event-stream")
    assert b"vary" not in client.headers


@pytest.mark.parametrize("status", [400, 404, 500, 201, 206])
async def test_other_statuses_pass_through(status: int) -> None:
    client = Client()
    await call(ndjson_app([b'{"error":"x"}\n'], status=status), client)
    assert client.start["status"] == status
    assert client.headers[b"content-type"] == b"application/x-ndjson"
    assert client.body_bytes == b'{"error":"x"}\n'


async def test_head_requests_are_not_converted() -> None:
    client = Client()
    await call(ndjson_app([]), client, http_scope(method="HEAD"))
    assert client.headers[b"content-type"] == b"application/x-ndjson"


@pytest.mark.parametrize("media", [b"application/json", b"text/plain", b"application/x-ndjsonx"])
async def test_other_media_types_pass_through(media: bytes) -> None:
    client = Client()
    await call(ndjson_app([b"{}\n"], headers=[(b"content-type", media)]), client)
    assert client.start["headers"] == [(b"content-type", media)]
    assert client.body_bytes == b"{}\n"


@pytest.mark.parametrize("media", [b"application/ndjson", b"application/jsonl; charset=utf-8"])
async def test_ndjson_aliases_are_converted(media: bytes) -> None:
    client = Client()
    await call(ndjson_app([b"{}\n"], headers=[(b"content-type", media)]), client)
    assert client.body_bytes == b"data: {}\n\n"


async def test_inner_event_stream_gets_anti_buffering_headers() -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"private")]
    client = Client()
    await call(ndjson_app([b"data: x\n\n"], headers=headers), client, http_scope([]))
    assert client.headers == {
        b"content-type": b"text/event-stream",
        # The app's own directive stays; what stops caches and transformations is added.
        b"cache-control": b"private, no-cache, no-transform",
        b"x-accel-buffering": b"no",
        b"connection": b"keep-alive",
    }
    assert client.body_bytes == b"data: x\n\n"


async def test_compressed_ndjson_passes_through_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = [*NDJSON, (b"content-encoding", b"gzip")]
    client = Client()
    with caplog.at_level(logging.WARNING, logger="sse_bridge"):
        await call(ndjson_app([b"\x1f\x8b..."], headers=headers), client)
    assert client.headers[b"content-encoding"] == b"gzip"
    assert client.body_bytes == b"\x1f\x8b..."
    assert "Content-Encoding 'gzip'" in caplog.text


async def test_the_app_sees_a_scope_for_identity_encoding() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await ndjson_app([])(scope, receive, send)

    original = http_scope(
        [*SSE_ACCEPT, (b"accept-encoding", b"gzip, br")],
        extensions={"http.response.pathsend": {}, "http.response.trailers": {}, "other": {}},
    )
    await call(app, Client(), original)
    (scope,) = seen
    assert scope is not original
    assert (b"accept-encoding", b"identity") in scope["headers"]
    assert (b"accept-encoding", b"gzip, br") not in scope["headers"]
    assert scope["extensions"] == {"other": {}}
    assert scope[SCOPE_KEY] is True
    assert SCOPE_KEY not in original
    assert (b"accept-encoding", b"gzip, br") in original["headers"]


async def test_passthrough_scope_is_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await ndjson_app([])(scope, receive, send)

    original = http_scope([])
    await call(app, Client(), original)
    assert seen == [original]


async def test_non_http_scopes_pass_straight_through() -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])

    async def never() -> Message:
        raise AssertionError

    await SSEBridgeMiddleware(app)({"type": "lifespan"}, never, never)  # type: ignore[arg-type]
    assert calls == ["lifespan"]


async def test_each_chunk_is_flushed_before_the_next_arrives() -> None:
    client = Client()
    seen_before: list[bytes] = []

    async def between(i: int) -> None:
        # Whatever the client has by now was sent without waiting for this chunk.
        seen_before.append(client.body_bytes)

    chunks = [b'{"n":1}\n{"n":', b'2}\n{"n":3}\n', b'{"n":4}', b"\n"]
    await call(ndjson_app(chunks, between=between), client)
    assert seen_before == [
        b"",
        b'data: {"n":1}\n\n',
        b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: {"n":3}\n\n',
        b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: {"n":3}\n\n',
    ]
    # One body message per chunk that completed a line, never an empty flush, then the end.
    assert [m["body"] for m in client.bodies] == [
        b'data: {"n":1}\n\n',
        b'data: {"n":2}\n\ndata: {"n":3}\n\n',
        b'data: {"n":4}\n\n',
        b"",
    ]
    assert client.bodies[-1]["more_body"] is False
    assert all(m["more_body"] for m in client.bodies[:-1])


async def test_final_line_without_newline_is_delivered() -> None:
    client = Client()
    await call(ndjson_app([b'{"a":1}\n{"b":2}']), client)
    assert httpx_sse_data(client.body_bytes) == ['{"a":1}', '{"b":2}']


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (
            "ollama",
            [
                '{"token":"a"}',
                '{"error":"upstream sent a line that is not JSON (Expecting value at column 6)",'
                '"line":"{\\"x\\":"}',
                json.dumps({"error": APP_ENDED, "finished": True}, separators=(",", ":")),
            ],
        ),
        (
            "raw",
            [
                '{"model":"m","response":"a","done":false}',
                '{"x":',
                json.dumps({"error": APP_ENDED}, separators=(",", ":")),
            ],
        ),
    ],
)
async def test_app_that_returns_without_ending_its_body_gets_its_stream_ended(
    dialect: str, expected: list[str]
) -> None:
    client = Client()
    app = ndjson_app([b'{"model":"m","response":"a","done":false}\n{"x":'], finish=False)
    await call(app, client, dialect=dialect)
    # What the app sent is delivered, then the client is told the stream broke off.
    assert httpx_sse_data(client.body_bytes) == expected
    assert client.bodies[-1]["more_body"] is False


async def test_every_keepalive_written_is_counted_and_only_those() -> None:
    client = Client()
    context = StreamContext()
    pinged = anyio.Event()
    original_send = client.send

    async def send(message: Message) -> None:
        await original_send(message)
        if message.get("body") == b": ping\n\n" and len(ping_bodies(client)) == 2:
            pinged.set()

    client.send = send  # type: ignore[method-assign]

    async def between(i: int) -> None:
        # Silent until two pings have gone out: events, not sleeps, whatever the machine's load.
        await pinged.wait()

    await call(
        ndjson_app([b"{}\n"], between=between),
        client,
        {**http_scope(), STREAM_KEY: context},
        keepalive=0.01,
    )
    assert len(ping_bodies(client)) >= 2
    assert context.keepalives == len(ping_bodies(client))


def ping_bodies(client: Client) -> list[Message]:
    return [m for m in client.bodies if m.get("body") == b": ping\n\n"]


@pytest.mark.timing
async def test_keepalive_comments_flow_during_silence_even_before_the_first_event() -> None:
    client = Client()

    async def between(i: int) -> None:
        await anyio.sleep(0.35)

    await call(ndjson_app([b"{}\n"], between=between), client, keepalive=0.1)
    pings = [t for t, m in client.sent if m.get("body") == b": ping\n\n"]
    assert 2 <= len(pings) <= 4
    first_event = next(t for t, m in client.sent if m.get("body", b"").startswith(b"data:"))
    assert max(pings) < first_event
    # Spaced by the interval, counted from the headers.
    assert pings[0] - client.sent[0][0] >= 0.09
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(pings))


@pytest.mark.timing
async def test_keepalive_waits_for_silence() -> None:
    client = Client()

    async def between(i: int) -> None:
        await anyio.sleep(0.03)

    await call(ndjson_app([b"{}\n"] * 12, between=between), client, keepalive=0.1)
    assert not [m for _, m in client.sent if m.get("body") == b": ping\n\n"]


@pytest.mark.timing
@pytest.mark.parametrize("keepalive", [0, None])
async def test_keepalive_off_sends_nothing_and_does_not_spin(keepalive: float | None) -> None:
    client = Client()

    async def between(i: int) -> None:
        await anyio.sleep(0.3)

    cpu = time.process_time()
    await call(ndjson_app([b"{}\n"], between=between), client, keepalive=keepalive)
    # A busy loop would burn the whole 0.3 s of the wait.
    assert time.process_time() - cpu < 0.15
    assert client.body_bytes == b"data: {}\n\n"


async def test_disconnect_stops_writing_and_tells_the_app() -> None:
    client = Client()
    app_saw: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        await send({"type": "http.response.body", "body": b'{"n":1}\n', "more_body": True})
        client.gone.set()
        app_saw.append(await receive())
        # An app that keeps sending anyway is ignored, as uvicorn ignores it.
        await send({"type": "http.response.body", "body": b'{"n":2}\n', "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    await call(app, client, keepalive=0.05)
    assert app_saw == [{"type": "http.disconnect"}]
    assert client.body_bytes == b'data: {"n":1}\n\n'


async def test_disconnect_is_seen_while_the_app_is_silent() -> None:
    client = Client()
    cancelled = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        # Like Starlette's StreamingResponse: race the stream against http.disconnect.
        async with anyio.create_task_group() as tasks:

            async def stream() -> None:
                await anyio.sleep(10)

            tasks.start_soon(stream)
            message = await receive()
            assert message["type"] == "http.disconnect"
            cancelled.set()
            tasks.cancel_scope.cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call, app, client)
        await anyio.sleep(0.05)
        client.gone.set()
        with anyio.fail_after(1):
            await cancelled.wait()
    assert client.bodies == []


async def test_request_body_read_after_the_response_started_is_intact() -> None:
    parts = [b"a" * 40_000, b"b" * 40_000, b"c" * 10]
    queue = list(parts)
    client = Client()

    async def receive() -> Message:
        if queue:
            await anyio.sleep(0.01)
            body = queue.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(queue)}
        await client.gone.wait()
        return {"type": "http.disconnect"}

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        # Starts answering before it has read its body, then echoes the body's size.
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        await anyio.sleep(0.1)
        got = b""
        while True:
            message = await receive()
            got += message.get("body", b"")
            if not message.get("more_body"):
                break
        line = json.dumps({"size": len(got), "ok": got == b"".join(parts)}).encode() + b"\n"
        await send({"type": "http.response.body", "body": line, "more_body": False})

    middleware = SSEBridgeMiddleware(echo, keepalive=None)
    with anyio.fail_after(5):
        await middleware(http_scope(), receive, client.send)
    assert httpx_sse_json(client.body_bytes) == [{"size": 80_010, "ok": True}]


async def test_line_too_long_ends_the_stream_with_an_error() -> None:
    client = Client()
    app_saw: list[Message] = []

    async def between(i: int) -> None:
        if i == 2:
            app_saw.append(await receive_ref[0]())

    receive_ref: list[Receive] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        receive_ref.append(receive)
        await ndjson_app([b'{"n":1}\n' + b"x" * 50, b"x" * 60, b'{"n":2}\n'], between=between)(
            scope, receive, send
        )

    await call(app, client, max_line_bytes=100, dialect="ollama")
    events = httpx_sse_json(client.body_bytes)
    assert events[0] == {"n": 1}
    assert events[1] == {
        "error": "upstream sent a line longer than 100 bytes; "
        "raise max_line_bytes if such lines are expected",
        "finished": True,
    }
    assert len(events) == 2
    assert client.bodies[-1]["more_body"] is False
    # After the stream ended, the app is told the client is gone.
    assert app_saw == [{"type": "http.disconnect"}]


@pytest.mark.parametrize("finish", [True, False])
async def test_lines_after_the_done_chunk_are_reported_not_dropped(finish: bool) -> None:
    client = Client()
    late = b'{"model":"m","response":"b","done":false}'
    chunks = [b'{"model":"m","response":"a","done":true}\n', late + b"\n"]
    await call(ndjson_app(chunks, finish=finish), client, dialect="openai")
    data = httpx_sse_data(client.body_bytes)
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[:2]]
    assert contents == ["a", None]
    assert data[2] == "[DONE]"
    error = {"message": "upstream sent a line after its final chunk (done: true)"}
    assert json.loads(data[3]) == {"error": {**error, "type": "api_error"}}
    assert len(data) == 4
    # The answer was whole: the stream ends cleanly even if the app forgets to end its body.
    assert client.bodies[-1]["more_body"] is False


async def test_app_failure_mid_stream_is_told_to_the_client_and_raised() -> None:
    client = Client()

    async def between(i: int) -> None:
        if i == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await call(ndjson_app([b'{"n":1}\n', b'{"n":2}\n'], between=between), client)
    assert httpx_sse_json(client.body_bytes) == [{"n": 1}, {"error": APP_FAILED}]
    assert client.bodies[-1]["more_body"] is False


async def test_app_failure_before_the_response_is_raised_untouched() -> None:
    client = Client()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise KeyError("early")

    with pytest.raises(KeyError, match="early"):
        await call(app, client)
    assert client.sent == []


async def test_event_ids_and_retry() -> None:
    client = Client()
    await call(ndjson_app([b'{"n":1}\n{"n":2}\n']), client, event_ids=True, retry=2500)
    assert client.body_bytes == b'retry: 2500\n\nid: 1\ndata: {"n":1}\n\nid: 2\ndata: {"n":2}\n\n'


async def test_custom_event_ids_are_kept() -> None:
    from sse_bridge import ServerSentEvent

    client = Client()
    app = ndjson_app([b'{"n":1}\n{"n":2}\n'])
    await call(
        app,
        client,
        event_ids=True,
        dialect=lambda o: [ServerSentEvent(str(o["n"]), id=f"x{o['n']}")],
    )
    assert client.body_bytes == b"id: x1\ndata: 1\n\nid: x2\ndata: 2\n\n"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"convert": "sometimes"}, "convert must be 'negotiate' or 'always'"),
        ({"keepalive": -1}, "keepalive must be a finite number of seconds >= 0"),
        ({"keepalive": "15"}, "keepalive must be a finite number of seconds >= 0"),
        ({"keepalive": True}, "keepalive must be a finite number of seconds >= 0"),
        ({"max_line_bytes": 0}, "max_line_bytes must be an integer >= 1"),
        ({"max_line_bytes": 1.5}, "max_line_bytes must be an integer >= 1"),
        ({"retry": -5}, "retry must be an integer >= 0"),
        ({"dialect": "nope"}, "unknown dialect 'nope'"),
        ({"ndjson_types": "application/x-ndjson"}, "ndjson_types must be a sequence"),
    ],
)
async def test_bad_options_are_refused_at_construction(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SSEBridgeMiddleware(ndjson_app([]), **options)


async def test_a_write_waiting_behind_a_blocked_ping_is_dropped_after_a_disconnect() -> None:
    client = Client()
    original_send = client.send
    ping_blocked = anyio.Event()

    async def send(message: Message) -> None:
        if message.get("body") == b": ping\n\n":
            # A slow client: this write blocks until the client is gone.
            ping_blocked.set()
            await client.gone.wait()
        await original_send(message)

    client.send = send  # type: ignore[method-assign]

    async def between(i: int) -> None:
        # The app's write comes while the ping's is blocked (events, not sleeps: a loaded
        # machine may run the two in either order otherwise).
        if i == 0:
            await ping_blocked.wait()

    async def leave() -> None:
        await ping_blocked.wait()
        # Time for the app's write to queue behind the ping; if it has not, it comes after
        # the disconnect, and must be dropped all the same.
        await anyio.sleep(0.05)
        client.gone.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(leave)
        await call(ndjson_app([b'{"n":1}\n'], between=between), client, keepalive=0.05)
    assert [m.get("body") for m in client.bodies] == [b": ping\n\n"]


async def test_a_keepalive_dropped_behind_a_blocked_write_is_not_counted() -> None:
    client = Client()
    context = StreamContext()
    original_send = client.send
    event_blocked = anyio.Event()

    async def send(message: Message) -> None:
        if message.get("body", b"").startswith(b"data:"):
            # A slow client: the event's write holds the stream while pings fall due behind
            # it; the client leaves, and the stream ends before they get their turn.
            event_blocked.set()
            await client.gone.wait()
            await anyio.wait_all_tasks_blocked()
        await original_send(message)

    client.send = send  # type: ignore[method-assign]

    async def leave() -> None:
        await event_blocked.wait()
        await anyio.sleep(0.05)  # a few keepalive intervals for pings to fall due
        client.gone.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(leave)
        scope = {**http_scope(), STREAM_KEY: context}
        await call(ndjson_app([b'{"n":1}\n']), client, scope, keepalive=0.01)
    assert context.keepalives == len(ping_bodies(client)) == 0


async def test_an_overlong_line_after_the_done_chunk_is_still_reported() -> None:
    client = Client()
    chunks = [b'{"model":"m","response":"a","done":true}\n' + b"x" * 200]
    await call(ndjson_app(chunks), client, dialect="ollama", max_line_bytes=100)
    events = httpx_sse_json(client.body_bytes)
    assert events[:2] == [{"token": "a"}, {"finished": True, "done_reason": None, "usage": {}}]
    assert events[2]["error"].startswith("upstream sent a line longer than 100 bytes")
    assert len(events) == 3


async def test_inner_event_stream_keeps_its_own_buffering_header() -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"yes")]
    client = Client()
    await call(ndjson_app([b"data: x\n\n"], headers=headers), client, http_scope(http_version="2"))
    assert client.start["headers"] == [*headers, (b"cache-control", b"no-cache, no-transform")]


@pytest.mark.parametrize(
    ("dialect", "line"),
    [
        (
            "ollama",
            b'{"model":"m","message":{"role":"assistant","content":"","tool_calls":5},"done":false}',
        ),
        (
            "openai",
            b'{"model":"m","message":{"role":"assistant","tool_calls":[{"function":null}]},"done":false}',
        ),
    ],
)
async def test_an_unexpected_shape_is_reported_and_the_stream_goes_on(
    dialect: str, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client()
    chunks = [line + b"\n", b'{"model":"m","response":"b","done":false}\n']
    with caplog.at_level(logging.ERROR, logger="sse_bridge"):
        await call(ndjson_app(chunks), client, dialect=dialect)
    data = httpx_sse_data(client.body_bytes)
    assert "could not translate this line" in data[0]
    assert '"b"' in data[1]  # the next token still arrived
    assert "failed on a line" in caplog.text


async def test_a_lone_surrogate_escape_does_not_break_the_stream() -> None:
    client = Client()
    chunks = [
        b'{"model":"m","response":"\\ud83d","done":false}\n',
        b'{"model":"m","response":"!","done":true}\n',
    ]
    await call(ndjson_app(chunks), client, dialect="ollama")
    events = httpx_sse_json(client.body_bytes)
    assert events[0] == {"token": "\ud83d"}
    assert events[1] == {"token": "!"}
    assert events[2]["finished"] is True


@pytest.mark.parametrize(
    ("app_value", "sent"),
    [
        (None, b"no-cache, no-transform"),
        (b"private", b"private, no-cache, no-transform"),
        (b"no-store", b"no-store, no-transform"),
        (b"no-cache, no-transform", b"no-cache, no-transform"),
    ],
)
async def test_cache_control_keeps_the_apps_directives(
    app_value: bytes | None, sent: bytes
) -> None:
    headers = NDJSON + ([(b"cache-control", app_value)] if app_value else [])
    client = Client()
    await call(ndjson_app([b"{}\n"], headers=headers), client)
    assert client.headers[b"cache-control"] == sent


async def test_an_asgi_24_server_is_presented_as_23() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await ndjson_app([])(scope, receive, send)

    original = http_scope(asgi={"version": "3.0", "spec_version": "2.4"})
    await call(app, Client(), original)
    # The middleware drops sends after a disconnect, as 2.3 does: Starlette then keeps
    # listening for http.disconnect instead of relying on send() raising.
    assert seen[0]["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert original["asgi"]["spec_version"] == "2.4"
