"""The resume and stop endpoints of resumable streams, and resuming through ``Last-Event-ID``.

``GET <path>/<stream id>`` replays the events after the reader's position and follows the live
generation to its end; ``DELETE <path>/<stream id>`` stops the generation. With ``event_ids`` on,
a request the middleware would convert that carries ``Last-Event-ID: <stream id>:<n>`` of a kept
stream is answered as a resume, so EventSource's own reconnect does not start a second
generation. docs/resume.md has the protocol.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Protocol

import anyio

from sse_bridge._core.asgi import send_json
from sse_bridge._core.codec import encode_comment
from sse_bridge._core.context import ABORT_EXTENSION, STREAM_KEY, Outcome, StreamContext
from sse_bridge._core.headers import RETRY_AFTER, STREAM_ID_HEADER, event_stream_headers, header
from sse_bridge._dialects.translator import Translator
from sse_bridge._resume.binding import Binding, Owner
from sse_bridge._resume.store import (
    STREAM_ID,
    BadPositionError,
    Follower,
    OwnerLostError,
    ReaderStalledError,
    Recording,
    ResumeError,
    ResumeStore,
    StoreUnavailableError,
    TooManyReadersError,
    UnknownStreamError,
    parse_position,
    stream_tag,
)
from sse_bridge._types import Message, Receive, Scope, Send

logger = logging.getLogger("sse_bridge")

PING = encode_comment("ping")
OWNER_LOST = (
    "the bridge instance running this stream stopped before it ended; the answer is incomplete"
)
# Seconds between attempts to open a store that could not be reached, for new streams.
OPEN_RETRY = 5.0
# How long a follower waits for events when there are no keepalives to send meanwhile.
IDLE_WAIT = 30.0


def with_stream_id(prefix: bytes, seq: int, event: bytes) -> bytes:
    """``event`` with the id ``<stream id>:<seq>`` (``prefix`` is ``b"id: <stream id>:"``).

    An id the dialect gave the event is replaced: on a resumable stream, Last-Event-ID must
    name the stream and the event's number, or a reconnect could not resume it.
    """
    if event.startswith(b"id:"):
        event = event.partition(b"\n")[2]
    return b"%b%d\n%b" % (prefix, seq, event)


class EndpointBridge(Protocol):
    """What the endpoints read of the middleware that mounts them: how its streams are written."""

    event_ids: bool
    keepalive: float
    send_timeout: float
    new_translator: Callable[[], Translator]

    @property
    def retry(self) -> bytes | None:
        """The encoded ``retry:`` field for one stream, or None."""


class ResumeEndpoints:
    """What the middleware answers itself when resume is on."""

    def __init__(
        self,
        bridge: EndpointBridge,
        store: ResumeStore,
        path: str,
        *,
        max_readers: int,
        owner: Owner | None = None,
    ) -> None:
        self.bridge = bridge
        self.store = store
        self.binding = Binding(owner)
        self.prefix = path.rstrip("/") + "/"
        # Readers of each stream in this process: a bound, or one id could take every socket.
        self.max_readers = max_readers
        self.readers: dict[str, int] = {}
        self.opened = False
        self.opening: anyio.Lock | None = None
        self.unreachable = False
        self.retry_at = -math.inf

    def lifespan(self, receive: Receive, send: Send) -> Receive:
        """The app's lifespan ``receive``: the store connects at startup, closes at shutdown."""

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.open()
                except ResumeError as exc:
                    # The server exits with this message (uvicorn: "Application startup failed").
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    raise
            elif message["type"] == "lifespan.shutdown":
                await self.store.aclose()
            return message

        return lifespan_receive

    async def open(self) -> None:
        """Connect the store once (at startup, or at first use under a server without lifespan)."""
        if self.opened:
            return
        if self.opening is None:
            self.opening = anyio.Lock()
        async with self.opening:
            if not self.opened:
                await self.store.open()
                self.opened = True

    async def record(self, stop: Callable[[], None], scope: Scope) -> Recording | None:
        """A new resumable stream, or None (and the stream goes on, not resumable) if the
        store cannot be reached."""
        if not self.opened and time.monotonic() < self.retry_at:
            # The store failed to open a moment ago: new streams do not each wait for another
            # failed connect.
            return None
        try:
            await self.open()
        except ResumeError as exc:
            self.retry_at = time.monotonic() + OPEN_RETRY
            if not self.unreachable:
                # Once: a store that opens stays open, so there is no second outage to tell.
                self.unreachable = True
                logger.warning("sse_bridge: streams are not resumable for now: %s", exc)
            return None
        bound = self.binding.of(scope)
        # Without an owner, as a store of the protocol's first version takes it.
        return self.store.record(stop) if bound is None else self.store.record(stop, bound)

    async def answer(self, scope: Scope, receive: Receive, send: Send, wanted: bool) -> bool:
        """Serve the request if it is ours; False lets the app have it."""
        path: str = scope["path"]
        if path.startswith(self.prefix):
            await self.endpoint(scope, receive, send, path[len(self.prefix) :])
            return True
        if not (wanted and self.bridge.event_ids):
            return False
        value = header(scope["headers"], b"last-event-id")
        if ":" not in value:
            return False
        try:
            stream_id, after = parse_position(value, None)
        except BadPositionError:
            return False
        if stream_id is None or not STREAM_ID.fullmatch(stream_id):
            return False
        with self.reading(stream_id) as full:
            if full is not None:
                await _refuse(send, _context(scope), full)
                return True
            try:
                await self.binding.check(self.store, scope, stream_id)
                follower = await self.find(stream_id, after)
            except ResumeError:
                # Not a stream kept here (any more), or the store cannot say: the request is a
                # new one, and the client gets an answer rather than an error.
                return False
            await self.serve(scope, receive, send, stream_id, after, follower)
        return True

    @contextlib.contextmanager
    def reading(self, stream_id: str) -> Iterator[TooManyReadersError | None]:
        """A reader's place among the stream's readers, or the error that there is none."""
        readers = self.readers
        count = readers.get(stream_id, 0)
        if count >= self.max_readers:
            yield TooManyReadersError(self.max_readers)
            return
        readers[stream_id] = count + 1
        try:
            yield None
        finally:
            if readers[stream_id] == 1:
                del readers[stream_id]
            else:
                readers[stream_id] -= 1

    async def endpoint(self, scope: Scope, receive: Receive, send: Send, stream_id: str) -> None:
        context = _context(scope)
        method = scope["method"]
        try:
            if method not in ("GET", "DELETE"):
                context.status = 405
                await send_json(
                    send,
                    405,
                    {"error": f"{method} is not allowed here: GET resumes, DELETE stops"},
                    [(b"allow", b"GET, DELETE")],
                )
                return
            if not STREAM_ID.fullmatch(stream_id):
                raise UnknownStreamError(stream_id)
            context.stream_id = stream_id
            await self.open()
            await self.binding.check(self.store, scope, stream_id)
            if method == "DELETE":
                await self.store.stop(stream_id)
                await _no_content(send, context, Outcome.STOPPED)
                return
            after = self.position(scope, stream_id)
        except ResumeError as exc:
            await _refuse(send, context, exc)
            return
        with self.reading(stream_id) as full:
            try:
                if full is not None:
                    raise full
                follower = await self.find(stream_id, after)
            except ResumeError as exc:
                await _refuse(send, context, exc)
                return
            await self.serve(scope, receive, send, stream_id, after, follower)

    def position(self, scope: Scope, stream_id: str) -> int:
        """The reader's last event: the Last-Event-ID header, else ?last_event_id=, else 0."""
        value = header(scope["headers"], b"last-event-id")
        if not value:
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            value = query.get("last_event_id", [""])[0]
        return parse_position(value, stream_id)[1]

    async def find(self, stream_id: str, after: int) -> Follower | None:
        """A follower from ``after``, or None if the stream ended and nothing is left."""
        if await self.store.finished_at(stream_id, after):
            return None
        return await self.store.follow(stream_id, after)

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        stream_id: str,
        after: int,
        follower: Follower | None,
    ) -> None:
        context = _context(scope)
        context.stream_id = stream_id
        if follower is None:
            # Ended, and the reader has every event: 204 also stops EventSource reconnecting.
            await _no_content(send, context, Outcome.COMPLETED)
            return
        # The dialect's own headers too: its clients may check them on a resumed stream.
        own = [*self.bridge.new_translator().headers, (STREAM_ID_HEADER, stream_id.encode())]
        headers = event_stream_headers(own, scope.get("http_version"))
        reader = _Reader(self, send, stream_id, after, follower, context)
        extension = (scope.get("extensions") or {}).get(ABORT_EXTENSION) or {}
        reader.abort = extension.get("abort", reader.abort)
        try:
            context.status = 200
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async with anyio.create_task_group() as group:
                group.start_soon(_until_disconnect, receive, group.cancel_scope, context)
                with contextlib.suppress(ReaderStalledError):
                    await reader.run()
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await follower.aclose()


class _Reader:
    """One resumed stream: replay, follow, keep alive, end as the original ends."""

    def __init__(
        self,
        endpoints: ResumeEndpoints,
        send: Send,
        stream_id: str,
        after: int,
        follower: Follower,
        context: StreamContext,
    ) -> None:
        self.endpoints = endpoints
        self.send = send
        self.stream_id = stream_id
        self.prefix = b"id: " + stream_id.encode() + b":"
        self.position = after
        self.follower = follower
        self.context = context
        self.last_write = time.monotonic()
        self.abort: Callable[[], object] = lambda: None  # the server's, if it offers one

    async def run(self) -> None:
        bridge = self.endpoints.bridge
        keepalive = bridge.keepalive
        retry = bridge.retry
        if retry is not None:
            await self.write(retry, more=True)
        # The position at which this reader last ended the stream for its dead owner.
        orphaned: int | None = None
        while True:
            wait = self.last_write + keepalive - time.monotonic() if keepalive else IDLE_WAIT
            try:
                batch = await self.follower.next(max(wait, 0.0))
            except OwnerLostError:
                if orphaned != self.position:
                    # End the stream for every reader, the same way, with what was kept (again,
                    # if this reader was behind the top of the stream the first time).
                    orphaned = self.position
                    events = bridge.new_translator().fail(OWNER_LOST)
                    try:
                        await self.endpoints.store.finish_orphan(
                            self.stream_id, self.position, events
                        )
                        continue
                    except ResumeError:
                        pass
                await self.fail(OWNER_LOST)
                return
            except ResumeError as exc:
                await self.fail(str(exc))
                return
            if batch is None:
                self.context.settle(Outcome.COMPLETED)
                await self.write(b"", more=False)
                return
            if not batch:
                if keepalive and time.monotonic() - self.last_write >= keepalive:
                    await self.write(PING, more=True)
                continue
            self.position = batch[-1][0]
            prefix = self.prefix
            payload = b"".join(with_stream_id(prefix, seq, event) for seq, event in batch)
            context = self.context
            context.events += len(batch)
            if context.first_event is None:
                context.first_event = time.monotonic()
            await self.write(payload, more=True)

    async def fail(self, message: str) -> None:
        """A terminal error event that is not part of the stream (so it carries no id)."""
        self.context.settle(Outcome.UPSTREAM_ERROR)
        logger.warning(
            "sse_bridge: resumed stream %s ended: %s", stream_tag(self.stream_id), message
        )
        events = self.endpoints.bridge.new_translator().fail(message)
        await self.write(b"".join(events), more=False)

    async def write(self, payload: bytes, *, more: bool) -> None:
        with anyio.move_on_after(self.endpoints.bridge.send_timeout or math.inf) as waited:
            await self.send({"type": "http.response.body", "body": payload, "more_body": more})
        if waited.cancelled_caught:  # send_timeout (a scope per replayed batch costs little)
            self.context.settle(Outcome.CLIENT_STALLED)
            self.abort()
            raise ReaderStalledError
        self.context.bytes += len(payload)
        self.last_write = time.monotonic()


async def _until_disconnect(
    receive: Receive, scope: anyio.CancelScope, context: StreamContext
) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    context.settle(Outcome.CLIENT_DISCONNECTED)
    scope.cancel()


def _context(scope: Scope) -> StreamContext:
    return scope.get(STREAM_KEY) or StreamContext()


async def _refuse(send: Send, context: StreamContext, error: ResumeError) -> None:
    context.status = error.status
    context.settle(Outcome.UPSTREAM_ERROR)
    # A client may simply ask again for a store that is away or a stream that is full.
    again = isinstance(error, (StoreUnavailableError, TooManyReadersError))
    await send_json(send, error.status, {"error": str(error)}, [RETRY_AFTER] if again else [])


async def _no_content(send: Send, context: StreamContext, outcome: Outcome) -> None:
    context.status = 204
    context.settle(outcome)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
