"""Stalled clients: a client that accepts no bytes for send_timeout seconds is cut off.

ASGI-level tests with a server whose ``send()`` blocks, as uvicorn's does behind a full socket,
with and without the server's abort extension, and black-box tests of ``sse-bridge serve``
against real raw sockets that stop reading (both of uvicorn's HTTP implementations).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import anyio
import pytest

from loadtests.stack import running
from sse_bridge import SSEBridgeMiddleware
from sse_bridge._core.context import ABORT_EXTENSION, STREAM_KEY, Outcome, StreamContext
from sse_bridge._types import Message, Receive, Scope, Send
from sse_bridge.testing import FakeOllama, FakeOllamaConfig
from tests._servers import serve
from tests.test_middleware import NDJSON, http_scope

STALLED_TEXT = "the stream was cancelled: its client accepted no data for 0.2 s"


class StalledClient:
    """A server side whose send() blocks forever after ``accepts`` body messages, as a full
    socket makes uvicorn's block; ``abort()`` drops it as a real abort does."""

    def __init__(self, accepts: int) -> None:
        self.accepts = accepts
        self.bodies: list[bytes] = []
        self.aborted = anyio.Event()
        self.gone = anyio.Event()
        self.sent_body = False

    async def receive(self) -> Message:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] != "http.response.body" or self.gone.is_set():
            return
        if len(self.bodies) >= self.accepts:
            await self.aborted.wait()  # the socket is full until the connection is dropped
            return
        self.bodies.append(message.get("body", b""))

    def abort(self) -> None:
        self.aborted.set()
        self.gone.set()


def endless_app(app_saw: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        try:
            for n in range(1_000_000):
                await send(
                    {"type": "http.response.body", "body": b'{"n":%d}\n' % n, "more_body": True}
                )
                await anyio.sleep(0.01)
        except anyio.get_cancelled_exc_class():
            app_saw.append("cancelled")
            raise
        app_saw.append("ran to the end")

    return app


def cancellable(app: Any, context: StreamContext, told: list[bool] | None = None) -> Any:
    """As the proxy does: told of the disconnect (``on_disconnect``), it cancels its work."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope() as cancel:

            def gone() -> None:
                if told is not None:
                    told.append(True)
                cancel.cancel()

            context.on_disconnect = gone
            await app(scope, receive, send)

    return wrapped


def scope_with(client: StalledClient | None, context: StreamContext) -> Scope:
    extra: dict[str, Any] = {STREAM_KEY: context}
    if client is not None:
        extra["extensions"] = {ABORT_EXTENSION: {"abort": client.abort}}
    return http_scope(None, **extra)


pytestmark = pytest.mark.anyio


async def test_a_stalled_write_is_cut_off_through_the_servers_abort() -> None:
    client = StalledClient(accepts=3)
    context = StreamContext()
    app_saw: list[str] = []
    middleware = SSEBridgeMiddleware(
        cancellable(endless_app(app_saw), context), keepalive=0, send_timeout=0.2
    )
    with anyio.fail_after(10):
        await middleware(scope_with(client, context), client.receive, client.send)
    assert client.aborted.is_set()
    assert context.outcome is Outcome.CLIENT_STALLED
    assert app_saw == ["cancelled"]
    assert len(client.bodies) == 3


async def test_without_an_abort_the_stream_still_ends_and_the_app_hears_of_it() -> None:
    client = StalledClient(accepts=2)
    context = StreamContext()
    app_saw: list[str] = []
    cancelled: list[bool] = []
    middleware = SSEBridgeMiddleware(
        cancellable(endless_app(app_saw), context, cancelled), keepalive=0, send_timeout=0.2
    )
    with anyio.fail_after(10):
        await middleware(scope_with(None, context), client.receive, client.send)
    assert context.outcome is Outcome.CLIENT_STALLED
    assert cancelled == [True]
    assert app_saw == ["cancelled"]


async def test_a_stalled_keepalive_is_cut_off_too() -> None:
    """A silent upstream and a client that takes the first ping only."""
    client = StalledClient(accepts=1)
    context = StreamContext()

    async def silent_app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        with anyio.CancelScope() as cancel:
            context.on_disconnect = cancel.cancel
            await anyio.sleep(60)

    middleware = SSEBridgeMiddleware(silent_app, keepalive=0.05, send_timeout=0.2)
    with anyio.fail_after(10):
        await middleware(scope_with(client, context), client.receive, client.send)
    assert client.bodies == [b": ping\n\n"]
    assert context.outcome is Outcome.CLIENT_STALLED


async def test_a_client_that_keeps_reading_is_never_cut_off() -> None:
    sent: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        for n in range(20):
            await send({"type": "http.response.body", "body": b'{"n":%d}\n' % n, "more_body": True})
            await anyio.sleep(0.02)
        await send({"type": "http.response.body", "body": b""})

    async def slow_send(message: Message) -> None:
        # Each write takes a while, never send_timeout.
        await anyio.sleep(0.01)
        sent.append(message.get("body", b""))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    context = StreamContext()
    middleware = SSEBridgeMiddleware(app, keepalive=0.01, send_timeout=0.1)
    with anyio.fail_after(10):
        await middleware(http_scope(None, **{STREAM_KEY: context}), receive, slow_send)
    assert context.final_outcome() is Outcome.COMPLETED
    assert b'data: {"n":19}\n\n' in sent


async def test_the_kernels_count_cuts_off_a_client_whose_writes_still_return() -> None:
    """Bytes wait in the kernel and the client's acknowledged count stands still: stalled,
    though every write returned (the socket buffers hide it)."""
    client = StalledClient(accepts=1_000_000)
    context = StreamContext()
    app_saw: list[str] = []
    middleware = SSEBridgeMiddleware(
        cancellable(endless_app(app_saw), context), keepalive=0, send_timeout=0.2
    )
    scope = scope_with(client, context)
    scope["extensions"][ABORT_EXTENSION]["progress"] = lambda: (512, 4096)
    with anyio.fail_after(10):
        await middleware(scope, client.receive, client.send)
    assert client.aborted.is_set()
    assert context.outcome is Outcome.CLIENT_STALLED


async def test_a_resumable_stalled_stream_gets_the_grace_then_its_terminal_event() -> None:
    client = StalledClient(accepts=2)
    context = StreamContext()
    app_saw: list[str] = []
    middleware = SSEBridgeMiddleware(
        cancellable(endless_app(app_saw), context),
        dialect="ollama",
        keepalive=0,
        send_timeout=0.2,
        resume="memory",
        resume_grace=0.2,
    )
    with anyio.fail_after(10):
        await middleware(scope_with(client, context), client.receive, client.send)
    assert context.outcome is Outcome.CLIENT_STALLED
    assert context.stream_id is not None
    store = middleware.store
    assert store is not None
    follower = await store.follow(context.stream_id, 0)
    events: list[bytes] = []
    while (batch := await follower.next(1.0)) is not None:
        events += [event for _, event in batch]
    await follower.aclose()
    # The generation ran on through the grace, past what the stalled client got.
    assert len(events) > 3
    assert b"nobody resumed it" in events[-1]


# Black box: sse-bridge serve, a real socket that stops reading.


def stalled_socket(port: int, fake: dict[str, Any], rcvbuf: int) -> socket.socket:
    body = json.dumps({"model": "llama3.2", "prompt": "hi", "fake": fake}).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    seen = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in seen and time.monotonic() < deadline:
        seen += sock.recv(256)
    assert seen.startswith(b"HTTP/1.1 200"), seen
    return sock


@pytest.mark.timing
@pytest.mark.parametrize("http", ["h11", "httptools"])
@pytest.mark.parametrize("kind", ["data", "keepalives"])
def test_serve_releases_a_stalled_clients_upstream(http: str, kind: str) -> None:
    send_timeout = 2.0
    if kind == "data":
        # As fast as the fake can: the buffers fill at once and a write blocks.
        fake: dict[str, Any] = {"tokens_per_second": 0, "num_tokens": 5_000_000}
        extra: list[str] = []
    else:
        # One token, then silence: only keepalives go out, and they still wait in the kernel.
        fake = {"tokens_per_second": 100, "stall_after": 1, "stall_seconds": 120}
        extra = ["--keepalive", "0.05"]
    upstream_fake = FakeOllama(FakeOllamaConfig())
    with (
        serve(upstream_fake) as upstream,
        running(
            "serve",
            "--upstream",
            upstream,
            "--dialect",
            "ollama",
            "--http",
            http,
            "--send-timeout",
            str(send_timeout),
            *extra,
        ) as (url, process),
    ):
        sock = stalled_socket(int(url.rsplit(":", 1)[1]), fake, rcvbuf=1)
        stalled_at = time.monotonic()
        try:
            upstream_fake.records.wait_for_blocking(
                path="/api/generate", outcome="cancelled", timeout=send_timeout + 30
            )
            released_after = time.monotonic() - stalled_at
        finally:
            sock.close()
    stderr = process.communicate()[1]
    assert "outcome=client_stalled" in stderr
    assert "Traceback" not in stderr
    assert released_after <= send_timeout + 5


async def test_a_stalled_resume_reader_is_cut_off_too() -> None:
    """GET /streams/<id>: the replay's write blocks, the reader is cut off and aborted."""
    context = StreamContext()
    middleware = SSEBridgeMiddleware(
        cancellable(endless_app([]), context),
        dialect="ollama",
        keepalive=0,
        send_timeout=0.2,
        resume="memory",
        resume_grace=5,
    )
    store = middleware.store
    assert store is not None
    await store.open()
    recording = store.record(lambda: None)
    recording.append([b'data: {"token":"a"}\n\n'] * 50)
    client = StalledClient(accepts=0)
    reader_context = StreamContext()
    scope = http_scope(
        None,
        method="GET",
        path=f"/streams/{recording.stream_id}",
        **{STREAM_KEY: reader_context},
        extensions={ABORT_EXTENSION: {"abort": client.abort}},
    )
    with anyio.fail_after(10):
        await middleware(scope, client.receive, client.send)
    assert client.aborted.is_set()
    assert reader_context.outcome is Outcome.CLIENT_STALLED
    recording.finish()
