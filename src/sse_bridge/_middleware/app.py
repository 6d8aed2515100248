"""``SSEBridgeMiddleware``: NDJSON streaming responses become unbuffered Server-Sent Events."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from sse_bridge._core.codec import encode_retry
from sse_bridge._core.context import EVENT_STREAM_KEY, STREAM_KEY, StreamContext
from sse_bridge._core.headers import accepts_event_stream, for_app, media_type
from sse_bridge._core.options import off_as_zero
from sse_bridge._dialects.builtin import Dialect, resolve_dialect
from sse_bridge._middleware.options import BridgeOptions
from sse_bridge._middleware.responder import Responder
from sse_bridge._resume.binding import Owner
from sse_bridge._resume.http import ResumeEndpoints
from sse_bridge._resume.open import open_store
from sse_bridge._resume.store import ResumeStore
from sse_bridge._types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from sse_bridge._metrics.prometheus import BridgeMetrics

logger = logging.getLogger("sse_bridge")

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
        send_timeout: seconds a client may accept no bytes, data or keepalive, before it is
            disconnected (outcome ``client_stalled``; docs/reliability.md); ``0`` waits forever.
        max_line_bytes: the longest NDJSON line accepted; a longer one ends the stream with an
            error event. This bounds the memory one stream holds.
        event_ids: add increasing ``id:`` fields (1, 2, ...) for EventSource clients. Off by
            default: hand-written clients that expect each event to be one ``data:`` line break
            on it, and httpx-sse and the openai SDK then turn keepalives into empty events.
        retry: if set, an EventSource reconnection time in milliseconds, sent first.
        retry_jitter: with ``retry``, each stream's value is spread at random by up to this
            fraction either way (``0.2``: +-20 %), so that the EventSource clients of a
            restarted instance do not all reconnect at the same moment; ``0`` (the default):
            every stream gets ``retry`` exactly.
        ndjson_types: the media types treated as NDJSON.
        resume: make converted streams resumable (docs/resume.md): ``"memory"`` keeps them in
            this process, ``"redis://host:port/db"`` in Redis for several instances (the
            ``resume`` extra), or a store object; ``None`` (the default) is off.
        resume_path: where streams are resumed (``GET <path>/<id>``) and stopped (``DELETE``).
        resume_grace: seconds a generation runs on after its last reader left, for a resume
            to pick it up; then it is cancelled.
        resume_ttl: seconds a finished stream stays resumable (when ``resume`` is a string).
        resume_max_readers: readers one stream may have at once in this process (resumes by
            ``GET`` or ``Last-Event-ID``); one more gets 429 with ``Retry-After``.
        resume_owner: a function of the request's scope that returns who the request is (a
            user id your authentication put in the scope) or None. Each stream is bound to its
            owner: a resume or stop by anyone else gets the 404 of an unknown id. ``None`` (the
            default): a stream id is all it takes (docs/resume.md, "Security model").
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
        send_timeout: float = _DEFAULT.send_timeout,
        max_line_bytes: int = _DEFAULT.max_line_bytes,
        event_ids: bool = _DEFAULT.event_ids,
        retry: int | None = _DEFAULT.retry,
        retry_jitter: float = _DEFAULT.retry_jitter,
        ndjson_types: Sequence[str] = _DEFAULT.ndjson_types,
        resume: str | ResumeStore | None = _DEFAULT.resume,
        resume_path: str = _DEFAULT.resume_path,
        resume_grace: float = _DEFAULT.resume_grace,
        resume_ttl: float = _DEFAULT.resume_ttl,
        resume_max_readers: int = _DEFAULT.resume_max_readers,
        resume_owner: Owner | None = _DEFAULT.resume_owner,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        try:
            options = BridgeOptions(
                dialect=dialect,
                convert=convert,
                keepalive=off_as_zero(keepalive),
                send_timeout=send_timeout,
                max_line_bytes=max_line_bytes,
                event_ids=event_ids,
                retry=retry,
                retry_jitter=retry_jitter,
                ndjson_types=ndjson_types,
                resume=resume,
                resume_path=resume_path,
                resume_grace=resume_grace,
                resume_ttl=resume_ttl,
                resume_max_readers=resume_max_readers,
                resume_owner=resume_owner,
            )
            self._configure(app, options, metrics)
        except ValueError as exc:
            # Starlette and FastAPI build their middleware at the app's first message, the
            # lifespan startup, whose failure uvicorn's default `--lifespan auto` takes for an app
            # without lifespan and hides: the server starts, and every request fails. Logged,
            # the bad option is on the console at startup whatever the server does with it.
            logger.error("SSEBridgeMiddleware cannot be built: %s", exc)
            raise

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
        self.send_timeout = options.send_timeout
        self.max_line_bytes = options.max_line_bytes
        self.event_ids = options.event_ids
        self.retry_ms = options.retry
        self.retry_jitter = options.retry_jitter
        self.retry_field = None if options.retry is None else encode_retry(options.retry)
        self.ndjson_types = frozenset(options.ndjson_types)
        self.resume_grace = options.resume_grace
        self.store = open_store(options.resume, ttl=options.resume_ttl)
        self.endpoints = (
            None
            if self.store is None
            else ResumeEndpoints(
                self,
                self.store,
                options.resume_path,
                max_readers=options.resume_max_readers,
                owner=options.resume_owner,
            )
        )
        if metrics is not None:
            metrics.watch_store(self.store)

    @property
    def retry(self) -> bytes | None:
        """The ``retry:`` field for one new stream (spread by ``retry_jitter``), or None."""
        if self.retry_ms is None or not self.retry_jitter:
            return self.retry_field
        spread = self.retry_ms * self.retry_jitter
        return encode_retry(max(0, round(self.retry_ms + random.uniform(-spread, spread))))

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
        # Counted here only as middleware: behind it, the sidecar's front layer counts. Only
        # streams count (an NDJSON or event-stream response, converted or not, and the resume
        # endpoints' streams): the app's other routes, its own /metrics among them, are not.
        context = scope[STREAM_KEY] = scope.get(STREAM_KEY) or StreamContext()
        counted = False

        async def send_counted(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                media = media_type(message.get("headers", []))
                if media == "text/event-stream" or media in self.ndjson_types:
                    counted = True
                    metrics.start(context)
            await send(message)

        try:
            await self.serve(scope, receive, send_counted)
        finally:
            if counted:
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
        await Responder(self, scope, wanted, context).run(receive, send)


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
