"""The sidecar app: health, auth, limits and logging in front of the middleware and the proxy."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Literal

import httpx
from starlette.middleware.cors import CORSMiddleware

from ._codec import DEFAULT_MAX_LINE_BYTES
from ._dialects import DialectFunc
from ._http import STREAM_KEY, Outcome, StreamContext, header, send_json
from ._middleware import SSEBridgeMiddleware
from ._proxy import COMMIT_PATHS, ProxyApp
from ._resume import DEFAULT_TTL, ResumeStore
from ._types import ASGIApp, Receive, Scope, Send
from ._validate import check_count, check_seconds

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
        previous = self._chain_sigterm(asyncio.get_running_loop())
        try:
            await self.app(scope, receive, send)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

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
        self, app: ASGIApp, proxy: ProxyApp, *, api_key: str | None, max_streams: int, dialect: str
    ) -> None:
        self.app = app
        self.proxy = proxy
        self.api_key = api_key.encode() if api_key else None
        self.max_streams = max_streams
        self.dialect = dialect
        self.active = 0

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
        if self.api_key is not None and not self.authorized(scope):
            await send_json(
                send,
                401,
                {"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                [(b"www-authenticate", b'Bearer realm="sse-bridge"')],
            )
            return
        if self.active >= self.max_streams:
            await send_json(
                send,
                503,
                {"error": f"too many concurrent streams (max {self.max_streams}); retry later"},
                [(b"retry-after", b"1")],
            )
            return
        # The middleware behind fills in the status and the bytes it sends. The server's scope
        # is this request's own, and the outermost layer may mark it: a copy per open stream
        # costs half a KiB (docs/benchmarks.md).
        stats = scope[STREAM_KEY] = StreamContext()
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.log(scope, stats)

    def authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        scheme, _, token = header(scope["headers"], b"authorization").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("latin-1"), self.api_key
        )

    async def ready(self, send: Send) -> None:
        try:
            response = await self.proxy.client.get(self.proxy.upstream, timeout=2.0)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            await send_json(send, 503, {"status": "unavailable", "error": reason})
            return
        if response.status_code >= 500:
            error = f"upstream answered {response.status_code}"
            await send_json(send, 503, {"status": "unavailable", "error": error})
            return
        await send_json(send, 200, {"status": "ready"})

    def log(self, scope: Scope, stats: StreamContext) -> None:
        now = time.monotonic()
        if stats.outcome is None:
            stats.settle(Outcome.COMPLETED if stats.status < 400 else Outcome.UPSTREAM_ERROR)
        first = (
            "-"
            if stats.first_event is None
            else f"{(stats.first_event - stats.started) * 1000:.1f}"
        )
        access_logger.info(
            "stream method=%s path=%s status=%d dialect=%s events=%d bytes=%d "
            "ttfe_ms=%s duration_ms=%.1f outcome=%s%s",
            scope["method"],
            scope["path"],
            stats.status,
            self.dialect,
            stats.events,
            stats.bytes,
            first,
            (now - stats.started) * 1000,
            stats.outcome.value if stats.outcome else "-",
            "" if stats.stream_id is None else f" stream_id={stats.stream_id}",
        )


def create_proxy(
    *,
    upstream: str,
    dialect: str | DialectFunc = "raw",
    convert: Literal["negotiate", "always"] = "negotiate",
    keepalive: float | None = 15.0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    event_ids: bool = False,
    commit_after: float | None = 1.0,
    commit_paths: Sequence[str] = COMMIT_PATHS,
    connect_timeout: float = 5.0,
    read_timeout: float | None = None,
    max_streams: int = 1000,
    max_body: int = 10 * 1024 * 1024,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    grace: float = 10.0,
    resume: str | ResumeStore | None = None,
    resume_path: str = "/streams",
    resume_grace: float = 30.0,
    resume_ttl: float = DEFAULT_TTL,
) -> SidecarApp:
    """Build the sidecar: a reverse proxy to ``upstream`` behind :class:`SSEBridgeMiddleware`.

    Args:
        upstream: the base URL of the NDJSON server, e.g. ``http://127.0.0.1:11434``; the only
            host the proxy ever sends requests to.
        dialect, convert, keepalive, max_line_bytes, event_ids: as for the middleware.
        commit_after: seconds to wait for the upstream's headers, when the client asked for an
            event stream, before committing a 200 stream and sending keepalives (Ollama writes
            no headers while a model loads). ``0`` or ``None`` never commits early.
        commit_paths: the request paths that may be committed early: endpoints that answer
            with NDJSON (by default Ollama's ``/api/chat`` and ``/api/generate``). A request
            whose JSON body says ``"stream": false`` is never committed early.
        connect_timeout: seconds to connect to the upstream.
        read_timeout: seconds the upstream may be silent; ``None`` (the default) waits forever,
            since keepalives cover silence towards the client.
        max_streams: concurrent requests allowed; more get 503. The connection pool is sized
            to match.
        max_body: the largest request body accepted; larger ones get 413.
        api_key: if set, every request but ``/healthz`` and ``/readyz`` needs
            ``Authorization: Bearer <key>``; the header is never forwarded upstream.
        cors_origins: origins allowed to call the bridge from a browser; none by default.
        grace: seconds open streams get to finish after SIGTERM before they are ended.
        resume, resume_path, resume_grace, resume_ttl: resumable streams, as for the
            middleware (docs/resume.md); the API key guards the resume endpoints too.
    """
    check_count("max_streams", max_streams, 1, "concurrent requests")
    check_count("max_body", max_body, 1, "request body bytes")
    check_seconds("connect_timeout", connect_timeout, "to connect to the upstream")
    if read_timeout is not None:
        check_seconds("read_timeout", read_timeout, "None waits forever")
    if commit_after is not None:
        check_seconds("commit_after", commit_after, "0 or None never commits early")
    check_seconds("grace", grace, "after SIGTERM")
    if isinstance(cors_origins, str):
        raise ValueError("cors_origins must be a list of origins, not one string")
    if isinstance(commit_paths, str):
        raise ValueError("commit_paths must be a list of paths, not one string")
    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty: give a key, or None for no authentication")
    proxy = ProxyApp(
        upstream=upstream,
        commit_after=commit_after,
        commit_paths=commit_paths,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_body=max_body,
        max_answer_bytes=max_line_bytes,
        max_connections=max_streams,
        strip_authorization=api_key is not None,
    )
    bridge = SSEBridgeMiddleware(
        proxy,
        dialect=dialect,
        convert=convert,
        keepalive=keepalive,
        max_line_bytes=max_line_bytes,
        event_ids=event_ids,
        resume=resume,
        resume_path=resume_path,
        resume_grace=resume_grace,
        resume_ttl=resume_ttl,
    )
    app: ASGIApp = bridge
    name = dialect if isinstance(dialect, str) else getattr(dialect, "__name__", "custom")
    app = _Front(app, proxy, api_key=api_key, max_streams=max_streams, dialect=name)
    if cors_origins:
        # Outside the API key check: preflights carry no credentials, and a 401 must carry the
        # CORS headers for the page to be able to read it.
        app = CORSMiddleware(
            app,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            # "*" does not cover requests with credentials; the stream id is named as well.
            expose_headers=["*", "X-Stream-Id"],
        )
    return SidecarApp(app, proxy, grace=grace, store=bridge.store)
