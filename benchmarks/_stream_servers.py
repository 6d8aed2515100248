"""The servers ``bench_stream.py`` starts, one role per process.

Run as ``python benchmarks/_stream_servers.py ROLE [--upstream URL]``. The process raises its
open-file limit to the hard limit, binds a free loopback port, prints ``port N`` on stdout, then
serves with uvicorn (uvloop, httptools, log level warning) until SIGTERM or SIGINT. Roles:

- ``upstream``: the NDJSON source. ``GET /burst?n=N`` writes N Ollama generate chunks as fast as
  possible, one ``http.response.body`` per line; ``GET /idle`` writes one chunk and then stays
  silent until the client leaves; `POST /api/generate` is a minimal generator paced on an
  absolute schedule (see :func:`generate`); everything else is the fake Ollama.
- ``inprocess``: the same app three times: as is, under ``/raw`` behind
  ``SSEBridgeMiddleware(dialect="raw")`` and under ``/ollama`` behind ``dialect="ollama"``.
- ``sidecar-raw`` and ``sidecar-ollama``: ``sse_bridge.create_proxy(upstream=URL, dialect=...)``,
  with ``max_streams`` raised so that its limit does not cap the capacity sweep.
- ``tutorial``: the baseline proxy most tutorials write (see :func:`tutorial_app`).
- ``sse-starlette``: the same proxy written with sse-starlette (see :func:`sse_starlette_app`).

The sidecar roles use only the public API, so that this file works whatever the sidecar's
internals are.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import parse_qs

import httpx
import uvicorn
from _stream_client import SIDECAR_MAX_STREAMS, raise_fd_limit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from sse_bridge import SSEBridgeMiddleware, create_proxy
from sse_bridge._types import ASGIApp, Receive, Scope, Send
from sse_bridge.testing import FakeOllama, FakeOllamaConfig

ROLES = ("upstream", "inprocess", "sidecar-raw", "sidecar-ollama", "tutorial", "sse-starlette")
NDJSON = b"application/x-ndjson"
_WORDS = (
    " The",
    " answer",
    " streams",
    " token",
    " by",
    " token,",
    " as",
    " a",
    " model",
    " would",
)


def _token_lines() -> tuple[bytes, ...]:
    """64 distinct generate chunks of about 90 bytes, shaped exactly like Ollama's."""
    lines = []
    for i in range(64):
        stamp = f"2025-06-01T12:00:00.{123456789 + 4567 * i:09d}Z"
        word = _WORDS[i % len(_WORDS)]
        chunk = f'{{"model":"llama3.2","created_at":"{stamp}","response":"{word}","done":false}}'
        lines.append(chunk.encode() + b"\n")
    return tuple(lines)


TOKEN_LINES = _token_lines()
DONE_LINE = (
    b'{"model":"llama3.2","created_at":"2025-06-01T12:00:01.987654321Z","response":"",'
    b'"done":true,"done_reason":"stop","total_duration":1000000000,"load_duration":1000000,'
    b'"prompt_eval_count":10,"prompt_eval_duration":2000000,"eval_count":100,'
    b'"eval_duration":900000000}\n'
)


async def _drain_request(receive: Receive) -> bool:
    """Read the request body; False if the client left first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        if not message.get("more_body", False):
            return True


async def _start_ndjson(send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", NDJSON)]}
    )


async def burst(scope: Scope, receive: Receive, send: Send) -> None:
    """``n`` lines (n - 1 tokens and a done chunk) as fast as uvicorn takes them."""
    query = parse_qs(scope["query_string"].decode())
    n = max(1, int(query.get("n", ["1000"])[0]))
    if not await _drain_request(receive):
        return
    await _start_ndjson(send)
    lines = TOKEN_LINES
    for i in range(n - 1):
        await send({"type": "http.response.body", "body": lines[i % 64], "more_body": True})
    await send({"type": "http.response.body", "body": DONE_LINE, "more_body": False})


async def idle(scope: Scope, receive: Receive, send: Send) -> None:
    """One token chunk, then silence until the client disconnects."""
    if not await _drain_request(receive):
        return
    await _start_ndjson(send)
    await send({"type": "http.response.body", "body": TOKEN_LINES[0], "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


async def healthz(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


class Router:
    """Dispatch on the first path segment: exact paths first, then prefixes (stripped)."""

    def __init__(
        self,
        *,
        paths: Mapping[str, ASGIApp],
        prefixes: Mapping[str, ASGIApp] | None = None,
        default: ASGIApp,
    ) -> None:
        self.paths = dict(paths)
        self.prefixes = dict(prefixes or {})
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path: str = scope["path"]
        if path in self.paths:
            await self.paths[path](scope, receive, send)
            return
        for prefix, app in self.prefixes.items():
            if path.startswith(prefix + "/"):
                rest = path[len(prefix) :]
                scope = {**scope, "path": rest, "raw_path": rest.encode()}
                await app(scope, receive, send)
                return
        await self.default(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def generate(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /api/generate``, shaped like Ollama's, paced on an absolute schedule.

    The body's ``"fake"`` object sets ``tokens_per_second`` (0: as fast as possible) and
    ``num_tokens``, as for the fake Ollama. Token k is sent at start + k / rate, so the schedule
    does not drift and an arrival's lateness is the relays' alone. It is this small on purpose:
    at 1,000 and more paced streams the fake Ollama (50-90 us per token) would fill the
    upstream's CPU before any proxy fills its own.
    """
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    fake = json.loads(b"".join(chunks) or b"{}").get("fake", {})
    rate = float(fake.get("tokens_per_second", 0))
    tokens = int(fake.get("num_tokens", 10))
    await _start_ndjson(send)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(tokens):
        if rate:
            delay = start + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        line = TOKEN_LINES[index % 64]
        await send({"type": "http.response.body", "body": line, "more_body": True})
    await send({"type": "http.response.body", "body": DONE_LINE, "more_body": False})


def upstream_app() -> Router:
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=0))
    paths = {"/burst": burst, "/idle": idle, "/healthz": healthz, "/api/generate": generate}
    return Router(paths=paths, default=fake)


def inprocess_app() -> Router:
    plain = upstream_app()
    return Router(
        paths={"/healthz": healthz},
        prefixes={
            "/raw": SSEBridgeMiddleware(plain, dialect="raw"),
            "/ollama": SSEBridgeMiddleware(plain, dialect="ollama"),
        },
        default=plain,
    )


def _shared_client(
    upstream: str,
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, httpx.AsyncClient]]]:
    """The baselines' lifespan: one shared client, its pool raised and its timeout off."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=upstream, timeout=None, limits=limits) as client:
            yield {"client": client}

    return lifespan


def tutorial_app(upstream: str) -> Starlette:
    """The baseline: the httpx + ``StreamingResponse`` proxy of countless tutorials.

    Written the usual way on purpose (``aiter_lines()``, an f-string per line, one body message per
    line), with one deviation that keeps the comparison about the code path rather than about a
    default: the shared client's pool is raised from httpx's 100 connections, which would otherwise
    queue every stream past the hundredth, and its 5 s timeout is off, as the sidecar's is.
    """

    lifespan = _shared_client(upstream)

    async def proxy(request: Request) -> StreamingResponse:
        client: httpx.AsyncClient = request.state.client
        body = await request.body()
        headers = {"content-type": request.headers.get("content-type", "application/json")}

        async def events() -> AsyncIterator[str]:
            async with client.stream(
                request.method,
                request.url.path,
                params=request.query_params,
                content=body,
                headers=headers,
            ) as response:
                async for line in response.aiter_lines():
                    if line:
                        yield f"data: {line}\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return Starlette(
        routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])], lifespan=lifespan
    )


def sse_starlette_app(upstream: str) -> Starlette:
    """The same proxy as users write it with sse-starlette's ``EventSourceResponse``.

    ``client.stream`` and ``aiter_lines()`` as in :func:`tutorial_app`, one ``{"data": line}``
    per line, sse-starlette's defaults otherwise (a ping every 15 s, CRLF line ends). The shared
    client gets the same pool and timeout as the tutorial's, for the same reason.
    """
    # Imported here: sse-starlette is the optional "bench" extra, needed by this role only.
    from sse_starlette import EventSourceResponse

    lifespan = _shared_client(upstream)

    async def proxy(request: Request) -> EventSourceResponse:
        client: httpx.AsyncClient = request.state.client
        body = await request.body()
        headers = {"content-type": request.headers.get("content-type", "application/json")}

        async def events() -> AsyncIterator[dict[str, str]]:
            async with client.stream(
                request.method,
                request.url.path,
                params=request.query_params,
                content=body,
                headers=headers,
            ) as response:
                async for line in response.aiter_lines():
                    if line:
                        yield {"data": line}

        return EventSourceResponse(events())

    return Starlette(
        routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])], lifespan=lifespan
    )


def build(role: str, upstream: str | None) -> ASGIApp:
    if role == "upstream":
        return upstream_app()
    if role == "inprocess":
        return inprocess_app()
    if upstream is None:
        raise SystemExit(f"the {role} role needs --upstream http://127.0.0.1:PORT")
    if role == "sidecar-raw":
        return create_proxy(upstream=upstream, dialect="raw", max_streams=SIDECAR_MAX_STREAMS)
    if role == "sidecar-ollama":
        return create_proxy(upstream=upstream, dialect="ollama", max_streams=SIDECAR_MAX_STREAMS)
    if role == "sse-starlette":
        return sse_starlette_app(upstream)
    return tutorial_app(upstream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--upstream", help="base URL the proxy roles forward to")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the server here")
    args = parser.parse_args()
    raise_fd_limit()
    # The sidecar logs one INFO line per stream; a benchmark wants none of them.
    logging.getLogger("sse_bridge").setLevel(logging.WARNING)
    app = build(args.role, args.upstream)
    # Bound here rather than by uvicorn, so that the parent learns the port from a free one (0).
    # Not with sse_bridge._testing.loopback: --before runs this file with an earlier sse_bridge.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        # The time-to-first-event test opens 1,000 connections at once.
        backlog=4096,
    )
    server = uvicorn.Server(config)
    if args.profile:
        # uvicorn re-raises the signal that stopped it once it has shut down; with no-op
        # handlers installed first, that returns here and the profile gets written.
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, lambda signum, frame: None)
        profiler = cProfile.Profile()
        profiler.runcall(server.run, sockets=[sock])
        profiler.dump_stats(args.profile)
    else:
        server.run(sockets=[sock])


if __name__ == "__main__":
    main()
