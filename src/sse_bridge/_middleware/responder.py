"""The middleware's per-request responder: it watches the app's response and rewrites it as SSE.

One :class:`Responder` per request: it holds ``http.response.start`` back until it knows whether
the response is NDJSON to convert, then has each body message converted (``convert.py``) and
writes the events as they arrive, records them for resume, and ends a stream the app left
unfinished with a final error event. Keepalives and the client leaving are the watch's
(``watch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol

import anyio

from sse_bridge._core.context import ABORT_EXTENSION, Outcome, StreamContext
from sse_bridge._core.headers import (
    STREAM_ID_HEADER,
    VARY_ACCEPT,
    converted,
    event_stream_headers,
    header,
    media_type,
    replaced,
)
from sse_bridge._middleware.convert import Converter
from sse_bridge._middleware.receive import SharedReceive
from sse_bridge._middleware.watch import ClientWatch
from sse_bridge._resume.http import EndpointBridge, ResumeEndpoints
from sse_bridge._resume.store import Recording, ResumeStore
from sse_bridge._types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("sse_bridge")

APP_FAILED = "the stream failed inside the server; the answer is incomplete"
APP_ENDED = "the stream ended before the server finished it; the answer may be incomplete"
TAKEN_OVER = (
    "another bridge instance ended this stream, taking the one running it for dead; "
    "the answer is incomplete: retry the request"
)
ABANDONED = "the stream was cancelled: its client left and nobody resumed it within {grace:g} s"
CANCELLED = "the stream was cancelled inside the server; the answer is incomplete"
SHUTTING_DOWN = "the bridge is shutting down; retry the request"
STALLED = "the stream was cancelled: its client accepted no data for {timeout:g} s"


def on_asyncio() -> bool:
    """Whether this runs on asyncio, where plain tasks are cheaper than anyio's task groups."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # another event loop, such as trio's
        return False


class Bridge(EndpointBridge, Protocol):
    """What a request reads of the middleware it runs in (:class:`SSEBridgeMiddleware`)."""

    app: ASGIApp
    convert: Literal["negotiate", "always"]
    max_line_bytes: int
    ndjson_types: frozenset[str]
    resume_grace: float
    send_timeout: float
    store: ResumeStore | None
    endpoints: ResumeEndpoints | None


class Responder:
    """Per-request state: watches ``http.response.start`` and rewrites what follows if needed."""

    __slots__ = (
        "abort",
        "bridge",
        "converter",
        "converting",
        "ended",
        "last_write",
        "progress",
        "receive",
        "recording",
        "scope",
        "send",
        "sending_since",
        "spawn",
        "stats",
        "tasks",
        "wanted",
        "watch",
        "write_turn",
        "writing",
    )

    def __init__(self, bridge: Bridge, scope: Scope, wanted: bool, context: StreamContext) -> None:
        self.bridge = bridge
        self.scope = scope
        self.wanted = wanted
        self.converting = False
        self.ended = False
        self.last_write = 0.0
        # When the write in progress began (0: none is), for the watch's send_timeout: a clock
        # read per write, where a timeout scope would cost 4-9 us (docs/reliability.md).
        self.sending_since = 0.0
        extension = (scope.get("extensions") or {}).get(ABORT_EXTENSION) or {}
        self.abort: Callable[[], object] | None = extension.get("abort")
        self.progress: Callable[[], tuple[int, int]] | None = extension.get("progress")
        # Writes take turns: only a ping ever competes with the app's writes, so a flag and an
        # event made only when one has to wait do what a lock would, without an acquire that
        # yields or a deque per stream (docs/benchmarks.md).
        self.writing = False
        self.write_turn: anyio.Event | None = None
        self.converter = Converter(bridge.new_translator(), bridge.max_line_bytes, context)
        self.stats = context
        self.recording: Recording | None = None
        self.watch = ClientWatch(self, bridge.keepalive, bridge.resume_grace, bridge.send_timeout)

    async def run(self, receive: Receive, send: Send) -> None:
        self.send = send
        self.receive = SharedReceive(receive)
        self.receive.resumable = self.wanted and self.bridge.store is not None
        if self.wanted:
            # Watch the client from the moment the app has read the request body: a proxy
            # behind us hears of a disconnect while the upstream is still silent.
            self.receive.on_body_complete = self.watch.start
        if on_asyncio():
            # Plain asyncio tasks: an anyio task group and its task handles cost about 3 KiB
            # per open stream and a tenth of a stream's setup here (docs/benchmarks.md).
            self.tasks: set[asyncio.Task[None]] = set()
            self.spawn: Callable[..., object] = self.spawn_task
            try:
                error = await self.serve()
            finally:
                self.watch.stop()
                await self.join()
                self.end_recording()
        else:
            try:
                async with anyio.create_task_group() as group:
                    self.spawn = group.start_soon
                    try:
                        error = await self.serve()
                    finally:
                        self.watch.stop()
            finally:
                self.end_recording()
        if error is not None:
            raise error

    async def serve(self) -> Exception | None:
        """Run the app; end a converted stream it left unfinished; return what it raised."""
        try:
            await self.bridge.app(self.scope, self.receive, self.send_wrapper)
            if self.converting and not self.closed:
                # The app returned without ending its body: deliver what it sent, then say
                # that the stream broke off, whatever the dialect.
                events = self.converter.rest()
                translator = self.converter.translator
                if not (translator.finished or translator.completed):
                    if self.stats.outcome is Outcome.SHUTDOWN:  # the proxy's, on SIGTERM
                        events += translator.shutdown(SHUTTING_DOWN)
                    else:
                        self.settle(Outcome.UPSTREAM_TRUNCATED)
                        events += translator.fail(APP_ENDED)
                await self.write(events, more=False)
        except Exception as exc:
            if self.converting and not self.closed:
                self.settle(Outcome.UPSTREAM_ERROR)
                await self.write(self.converter.translator.fail(APP_FAILED), more=False)
            return exc
        return None

    def spawn_task(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(func(*args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def join(self) -> None:
        """Wait for the background tasks, already told to stop: none outlives the request."""
        with anyio.CancelScope(shield=True):
            for task in list(self.tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def send_wrapper(self, message: Message) -> None:
        if self.ended or self.receive.disconnected:
            # The client is gone or our stream has ended: like uvicorn under ASGI 2.3, accept
            # and drop, while receive() tells the app http.disconnect.
            return
        kind = message["type"]
        if kind == "http.response.body" and self.converting:
            # The hot path, once per body message: no further coroutine layers before send().
            more = message.get("more_body", False)
            events, more = self.converter.events(message.get("body", b""), more)
            payload = self.payload(events)
            del events  # not held while a stalled client's write waits
            await self.write_bytes(payload, more=more)
        elif kind == "http.response.start":
            await self.start(message)
        else:
            await self.send(message)
            if kind == "http.response.body":
                self.stats.bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    self.watch.stop()

    async def start(self, message: Message) -> None:
        self.stats.status = message["status"]
        headers = list(message.get("headers", []))
        media = media_type(headers)
        encoding = header(headers, b"content-encoding").strip().lower()
        if media in self.bridge.ndjson_types:
            if self.bridge.convert == "negotiate":
                headers.append(VARY_ACCEPT)
            if self.wanted and message["status"] == 200:
                if encoding in ("", "identity"):
                    await self.begin(message, headers)
                    return
                logger.warning(
                    "sse_bridge: not converting %s: its NDJSON body arrived with "
                    "Content-Encoding %r; remove the compression inside the bridge",
                    self.scope.get("path"),
                    encoding,
                )
        elif media == "text/event-stream":
            headers = event_stream_headers(headers, self.scope.get("http_version"))
        await self.send({**message, "headers": headers})

    async def begin(self, message: Message, headers: list[tuple[bytes, bytes]]) -> None:
        self.converting = True
        kept = converted(headers)
        for name, value in self.converter.translator.headers:
            kept = replaced(kept, name, value)
        recording = None
        endpoints = self.bridge.endpoints
        if endpoints is not None:
            recording = self.recording = await endpoints.record(self.request_stop, self.scope)
            if recording is not None and (self.ended or self.receive.client_gone):
                # The client left while the store made the stream: there is nobody to tell
                # its id, so nobody can resume it.
                recording.finish()
                recording = self.recording = None
        if recording is not None:
            self.stats.stream_id = recording.stream_id
            kept = replaced(kept, STREAM_ID_HEADER, recording.stream_id.encode())
            # A generation outlives its client for the grace period.
            self.receive.hold = True
        start = {**message, "headers": event_stream_headers(kept, self.scope.get("http_version"))}
        start.pop("trailers", None)
        await self.send(start)
        self.last_write = time.monotonic()
        retry = self.bridge.retry
        if retry is not None:
            await self.write_bytes(retry, more=True)
        if recording is not None and self.bridge.event_ids:
            # EventSource keeps an id without data: a stream that drops before its first event
            # (a model still loading) then resumes too, rather than start a second generation.
            await self.write_bytes(b"id: %s:0\n\n" % recording.stream_id.encode(), more=True)
        self.watch.start()
        # The watch may have begun before the response: its keepalive clock starts now.
        self.watch.restart_clock()

    async def write(self, events: list[bytes], *, more: bool) -> None:
        await self.write_bytes(self.payload(events), more=more)

    def payload(self, events: list[bytes]) -> bytes:
        """The events as one body (numbered if asked), counted as sent unless we are closed."""
        if not events:
            return b""
        recording = self.recording
        if recording is not None and not self.ended:
            recording.append(events)
            if self.bridge.event_ids:
                events = self.converter.with_stream_ids(events, recording.stream_id)
        elif self.bridge.event_ids:
            events = self.converter.with_ids(events)
        if not (self.closed or self.receive.client_gone):
            stats = self.stats
            stats.events += len(events)
            gaps = stats.gaps
            if gaps is not None:
                # Metrics on: one clock read for both.
                now = time.monotonic()
                if stats.first_event is None:
                    stats.first_event = now
                stats.count_gaps(gaps, now, len(events))
            elif stats.first_event is None:
                stats.first_event = time.monotonic()
        return events[0] if len(events) == 1 else b"".join(events)

    def settle(self, outcome: Outcome) -> None:
        self.stats.settle(outcome)

    async def write_bytes(self, payload: bytes, *, more: bool) -> None:
        # An empty body message with more_body=True flushes nothing (uvicorn writes no chunk).
        if more and not payload:
            return
        while self.writing:
            if self.write_turn is None:
                self.write_turn = anyio.Event()
            await self.write_turn.wait()
        if self.ended:
            return
        if self.recording is not None:
            # A resumable stream goes on without its client; only the writing stops.
            if self.receive.client_gone:
                if not more:
                    self.close()
                return
        elif self.receive.disconnected:
            return
        self.writing = True
        self.sending_since = time.monotonic()
        try:
            await self.send({"type": "http.response.body", "body": payload, "more_body": more})
            self.stats.bytes += len(payload)
        except OSError:
            # A server may raise once the client has gone (ASGI 2.4). A resumable generation
            # goes on for the grace period; the watch hears of the disconnect from receive().
            if self.recording is None:
                raise
            self.receive.client_gone = True
        finally:
            self.writing = False
            self.sending_since = 0.0
            if self.write_turn is not None:
                self.write_turn.set()
                self.write_turn = None
        self.last_write = time.monotonic()
        if not more:
            self.close()

    @property
    def closed(self) -> bool:
        # The app may hear of a disconnect from its own receive() before the watch task does.
        return self.ended or self.receive.disconnected

    def close(self) -> None:
        self.ended = True
        self.receive.close()
        self.watch.stop()
        if self.recording is not None:
            self.recording.finish()

    def end_recording(self) -> None:
        """A resumable stream that ended any other way still ends with its terminal event."""
        recording = self.recording
        if recording is None or self.ended:
            return
        translator = self.converter.translator
        if not (translator.finished or translator.completed):
            recording.append(translator.fail(CANCELLED))
        self.ended = True
        recording.finish()

    def request_stop(self) -> None:
        """Called by the store (a DELETE of the resume endpoint, on any instance)."""
        if not self.ended:
            self.spawn(self.halt)

    async def halt(self) -> None:
        """Stop the generation now: the upstream is cancelled, every reader gets the end."""
        if self.ended:
            return
        if getattr(self.recording, "taken_over", False):
            # The store refuses the rest of this stream: say so, rather than go on unrecorded.
            self.settle(Outcome.TAKEN_OVER)
            events = self.converter.translator.fail(TAKEN_OVER)
        else:
            events = self.last_events(Outcome.STOPPED)
        # Made (and counted as sent) before the app is told the client has gone: after that,
        # the stream counts as closed and the final event would reach the client uncounted.
        payload = self.payload(events)
        self.receive.release()
        if self.stats.on_disconnect is not None:
            self.stats.on_disconnect()
        await self.write_bytes(payload, more=False)

    def last_events(self, outcome: Outcome) -> list[bytes]:
        """The events that end a stream stopped, abandoned by its client or cut off from it
        (``STOPPED``, ``CLIENT_DISCONNECTED``, ``CLIENT_STALLED``): none if its final or
        terminal event has gone out and only the upstream's end of body was still to come."""
        translator = self.converter.translator
        if translator.completed:
            self.settle(Outcome.COMPLETED)
            return []
        if translator.finished:
            return []
        self.settle(outcome)
        if outcome is Outcome.STOPPED:
            return translator.stop()
        if outcome is Outcome.CLIENT_STALLED:
            return translator.fail(STALLED.format(timeout=self.bridge.send_timeout))
        return translator.fail(self.abandoned())

    def abandoned(self) -> str:
        return ABANDONED.format(grace=self.bridge.resume_grace)
