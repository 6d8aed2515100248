"""The request body going up: read from the client as the upstream takes it, within ``max_body``.

A small body with a known length is read whole first, so that a request that failed on a stale
pooled connection can be sent once more; any other body streams through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from sse_bridge._types import Receive

# A body this small with a known length is read before forwarding, so that a request that failed
# on a stale pooled connection can be sent once more (uvicorn and httpx both expire idle
# connections at 5 s, and a reuse at that moment fails before any response;
# tests/test_proxy.py::test_a_stale_pooled_connection_is_retried_once_for_small_bodies).
REPLAYABLE_BYTES = 64 * 1024


class BodyTooLargeError(Exception):
    pass


class ClientGoneError(Exception):
    pass


class RequestBody:
    """One request's body; ``done`` (if given) is set once its last message is read."""

    __slots__ = ("done", "max_body", "receive")

    def __init__(self, receive: Receive, max_body: int, done: anyio.Event | None) -> None:
        self.receive = receive
        self.max_body = max_body
        self.done = done

    async def read(self, declared: int | None) -> bytes | AsyncIterator[bytes]:
        """The body as bytes (read whole) or as an iterator of chunks (streamed up)."""
        first = await self.receive()
        if first["type"] == "http.disconnect":
            raise ClientGoneError
        body = first.get("body", b"")
        if not first.get("more_body", False):
            if self.done is not None:
                self.done.set()
            return self.check_size(body, 0)
        if declared is not None and declared <= REPLAYABLE_BYTES:
            chunks = [body]
            async for chunk in self.rest(len(body)):
                chunks.append(chunk)
            return b"".join(chunks)
        return self.streamed(body)

    def check_size(self, chunk: bytes, seen: int) -> bytes:
        if seen + len(chunk) > self.max_body:
            raise BodyTooLargeError
        return chunk

    async def rest(self, seen: int) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError
            chunk = self.check_size(message.get("body", b""), seen)
            seen += len(chunk)
            yield chunk
            if not message.get("more_body", False):
                if self.done is not None:
                    self.done.set()
                return

    async def streamed(self, first: bytes) -> AsyncIterator[bytes]:
        yield self.check_size(first, 0)
        async for chunk in self.rest(len(first)):
            yield chunk
