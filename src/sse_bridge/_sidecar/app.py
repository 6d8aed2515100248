"""The sidecar app: health, auth, limits and logging in front of the middleware and the proxy."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import fields, replace
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from starlette.middleware.cors import CORSMiddleware

from sse_bridge._core.asgi import send_json
from sse_bridge._core.context import STREAM_KEY, StreamContext
from sse_bridge._core.headers import (
    CORS_ALLOW_HEADERS,
    CORS_ALLOW_METHODS,
    CORS_EXPOSE_HEADERS,
    RETRY_AFTER,
    WWW_AUTHENTICATE,
    bearer_token,
    header,
)
from sse_bridge._core.options import off_as_zero
from sse_bridge._dialects.builtin import Dialect
from sse_bridge._middleware.app import SSEBridgeMiddleware
from sse_bridge._proxy.app import ProxyApp
from sse_bridge._resume.binding import Owner, header_owner
from sse_bridge._resume.store import ResumeStore
from sse_bridge._sidecar.chat import UIChat
from sse_bridge._sidecar.logline import log_line
from sse_bridge._sidecar.options import SidecarOptions
from sse_bridge._sidecar.ready import Readiness
from sse_bridge._sidecar.stats import install as install_stats
from sse_bridge._sidecar.stats import uninstall as uninstall_stats
from sse_bridge._types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from sse_bridge._metrics.prometheus import BridgeMetrics

_DEFAULT: dict[str, Any] = {item.name: item.default for item in fields(SidecarOptions)}
logger = logging.getLogger("sse_bridge")
access_logger = logging.getLogger("sse_bridge.access")


class SidecarApp:
    """The ASGI app ``sse-bridge serve`` runs; build it with :func:`create_proxy`.

    On SIGTERM, open streams get ``grace`` seconds to finish; then each is ended cleanly with
    a final error saying the bridge is shutting down. uvicorn would otherwise wait for them and
    then cancel them, which clients see as a broken transfer and the log as a traceback.
    """

    def __init__(
        self, app: ASGIApp, proxy: ProxyApp, *, grace: float, store: ResumeStore | None = None
    ) -> None:
        self.app = app
        self.proxy = proxy
        self.grace = grace
        # Where resumable streams are kept, if resume is on.
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        previous = self._chain_sigterm(loop)
        stats = install_stats(loop, lambda: len(self.proxy.exchanges), self.store)
        try:
            await self.app(scope, receive, send)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if stats:
                uninstall_stats(loop)

    def _chain_sigterm(self, loop: asyncio.AbstractEventLoop) -> Any:
        # uvicorn installs its own handler before the lifespan starts; run ours, then its.
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                loop.call_soon_threadsafe(loop.call_later, self.grace, self.drain)
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                # Nobody shuts the server down gracefully: behave as if we were not here.
                signal.signal(signal.SIGTERM, previous)
                signal.raise_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, handler)
        return previous

    def drain(self) -> None:
        """End every open stream now, with an error saying the bridge is shutting down."""
        if self.proxy.exchanges:
            logger.info(
                "sse_bridge: ending %d open stream(s) for shutdown", len(self.proxy.exchanges)
            )
        self.proxy.drain()


class _Front:
    """Health endpoints, the API key, the stream limit, and one log line per request."""

    def __init__(
        self,
        app: ASGIApp,
        proxy: ProxyApp,
        *,
        api_key: str | None,
        max_streams: int,
        dialect: str,
        metrics: BridgeMetrics | None = None,
        metrics_path: str | None = None,
        log_format: str = "text",
        keyed_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.proxy = proxy
        self.api_key = api_key.encode() if api_key else None
        self.max_streams = max_streams
        self.dialect = dialect
        self.active = 0
        self.metrics = metrics
        # Where the metrics are served on this port (None: not here; --metrics-port, or off).
        self.metrics_path = metrics_path
        self.metrics_app = None if metrics is None else metrics.asgi_app()
        self.readiness = Readiness(proxy.upstream)
        self.log_format = log_format
        # The paths whose next segment is a key to a stream (a stream's or a chat's id), kept
        # out of the log: none with resume off.
        self.keyed_paths = keyed_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
            return
        if path == "/readyz":
            await self.ready(send)
            return
        metrics = self.metrics
        if self.api_key is not None and not self.authorized(scope):
            if metrics is not None:
                metrics.refuse("unauthorized")
            await send_json(
                send,
                401,
                {"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                [WWW_AUTHENTICATE],
            )
            return
        if path == self.metrics_path and self.metrics_app is not None:
            await self.metrics_app(scope, receive, send)
            return
        if self.active >= self.max_streams:
            if metrics is not None:
                metrics.refuse("max_streams")
            await send_json(
                send,
                503,
                {"error": f"too many concurrent streams (max {self.max_streams}); retry later"},
                [RETRY_AFTER],
            )
            return
        # The middleware behind fills in the status and the bytes it sends. The server's scope
        # is this request's own, and the outermost layer may mark it: a copy per open stream
        # costs half a KiB (docs/benchmarks.md).
        stats = scope[STREAM_KEY] = StreamContext()
        self.active += 1
        if metrics is not None:
            metrics.start(stats)
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.log(scope, stats)
            if metrics is not None:
                metrics.finish(stats, self.dialect)

    def authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        token = bearer_token(header(scope["headers"], b"authorization"))
        return token is not None and hmac.compare_digest(token.encode("latin-1"), self.api_key)

    async def ready(self, send: Send) -> None:
        status, body = await self.readiness.check()
        await send_json(send, status, body)

    def log(self, scope: Scope, stats: StreamContext) -> None:
        access_logger.info(
            "%s", log_line(scope, stats, self.dialect, self.log_format, self.keyed_paths)
        )


def create_proxy(
    *,
    upstream: str,
    dialect: Dialect = _DEFAULT["dialect"],
    convert: Literal["negotiate", "always"] = _DEFAULT["convert"],
    keepalive: float | None = _DEFAULT["keepalive"],
    send_timeout: float = _DEFAULT["send_timeout"],
    max_line_bytes: int = _DEFAULT["max_line_bytes"],
    event_ids: bool = _DEFAULT["event_ids"],
    retry: int | None = _DEFAULT["retry"],
    retry_jitter: float = _DEFAULT["retry_jitter"],
    ndjson_types: Sequence[str] = _DEFAULT["ndjson_types"],
    commit_after: float | None = _DEFAULT["commit_after"],
    commit_paths: Sequence[str] = _DEFAULT["commit_paths"],
    connect_timeout: float = _DEFAULT["connect_timeout"],
    read_timeout: float | None = _DEFAULT["read_timeout"],
    max_streams: int = _DEFAULT["max_streams"],
    max_body: int = _DEFAULT["max_body"],
    api_key: str | None = _DEFAULT["api_key"],
    cors_origins: Sequence[str] = _DEFAULT["cors_origins"],
    grace: float = _DEFAULT["grace"],
    resume: str | ResumeStore | None = _DEFAULT["resume"],
    resume_path: str = _DEFAULT["resume_path"],
    resume_grace: float = _DEFAULT["resume_grace"],
    resume_ttl: float = _DEFAULT["resume_ttl"],
    resume_max_readers: int = _DEFAULT["resume_max_readers"],
    resume_owner: Owner | None = _DEFAULT["resume_owner"],
    resume_owner_header: str | None = _DEFAULT["resume_owner_header"],
    model: str | None = _DEFAULT["model"],
    chat_path: str = _DEFAULT["chat_path"],
    metrics: bool = _DEFAULT["metrics"],
    metrics_port: int | None = _DEFAULT["metrics_port"],
    log_format: Literal["text", "json"] = _DEFAULT["log_format"],
) -> SidecarApp:
    """Build the sidecar: a reverse proxy to ``upstream`` behind :class:`SSEBridgeMiddleware`.

    Args:
        upstream: the base URL of the NDJSON server, e.g. ``http://127.0.0.1:11434``; the only
            host the proxy ever sends requests to.
        dialect, convert, keepalive, send_timeout, max_line_bytes, event_ids, retry,
            retry_jitter, ndjson_types: as for the middleware.
        commit_after: seconds to wait for the upstream's headers, when the client asked for an
            event stream, before committing a 200 stream and sending keepalives (Ollama writes
            no headers while a model loads). ``0`` never commits early (``None`` is accepted as
            ``0``).
        commit_paths: the request paths that may be committed early: endpoints that answer
            with NDJSON (by default Ollama's ``/api/chat`` and ``/api/generate``). A request
            whose JSON body says ``"stream": false`` is never committed early.
        connect_timeout: seconds to connect to the upstream.
        read_timeout: seconds the upstream may be silent; ``0`` (the default; ``None`` is
            accepted as ``0``) waits forever, since keepalives cover silence towards the client.
        max_streams: concurrent requests allowed; more get 503. The connection pool is sized
            to match.
        max_body: the largest request body accepted; larger ones get 413.
        api_key: if set, every request but ``/healthz`` and ``/readyz`` needs
            ``Authorization: Bearer <key>``; the header is never forwarded upstream.
        cors_origins: origins allowed to call the bridge from a browser; none by default.
        grace: seconds open streams get to finish after SIGTERM before they are ended.
        resume, resume_path, resume_grace, resume_ttl, resume_max_readers, resume_owner:
            resumable streams, as for the middleware (docs/resume.md); the API key guards the
            resume endpoints too.
        resume_owner_header: the request header that names the request's user, set by an
            authenticating proxy in front (``X-Auth-Request-User`` from oauth2-proxy, say), which
            must replace any value the client sent: each stream is bound to it, as with
            ``resume_owner``.
        resume, resume_path, resume_grace, resume_ttl: resumable streams, as for the
            middleware (docs/resume.md); the API key guards the resume endpoints too.
        model: with ``dialect="ai-sdk"``, the Ollama model of a chat request whose body names
            none (docs/ai-sdk.md); ``None``: each request must name its model.
        chat_path: with ``dialect="ai-sdk"``, the path ``useChat`` posts its requests to (its
            ``api`` option's path); they go on to the upstream's ``/api/chat``.
        metrics: record Prometheus metrics (the ``metrics`` extra; docs/operations.md) and,
            unless ``metrics_port`` is set, serve them at ``/metrics`` (behind the API key).
        metrics_port: the port ``sse-bridge serve`` serves the metrics on instead, apart from
            the API (the app then serves no ``/metrics``); ``0`` (the default; ``None`` is
            accepted as ``0``): at ``/metrics`` on the main port.
        log_format: ``"text"`` (``key=value``) or ``"json"`` (one object per line).
    """
    options = SidecarOptions(
        upstream=upstream,
        dialect=dialect,
        convert=convert,
        keepalive=off_as_zero(keepalive),
        send_timeout=send_timeout,
        max_line_bytes=max_line_bytes,
        event_ids=event_ids,
        retry=retry,
        retry_jitter=retry_jitter,
        ndjson_types=ndjson_types,
        commit_after=off_as_zero(commit_after),
        commit_paths=commit_paths,
        connect_timeout=connect_timeout,
        read_timeout=off_as_zero(read_timeout),
        max_streams=max_streams,
        max_body=max_body,
        api_key=api_key,
        cors_origins=cors_origins,
        grace=grace,
        resume=resume,
        resume_path=resume_path,
        resume_grace=resume_grace,
        resume_ttl=resume_ttl,
        resume_max_readers=resume_max_readers,
        resume_owner=resume_owner,
        resume_owner_header=resume_owner_header,
        model=model,
        chat_path=chat_path,
        metrics=metrics,
        metrics_port=metrics_port or 0,
        log_format=log_format,
    )
    return build_sidecar(options)


def build_sidecar(options: SidecarOptions) -> SidecarApp:
    """The sidecar for options already checked (``create_proxy``, and each worker process)."""
    recorder = None
    if options.metrics:
        try:
            from prometheus_client import CollectorRegistry

            from sse_bridge._metrics.prometheus import BridgeMetrics
        except ImportError:
            raise ValueError(
                "metrics need prometheus-client: pip install 'sse-bridge[metrics]'"
            ) from None
        # A registry of this app's own: two apps in one process (tests, a reload) must not
        # register the same names twice.
        recorder = BridgeMetrics(CollectorRegistry())
    proxy = ProxyApp(options)
    if options.resume_owner_header is not None:
        # The header becomes the owner function the middleware takes (one of the two is set).
        owner = header_owner(options.resume_owner_header)
        options = replace(options, resume_owner=owner, resume_owner_header=None)
    bridge = SSEBridgeMiddleware.with_options(proxy, options)
    if recorder is not None:
        # The dialect's series exist at zero from the start, on the metrics port too (whose
        # worker files hold only the series a worker has made): a fresh dashboard has data.
        recorder.label(bridge.dialect_name)
        recorder.watch_store(bridge.store)
    app: ASGIApp = bridge
    resume_path = None if bridge.store is None else options.resume_path
    keyed_paths: tuple[str, ...] = () if resume_path is None else (resume_path,)
    if options.dialect == "ai-sdk":
        # The AI SDK's requests are the sidecar's to read: the middleware converts responses.
        if resume_path is not None:
            keyed_paths += (options.chat_path,)
        app = UIChat(
            app,
            model=options.model,
            max_body=options.max_body,
            resume_path=resume_path,
            path=options.chat_path,
            owner=options.resume_owner,
        )
    app = _Front(
        app,
        proxy,
        api_key=options.api_key,
        max_streams=options.max_streams,
        dialect=bridge.dialect_name,
        metrics=recorder,
        metrics_path=None if options.metrics_port else "/metrics",
        log_format=options.log_format,
        keyed_paths=keyed_paths,
    )
    if options.cors_origins:
        # Outside the API key check: preflights carry no credentials, and a 401 must carry the
        # CORS headers for the page to be able to read it.
        app = CORSMiddleware(
            app,
            allow_origins=list(options.cors_origins),
            allow_methods=CORS_ALLOW_METHODS,
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
        )
    return SidecarApp(app, proxy, grace=options.grace, store=bridge.store)
