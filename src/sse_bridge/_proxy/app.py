"""The reverse proxy: one request to the one configured upstream, streamed both ways.

It knows nothing of SSE. It answers with whatever the upstream answers; when the middleware in
front will turn NDJSON into an event stream (its ``StreamContext`` says so) and the upstream is
silent before its headers (Ollama writes none until the model has loaded), it commits a 200
NDJSON response itself after ``commit_after`` seconds, so that the client gets headers and
keepalives, and reports a later failure as an Ollama-style ``{"error": ...}`` line. It runs on
asyncio (uvicorn), which its upstream transport is written for. This module holds the app and
its client; one request through it is an :class:`Exchange` (``exchange.py``), and the upstream's
answer an :class:`Answer` (``answer.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from sse_bridge._core.asgi import send_json
from sse_bridge._core.context import STREAM_KEY, Outcome, StreamContext
from sse_bridge._core.headers import CONNECTION_CLOSE, upstream_request_headers
from sse_bridge._proxy.answer import Answer, HttpxAnswer
from sse_bridge._proxy.exchange import Exchange
from sse_bridge._proxy.framing import framing_error
from sse_bridge._proxy.target import PathEscapeError, confine, parse_upstream
from sse_bridge._types import Receive, Scope, Send

try:
    from sse_bridge._proxy.upstream.transport import HttptoolsTransport
except ImportError:  # httptools is in the speed extra
    HttptoolsTransport = None  # type: ignore[assignment,misc]

logger = logging.getLogger("sse_bridge")


class ProxySettings(Protocol):
    """The options the proxy reads (the sidecar's options object has them all)."""

    @property
    def upstream(self) -> str: ...
    @property
    def commit_after(self) -> float: ...
    @property
    def commit_paths(self) -> Sequence[str]: ...
    @property
    def max_body(self) -> int: ...
    @property
    def max_line_bytes(self) -> int: ...
    @property
    def api_key(self) -> str | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def max_streams(self) -> int: ...


def _fast_transport(upstream: httpx.URL, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    if upstream.scheme != "http" or HttptoolsTransport is None:
        return None
    return HttptoolsTransport(limits=limits)


class ProxyApp:
    """Forward HTTP requests to ``upstream``; see :func:`sse_bridge.create_proxy` for options."""

    def __init__(self, options: ProxySettings) -> None:
        self.upstream = parse_upstream(options.upstream)
        self.base_path = self.upstream.raw_path.rstrip(b"/")
        self.commit_after = options.commit_after
        self.commit_paths = frozenset(options.commit_paths)
        self.max_body = options.max_body
        # A JSON answer to a committed stream becomes one NDJSON line: no longer than the
        # middleware in front accepts.
        self.max_line_bytes = options.max_line_bytes
        self.strip_authorization = options.api_key is not None
        connect_timeout = options.connect_timeout
        read_timeout = options.read_timeout or None  # 0: wait forever
        max_connections = options.max_streams
        self._client_options: dict[str, Any] = {
            "timeout": httpx.Timeout(connect_timeout, read=read_timeout, write=read_timeout),
            # Never fewer connections than allowed streams: httpx's default pool of 100 would
            # silently cap concurrency. Expire idle ones before uvicorn's or Ollama's 5 s.
            "limits": httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(max_connections, 100),
                keepalive_expiry=4.0,
            ),
            "follow_redirects": False,
            "trust_env": False,
        }
        # The fast transport where it applies (a plain-http upstream, httptools installed),
        # httpx's own otherwise; either raises httpx's exceptions.
        self.transport: httpx.AsyncBaseTransport | None = _fast_transport(
            self.upstream, self._client_options["limits"]
        )
        self.timeouts: dict[str, float | None] = {
            "connect": connect_timeout,
            "read": read_timeout,
            "write": read_timeout,
            "pool": connect_timeout,
        }
        self._client: httpx.AsyncClient | None = None
        self.exchanges: set[Exchange] = set()

    def drain(self) -> None:
        """End every open exchange now (at the end of a graceful shutdown)."""
        for exchange in list(self.exchanges):
            exchange.drain()

    @property
    def client(self) -> httpx.AsyncClient:
        return self.open()

    def open(self) -> httpx.AsyncClient:
        """The pooled client, one per process; made on first use if there was no lifespan."""
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self.transport, **self._client_options)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def url(self, scope: Scope) -> httpx.URL:
        # Built from the configured upstream and the request's path only: an absolute-form
        # target, a //host path or a spoofed Host header cannot change where it goes.
        return self.upstream.copy_with(raw_path=self.target(scope))

    def target(self, scope: Scope) -> bytes:
        """The request target upstream: the upstream's base path, the request's path (its dot
        segments removed: PathEscapeError if it would leave the base) and query."""
        path = confine(scope.get("raw_path") or quote(scope["path"]).encode())
        query = scope.get("query_string", b"")
        return self.base_path + path + (b"?" + query if query else b"")

    async def refusal(self, scope: Scope, send: Send) -> bool:
        """Refuse (400) a request whose framing is ambiguous or whose path leaves the base,
        before anything goes upstream; True if it was refused."""
        error = framing_error(scope["headers"])
        if error is None:
            try:
                self.target(scope)
            except PathEscapeError as exc:
                error = str(exc)
        if error is None:
            return False
        stats: StreamContext = scope.get(STREAM_KEY) or StreamContext()
        stats.settle(Outcome.UPSTREAM_ERROR)
        stats.refused = "bad_request"
        stats.status = 400
        # RFC 9112 6.3: after a request whose framing cannot be trusted, close the connection,
        # so that nothing the client sent after it is read as a request of its own.
        await send_json(send, 400, {"error": error}, [CONNECTION_CLOSE])
        return True

    async def send(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], content: Any
    ) -> Answer:
        """Send one request upstream; return once its answer's headers are in."""
        transport = self.transport
        if HttptoolsTransport is not None and isinstance(transport, HttptoolsTransport):
            if not target.startswith(b"/"):
                self.upstream.copy_with(raw_path=target)  # raises httpx's InvalidURL
            upstream = self.upstream
            return await transport.open(
                upstream.host, upstream.port or 80, method, target, headers, content, self.timeouts
            )
        client = self.client
        request = client.build_request(
            method, self.upstream.copy_with(raw_path=target), headers=headers, content=content
        )
        return HttpxAnswer(await client.send(request, stream=True))

    def request_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        return upstream_request_headers(
            scope["headers"],
            scope.get("client"),
            scope.get("scheme", "http"),
            strip_authorization=self.strip_authorization,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            if not await self.refusal(scope, send):
                await Exchange(self, scope, receive, send).run()
        else:
            raise RuntimeError(f"sse_bridge's proxy does not serve {scope['type']!r} connections")

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Build the client now rather than on the first request, which is then faster.
                self.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
