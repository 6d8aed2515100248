"""``SSEBridgeMiddleware``: NDJSON streaming responses become unbuffered Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._codec import (
    LineDecoder,
    LineTooLongError,
    encode_comment,
    encode_retry,
)
from ._dialects import Dialect, resolve_dialect
from ._headers import (
    STREAM_ID_HEADER,
    VARY_ACCEPT,
    accepts_event_stream,
    converted,
    event_stream_headers,
    for_app,
    header,
    media_type,
    replaced,
)
from ._http import EVENT_STREAM_KEY, STREAM_KEY, Outcome, StreamContext, on_asyncio
from ._options import BridgeOptions, off_as_zero
from ._receive import SharedReceive
from ._resume import Recording, ResumeError, ResumeStore, open_store
from ._resume_http import ResumeEndpoints, with_stream_id
from ._translator import Translator
from ._types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ._metrics import BridgeMetrics

logger = logging.getLogger("sse_bridge")

PING = encode_comment("ping")
APP_FAILED = "the stream failed inside the server; the answer is incomplete"
APP_ENDED = "the stream ended before the server finished it; the answer may be incomplete"
ABANDONED = "the stream was cancelled: its client left and nobody resumed it within {grace:g} s"
CANCELLED = "the stream was cancelled inside the server; the answer is incomplete"

_DEFAULT = BridgeOptions()
# Server extensions that would let the app bypass http.response.body, which is what we rewrite.
_BYPASS_EXTENSIONS = (
    "http.response.pathsend",
    "http.response.zerocopysend",
    "http.response.trailers",
)


class SSEBridgeMiddleware:
    """Serve an ASGI app's ``application/x-ndjson`` streams as ``text/event-stream``.

    Args:
        app: the ASGI app to wrap.
        dialect: ``"raw"`` (each line verbatim as one event), ``"ollama"``, ``"openai"``, a
            callable that takes one decoded JSON value and returns the events to send, or a
            :class:`sse_bridge.Translator` subclass, made once per stream for a stateful dialect.
        convert: ``"negotiate"`` converts only for requests whose ``Accept`` names
            ``text/event-stream``; ``"always"`` converts every 200 NDJSON response.
        keepalive: seconds of silence after which a ``: ping`` comment is sent; ``0`` sends
            none (``None`` is accepted as ``0``).
        max_line_bytes: the longest NDJSON line accepted; a longer one ends the stream with an
            error event. This bounds the memory one stream holds.
        event_ids: add increasing ``id:`` fields (1, 2, ...) for EventSource clients. Off by
            default: hand-written clients that expect each event to be one ``data:`` line break
            on it, and httpx-sse and the openai SDK then turn keepalives into empty events.
        retry: if set, an EventSource reconnection time in milliseconds, sent first.
        ndjson_types: the media types treated as NDJSON.
        resume: make converted streams resumable (docs/resume.md): ``"memory"`` keeps them in
            this process, ``"redis://host:port/db"`` in Redis for several instances (the
            ``resume`` extra), or a store object; ``None`` (the default) is off.
        resume_path: where streams are resumed (``GET <path>/<id>``) and stopped (``DELETE``).
        resume_grace: seconds a generation runs on after its last reader left, for a resume
            to pick it up; then it is cancelled.
        resume_ttl: seconds a finished stream stays resumable (when ``resume`` is a string).
        metrics: a :class:`sse_bridge.metrics.BridgeMetrics` to record every request in
            (docs/operations.md); ``None`` (the default) records nothing and costs nothing.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        dialect: Dialect = _DEFAULT.dialect,
        convert: Literal["negotiate", "always"] = _DEFAULT.convert,
        keepalive: float | None = _DEFAULT.keepalive,
        max_line_bytes: int = _DEFAULT.max_line_bytes,
        event_ids: bool = _DEFAULT.event_ids,
        retry: int | None = _DEFAULT.retry,
        ndjson_types: Sequence[str] = _DEFAULT.ndjson_types,
        resume: str | ResumeStore | None = _DEFAULT.resume,
        resume_path: str = _DEFAULT.resume_path,
        resume_grace: float = _DEFAULT.resume_grace,
        resume_ttl: float = _DEFAULT.resume_ttl,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        options = BridgeOptions(
            dialect=dialect,
            convert=convert,
            keepalive=off_as_zero(keepalive),
            max_line_bytes=max_line_bytes,
            event_ids=event_ids,
            retry=retry,
            ndjson_types=ndjson_types,  # type: ignore[arg-type]  # any sequence; a tuple is kept
            resume=resume,
            resume_path=resume_path,
            resume_grace=resume_grace,
            resume_ttl=resume_ttl,
        )
        self._configure(app, options, metrics)

    @classmethod
    def with_options(
        cls, app: ASGIApp, options: BridgeOptions, *, metrics: BridgeMetrics | None = None
    ) -> SSEBridgeMiddleware:
        """The middleware for options already made (and so already checked)."""
        middleware = cls.__new__(cls)
        middleware._configure(app, options, metrics)
        return middleware

    def _configure(
        self, app: ASGIApp, options: BridgeOptions, metrics: BridgeMetrics | None
    ) -> None:
        self.app = app
        self.options = options
        self.metrics = metrics
        dialect = options.dialect
        self.new_translator = resolve_dialect(dialect)
        self.dialect_name = (
            dialect if isinstance(dialect, str) else getattr(dialect, "__name__", "custom")
        )
        # Read on every request: kept as attributes of their own.
        self.convert = options.convert
        self.keepalive = options.keepalive
        self.max_line_bytes = options.max_line_bytes
        self.event_ids = options.event_ids
        self.retry = None if options.retry is None else encode_retry(options.retry)
        self.ndjson_types = frozenset(options.ndjson_types)
        self.resume_grace = options.resume_grace
        self.store = open_store(options.resume, ttl=options.resume_ttl)
        self.endpoints = (
            None if self.store is None else ResumeEndpoints(self, self.store, options.resume_path)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.endpoints is not None:
                receive = self.endpoints.lifespan(receive, send)
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        if metrics is None:
            await self.serve(scope, receive, send)
            return
        # Counted here only as middleware: behind it, the sidecar's front layer counts.
        context = scope[STREAM_KEY] = scope.get(STREAM_KEY) or StreamContext()
        metrics.start(context)
        try:
            await self.serve(scope, receive, send)
        finally:
            metrics.finish(context, self.dialect_name)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepts = accepts_event_stream(scope["headers"])
        wanted = scope["method"] != "HEAD" and (self.convert == "always" or accepts)
        if self.endpoints is not None and await self.endpoints.answer(scope, receive, send, wanted):
            return
        context: StreamContext = scope.get(STREAM_KEY) or StreamContext()
        context.converting = context.watched = wanted
        context.client_accepts_events = accepts
        scope = _scope_for_app(scope, wanted)
        if wanted:
            scope[STREAM_KEY] = context
        await _Responder(self, scope, wanted, context).run(receive, send)


def _scope_for_app(scope: Scope, wanted: bool) -> Scope:
    """The app's copy of the scope; the caller's is never changed."""
    scope = dict(scope)
    asgi = scope.get("asgi") or {}
    if _spec_version(asgi) >= (2, 4):
        # After a disconnect or an early end this middleware accepts and drops what the app
        # sends, as under ASGI 2.3; say so, or Starlette's StreamingResponse stops listening
        # for http.disconnect and runs its generator to the end.
        scope["asgi"] = {**asgi, "spec_version": "2.3"}
    if not wanted:
        return scope
    scope["headers"] = for_app(scope["headers"])
    extensions = scope.get("extensions")
    if extensions:
        scope["extensions"] = {k: v for k, v in extensions.items() if k not in _BYPASS_EXTENSIONS}
    scope[EVENT_STREAM_KEY] = True
    return scope


def _spec_version(asgi: dict[str, str]) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(asgi.get("spec_version", "2.0")).split("."))
    except ValueError:
        return (2, 0)


class _Responder:
    """Per-request state: watches ``http.response.start`` and rewrites what follows if needed."""

    __slots__ = (
        "background",
        "converting",
        "decoder",
        "ended",
        "last_write",
        "next_id",
        "options",
        "pinging",
        "receive",
        "recording",
        "scope",
        "send",
        "spawn",
        "stats",
        "tasks",
        "translator",
        "wait_scope",
        "wanted",
        "watching",
        "write_turn",
        "writing",
    )

    def __init__(
        self, options: SSEBridgeMiddleware, scope: Scope, wanted: bool, context: StreamContext
    ) -> None:
        self.options = options
        self.scope = scope
        self.wanted = wanted
        self.converting = False
        self.ended = False
        self.last_write = 0.0
        self.next_id = 0
        # Writes take turns: only a ping ever competes with the app's writes, so a flag and an
        # event made only when one has to wait do what a lock would, without an acquire that
        # yields or a deque per stream (docs/benchmarks.md).
        self.writing = False
        self.write_turn: anyio.Event | None = None
        self.background = anyio.CancelScope()
        self.pinging: anyio.CancelScope | None = None
        self.decoder = LineDecoder(options.max_line_bytes)
        self.translator: Translator = options.new_translator()
        self.stats = context
        self.recording: Recording | None = None
        self.watching = False
        # The watch's current wait, cancelled to make it look again (say, at the first byte).
        self.wait_scope: anyio.CancelScope | None = None

    async def run(self, receive: Receive, send: Send) -> None:
        self.send = send
        self.receive = SharedReceive(receive)
        self.receive.resumable = self.wanted and self.options.store is not None
        if self.wanted:
            # Watch the client from the moment the app has read the request body: a proxy
            # behind us hears of a disconnect while the upstream is still silent.
            self.receive.on_body_complete = self.start_watch
        if on_asyncio():
            # Plain asyncio tasks: an anyio task group and its task handles cost about 3 KiB
            # per open stream and a tenth of a stream's setup here (docs/benchmarks.md).
            self.tasks: set[asyncio.Task[None]] = set()
            self.spawn: Callable[..., object] = self.spawn_task
            try:
                error = await self.serve()
            finally:
                self.stop_background()
                await self.join()
                self.end_recording()
        else:
            try:
                async with anyio.create_task_group() as group:
                    self.spawn = group.start_soon
                    try:
                        error = await self.serve()
                    finally:
                        self.stop_background()
            finally:
                self.end_recording()
        if error is not None:
            raise error

    async def serve(self) -> Exception | None:
        """Run the app; end a converted stream it left unfinished; return what it raised."""
        try:
            await self.options.app(self.scope, self.receive, self.send_wrapper)
            if self.converting and not self.closed:
                # The app returned without ending its body: deliver what it sent, then say
                # that the stream broke off, whatever the dialect.
                events = self.translate(self.decoder.flush())
                if not (self.translator.finished or self.translator.completed):
                    self.settle(Outcome.UPSTREAM_TRUNCATED)
                    events += self.translator.fail(APP_ENDED)
                await self.write(events, more=False)
        except Exception as exc:
            if self.converting and not self.closed:
                self.settle(Outcome.UPSTREAM_ERROR)
                await self.write(self.translator.fail(APP_FAILED), more=False)
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
            events, more = self.events(message.get("body", b""), more)
            await self.write_bytes(self.payload(events), more=more)
        elif kind == "http.response.start":
            await self.start(message)
        else:
            await self.send(message)
            if kind == "http.response.body":
                self.stats.bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    self.stop_background()

    async def start(self, message: Message) -> None:
        self.stats.status = message["status"]
        headers = list(message.get("headers", []))
        media = media_type(headers)
        encoding = header(headers, b"content-encoding").strip().lower()
        if media in self.options.ndjson_types:
            if self.options.convert == "negotiate":
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
        recording = None
        endpoints = self.options.endpoints
        if endpoints is not None:
            recording = self.recording = await endpoints.record(self.request_stop)
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
        if self.options.retry is not None:
            await self.write_bytes(self.options.retry, more=True)
        if recording is not None and self.options.event_ids:
            # EventSource keeps an id without data: a stream that drops before its first event
            # (a model still loading) then resumes too, rather than start a second generation.
            await self.write_bytes(b"id: %s:0\n\n" % recording.stream_id.encode(), more=True)
        self.start_watch()
        if self.wait_scope is not None and self.options.keepalive:
            # The watch began before the response: its keepalive clock starts now.
            self.wait_scope.deadline = anyio.current_time() + self.options.keepalive

    def events(self, chunk: bytes, more: bool) -> tuple[list[bytes], bool]:
        """Every event of the lines this body message completes, and whether more may follow."""
        translator = self.translator
        try:
            lines = self.decoder.decode(chunk)
            if not more:
                lines += self.decoder.flush()
        except LineTooLongError as exc:
            events = self.translate(exc.lines)
            if not translator.finished:
                self.settle(Outcome.UPSTREAM_ERROR)
                events += translator.fail(str(exc))
        else:
            events = self.translate(lines) if lines else []
            if not more and not translator.finished:
                events += translator.end()
                if translator.finished:
                    self.settle(Outcome.UPSTREAM_TRUNCATED)
        if translator.finished:
            self.settle(Outcome.UPSTREAM_ERROR)
            more = False
        elif not more and translator.completed:
            self.settle(Outcome.COMPLETED)
        return events, more

    def translate(self, lines: list[str]) -> list[bytes]:
        translator = self.translator
        translate_line = translator.translate
        events: list[bytes] = []
        for line in lines:
            try:
                events += translate_line(line)
            except Exception as exc:
                # Valid JSON of an unexpected shape (say "tool_calls": 5) must not end the
                # stream: report that line and go on.
                logger.exception("sse_bridge: %s failed on a line", type(translator).__name__)
                reason = f"the bridge could not translate this line ({type(exc).__name__})"
                events += translator.bad_line(line, reason)
            if translator.finished:
                break
        return events

    async def write(self, events: list[bytes], *, more: bool) -> None:
        await self.write_bytes(self.payload(events), more=more)

    def payload(self, events: list[bytes]) -> bytes:
        """The events as one body (numbered if asked), counted as sent unless we are closed."""
        if not events:
            return b""
        recording = self.recording
        if recording is not None and not self.ended:
            recording.append(events)
            if self.options.event_ids:
                events = self.with_stream_ids(events, recording.stream_id)
        elif self.options.event_ids:
            events = [self.with_id(event) for event in events]
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

    def with_stream_ids(self, events: list[bytes], stream_id: str) -> list[bytes]:
        # The same numbers the recording gives these events, so that Last-Event-ID resumes.
        prefix = b"id: %s:" % stream_id.encode()
        numbered = []
        for event in events:
            self.next_id += 1
            numbered.append(with_stream_id(prefix, self.next_id, event))
        return numbered

    def with_id(self, event: bytes) -> bytes:
        # An event the dialect gave an id of its own keeps it; the encoder writes the id first.
        if event.startswith(b"id:"):
            return event
        self.next_id += 1
        return b"id: %d\n%b" % (self.next_id, event)

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
        self.stop_background()
        if self.recording is not None:
            self.recording.finish()

    def end_recording(self) -> None:
        """A resumable stream that ended any other way still ends with its terminal event."""
        recording = self.recording
        if recording is None or self.ended:
            return
        translator = self.translator
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
        events = self.last_events(Outcome.STOPPED)
        self.receive.release()
        if self.stats.on_disconnect is not None:
            self.stats.on_disconnect()
        await self.write(events, more=False)

    def stop_background(self) -> None:
        self.background.cancel()
        if self.pinging is not None:
            self.pinging.cancel()

    def start_watch(self) -> None:
        if not self.watching:
            self.watching = True
            self.spawn(self.watch)

    async def watch(self) -> None:
        """Until the client leaves; it also starts the keepalives in the silences."""
        with self.background:
            while True:
                interval = self.options.keepalive if self.converting else 0.0
                delay = self.last_write + interval - time.monotonic()
                if interval and delay <= 0:
                    # A short task per ping, so that this one goes on watching while a slow
                    # client holds the ping's write (a write queued behind it must see the
                    # disconnect).
                    if self.pinging is None:
                        self.pinging = anyio.CancelScope()
                        self.spawn(self.ping, self.pinging)
                    delay = interval
                with anyio.CancelScope(
                    deadline=anyio.current_time() + delay if interval else math.inf
                ) as self.wait_scope:
                    await self.receive.watch()
                    break
            self.wait_scope = None
            if self.recording is not None and not self.receive.disconnected:
                await self.linger()
                self.receive.release()
                await self.write(self.last_events(Outcome.CLIENT_DISCONNECTED), more=False)
            if self.stats.on_disconnect is not None:
                self.stats.on_disconnect()
            if not self.ended:
                # The client has gone: stop writing at once; the app's receive() says so.
                self.settle(Outcome.CLIENT_DISCONNECTED)
                self.close()

    async def linger(self) -> None:
        """Return once nobody has followed the stream for the grace period."""
        assert self.recording is not None
        grace = self.options.resume_grace
        quiet_since = time.monotonic()
        while True:
            left = quiet_since + grace - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(min(left, 1.0))
            try:
                attended = await self.recording.attended()
            except ResumeError:
                attended = False
            if attended:
                quiet_since = time.monotonic()

    def last_events(self, outcome: Outcome) -> list[bytes]:
        """The events that end a stream stopped (``STOPPED``) or abandoned by its client
        (``CLIENT_DISCONNECTED``): none if its final or terminal event has gone out already
        and only the upstream's end of body was still to come."""
        translator = self.translator
        if translator.completed:
            self.settle(Outcome.COMPLETED)
            return []
        if translator.finished:
            return []
        self.settle(outcome)
        return (
            translator.stop() if outcome is Outcome.STOPPED else translator.fail(self.abandoned())
        )

    def abandoned(self) -> str:
        return ABANDONED.format(grace=self.options.resume_grace)

    async def ping(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self.write_bytes(PING, more=True)
            if not self.closed:
                self.stats.keepalives += 1
        self.pinging = None
