"""One request through the proxy: the answer down, and what to do when the body or it fails.

It commits a 200 NDJSON response itself when the middleware in front converts the stream and
the upstream is silent before its headers (Ollama writes none until the model has loaded), and
reports a later failure as an Ollama-style ``{"error": ...}`` line. The request body going up
is ``body.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import httpx

from sse_bridge._core.asgi import send_json
from sse_bridge._core.context import NDJSON_TYPES, STREAM_KEY, Outcome, StreamContext
from sse_bridge._core.headers import RETRY_AFTER, header, media_type, passed_back
from sse_bridge._proxy.answer import Answer, error_message, read_some, reason
from sse_bridge._proxy.body import BodyTooLargeError, ClientGoneError, RequestBody
from sse_bridge._types import Receive, Scope, Send

logger = logging.getLogger("sse_bridge")

NDJSON = b"application/x-ndjson"
# How much of an error body is read to find its message once the stream was committed.
ERROR_BODY_BYTES = 64 * 1024
_RETRYABLE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# A stale pooled connection fails at once. A request that failed later may have reached the
# upstream (a model that crashed while loading): sending it again would repeat the work.
STALE_FAILURE_SECONDS = 0.5


class Upstream(Protocol):
    """What an exchange reads of the proxy it runs in (:class:`ProxyApp`)."""

    max_body: int
    commit_after: float
    commit_paths: frozenset[str]
    max_line_bytes: int
    exchanges: set[Exchange]

    def target(self, scope: Scope) -> bytes: ...

    def url(self, scope: Scope) -> httpx.URL: ...

    def request_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]: ...

    async def send(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], content: Any
    ) -> Answer: ...


class Exchange:
    """One request through the proxy."""

    __slots__ = (
        "at_line_start",
        "body_done",
        "cancel",
        "client_gone",
        "committed",
        "draining",
        "failure",
        "finished",
        "headers_ready",
        "ndjson",
        "proxy",
        "receive",
        "response",
        "scope",
        "send",
        "started",
        "stats",
    )

    def __init__(self, proxy: Upstream, scope: Scope, receive: Receive, send: Send) -> None:
        self.proxy = proxy
        self.scope = scope
        self.receive = receive
        self.send = send
        self.stats: StreamContext = scope.get(STREAM_KEY) or StreamContext()
        self.committed = False
        self.started = False
        # Made only where they are waited for: an event costs more memory per open stream
        # than most of what a stream holds (docs/benchmarks.md).
        self.body_done: anyio.Event | None = None
        self.headers_ready: anyio.Event | None = None
        self.response: Answer | None = None
        self.failure: Exception | None = None
        self.client_gone = False
        self.finished = False
        self.draining = False
        self.cancel = anyio.CancelScope()
        # The response so far is NDJSON, and whether its last line is complete: what a clean
        # error line needs to know.
        self.ndjson = False
        self.at_line_start = True

    async def run(self) -> None:
        if self.stats.watched:
            # The middleware in front watches the client: one watcher per stream, not two.
            self.stats.on_disconnect = self.gone
        else:
            self.body_done = anyio.Event()
        length = header(self.scope["headers"], b"content-length")
        declared = int(length) if length.isdigit() else None
        if declared is not None and declared > self.proxy.max_body:
            await self.too_large()
            return
        try:
            body = RequestBody(self.receive, self.proxy.max_body, self.body_done)
            content = await body.read(declared)
        except ClientGoneError:
            self.stats.settle(Outcome.CLIENT_DISCONNECTED)
            return
        except BodyTooLargeError:
            await self.too_large()
            return
        self.proxy.exchanges.add(self)
        error: Exception | None = None
        try:
            with self.cancel:
                try:
                    if self.stats.watched:
                        await self.exchange(content)
                    else:
                        async with anyio.create_task_group() as tasks:
                            tasks.start_soon(self.watch_disconnect)
                            try:
                                await self.exchange(content)
                            finally:
                                tasks.cancel_scope.cancel()
                except Exception as exc:
                    error = exc
                finally:
                    if self.response is not None:
                        with anyio.CancelScope(shield=True):
                            await self.response.aclose()
            if self.draining and not self.client_gone and not self.finished:
                await self.shut_down()
        finally:
            self.proxy.exchanges.discard(self)
        if error is not None:
            raise error

    def drain(self) -> None:
        """End this exchange now, telling the client the bridge is shutting down."""
        self.draining = True
        self.cancel.cancel()

    async def shut_down(self) -> None:
        message = "the bridge is shutting down; retry the request"
        self.stats.settle(Outcome.SHUTDOWN)
        if not self.started:
            await send_json(self.send, 503, {"error": message}, [RETRY_AFTER])
        elif self.ndjson and self.stats.converting and self.stats.status == 200:
            # The middleware in front ends the event stream with its dialect's own last
            # events for a shutdown (it reads the outcome): the body is just left unfinished.
            return
        elif self.ndjson:
            await self.error_line(message)
        # Any other response is left unfinished: the server drops it, and the client sees a
        # broken transfer rather than a complete one.

    async def too_large(self) -> None:
        self.stats.settle(Outcome.UPSTREAM_ERROR)
        self.stats.refused = "body_too_large"
        message = f"request body larger than {self.proxy.max_body} bytes (max_body)"
        await send_json(self.send, 413, {"error": message})

    async def watch_disconnect(self) -> None:
        # Only once the body is read: a second reader would steal it.
        assert self.body_done is not None
        await self.body_done.wait()
        while (await self.receive())["type"] != "http.disconnect":
            pass
        # The client has gone: closing the upstream request makes Ollama stop generating.
        self.gone()

    def gone(self) -> None:
        if self.finished:
            # After the last body message the server reports a disconnect by design.
            return
        self.client_gone = True
        self.stats.settle(Outcome.CLIENT_DISCONNECTED)
        self.cancel.cancel()

    async def exchange(self, content: bytes | AsyncIterator[bytes]) -> None:
        if self.may_commit(content):
            await self.open_or_commit(content)
        else:
            await self.open_upstream(content)
        if self.client_gone:
            return
        if self.failure is not None:
            await self.upstream_failed(self.failure)
        elif self.committed:
            await self.continue_committed()
        else:
            await self.relay()

    async def open_or_commit(self, content: bytes | AsyncIterator[bytes]) -> None:
        """Open the upstream in a task of its own, and commit here if it is silent too long."""
        ready = self.headers_ready = anyio.Event()
        # A plain asyncio task (the proxy's transport is asyncio's): an anyio task group cost a
        # tenth of a stream's setup here (py-spy of 1,000 streams opening at once).
        task = asyncio.get_running_loop().create_task(self.open_upstream(content))
        try:
            await self.commit_unless(ready)
        finally:
            task.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
                await task
        self.headers_ready = None

    async def commit_unless(self, ready: anyio.Event) -> None:
        with anyio.move_on_after(self.proxy.commit_after):
            await ready.wait()
        if not ready.is_set():
            await self.commit()
        await ready.wait()

    def may_commit(self, content: bytes | AsyncIterator[bytes]) -> bool:
        """Whether to answer early, while the upstream is silent: only for a client that asked
        for events from an endpoint that streams NDJSON, and never for "stream": false."""
        scope = self.scope
        if not (self.stats.converting and self.stats.client_accepts_events):
            return False
        if self.proxy.commit_after <= 0 or scope["path"] not in self.proxy.commit_paths:
            return False
        if isinstance(content, bytes):
            try:
                body = json.loads(content)
            except ValueError:
                return True
            return not (isinstance(body, dict) and body.get("stream") is False)
        return True

    async def open_upstream(self, content: bytes | AsyncIterator[bytes]) -> None:
        proxy = self.proxy
        started = time.monotonic()
        method = self.scope["method"]
        target = proxy.target(self.scope)
        headers = proxy.request_headers(self.scope)
        try:
            try:
                self.response = await proxy.send(method, target, headers, content)
            except _RETRYABLE as exc:
                quick = time.monotonic() - started < STALE_FAILURE_SECONDS
                if not isinstance(content, bytes) or not quick:
                    raise
                logger.info(
                    "sse_bridge: retrying %s once on a fresh connection: %r",
                    proxy.url(self.scope),
                    exc,
                )
                self.response = await proxy.send(method, target, headers, content)
        except (httpx.HTTPError, httpx.InvalidURL, BodyTooLargeError) as exc:
            # InvalidURL: a target uvicorn passed through (say "OPTIONS *")
            # that makes no upstream URL.
            self.failure = exc
        except ClientGoneError:
            self.gone()
        else:
            self.stats.upstream_headers = time.monotonic()
        finally:
            self.upstream_ready()

    def upstream_ready(self) -> None:
        """The upstream answered, failed, or cannot be asked: the body is no longer read."""
        for event in (self.body_done, self.headers_ready):
            if event is not None:
                event.set()

    async def commit(self) -> None:
        self.committed = True
        self.ndjson = True
        await self.start(200, [(b"content-type", NDJSON)])

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.stats.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, chunk: bytes, *, more: bool = True) -> None:
        if chunk:
            self.at_line_start = chunk.endswith(b"\n")
        self.finished = not more
        await self.send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def error_line(self, message: str) -> None:
        """End an NDJSON stream with an Ollama-style error line.

        A partial line before it is ended first: it then reaches the client as a line of its
        own (reported as not JSON when converted) instead of corrupting the error line.
        """
        self.stats.settle(Outcome.UPSTREAM_ERROR)
        line = json.dumps({"error": message}).encode() + b"\n"
        await self.body((b"" if self.at_line_start else b"\n") + line, more=False)

    async def upstream_failed(self, exc: Exception) -> None:
        if isinstance(exc, httpx.InvalidURL):
            self.stats.settle(Outcome.UPSTREAM_ERROR)
            await send_json(self.send, 400, {"error": f"no upstream URL for this target: {exc}"})
            return
        if isinstance(exc, BodyTooLargeError):
            if self.committed:
                await self.error_line(f"request body larger than {self.proxy.max_body} bytes")
            else:
                await self.too_large()
            return
        if isinstance(exc, httpx.TimeoutException):
            status, message = 504, f"upstream timed out: {reason(exc)}"
            self.stats.upstream_error = "timeout"
        else:
            status, message = 502, f"upstream unreachable: {reason(exc)}"
            self.stats.upstream_error = "unreachable"
        logger.warning("sse_bridge: %s (%s)", message, self.proxy.url(self.scope))
        if self.committed:
            await self.error_line(message)
        else:
            self.stats.settle(Outcome.UPSTREAM_ERROR)
            await send_json(self.send, status, {"error": message})

    async def relay(self) -> None:
        response = self.response
        assert response is not None
        if response.status_code >= 400:
            self.stats.settle(Outcome.UPSTREAM_ERROR)
            if response.status_code >= 500:
                self.stats.upstream_error = "status"
        headers, self.ndjson = passed_back(response.raw_headers, NDJSON_TYPES)
        await self.start(response.status_code, headers)
        await self.stream_body(response)

    async def stream_body(self, response: Answer) -> None:
        read = response.read
        try:
            while chunk := await read():
                await self.body(chunk)
        except httpx.HTTPError as exc:
            message = f"upstream connection lost mid-stream: {reason(exc)}"
            logger.warning("sse_bridge: %s (%s)", message, self.proxy.url(self.scope))
            self.stats.upstream_error = "broken"
            if self.ndjson:
                await self.error_line(message)
            else:
                # Another format has no error line: leave the response unfinished, so that
                # the server drops the connection and the client sees a broken transfer
                # rather than a complete one.
                self.stats.settle(Outcome.UPSTREAM_TRUNCATED)
            return
        await self.body(b"", more=False)
        self.stats.settle(Outcome.COMPLETED)

    async def continue_committed(self) -> None:
        """The client already has a 200 NDJSON stream: fit the upstream's answer into it."""
        response = self.response
        assert response is not None
        media = media_type(response.raw_headers)
        if response.status_code == 200 and media in NDJSON_TYPES:
            await self.stream_body(response)
            return
        answer = response.status_code == 200 and media == "application/json"
        limit = self.proxy.max_line_bytes if answer else ERROR_BODY_BYTES
        try:
            raw = await read_some(response, limit + 1)
        except httpx.HTTPError as exc:
            self.stats.upstream_error = "broken"
            await self.error_line(f"upstream connection lost: {reason(exc)}")
            return
        if answer:
            if len(raw) > limit:
                await self.error_line(f"upstream answered with JSON over {limit} bytes")
                return
            try:
                line = json.dumps(json.loads(raw), separators=(",", ":")).encode() + b"\n"
            except ValueError:
                await self.error_line("upstream answered with a JSON body that does not parse")
                return
            await self.body(line, more=False)
            return
        if response.status_code >= 400:
            if response.status_code >= 500:
                self.stats.upstream_error = "status"
            await self.error_line(error_message(response.status_code, raw))
        else:
            await self.error_line(
                f"upstream answered {response.status_code} {media or 'without a content type'}, "
                "which cannot continue an event stream"
            )
