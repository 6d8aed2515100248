"""One reader of the server's ``receive()``, shared by the app and the middleware.

Under ASGI spec 2.3 (uvicorn) ``send()`` returns silently after the client has gone; the only
reliable signal is ``http.disconnect`` from ``receive()``. A second, concurrent reader would steal
the app's request body, so the middleware's disconnect watch and the app take turns behind a lock,
and any body message the watch reads first is kept, in order, for the app.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

from sse_bridge._types import Message, Receive

DISCONNECT: Message = {"type": "http.disconnect"}
# What the app's read returns when release() cut it short: the client itself may still be there.
_RELEASED: Message = {"type": "http.disconnect"}
# Body the watch may read ahead for an app that has not asked for it yet. Past this it waits for
# the app, so memory stays bounded; an app that streams a large body while answering keeps
# reading it itself, which also shows its disconnect.
READ_AHEAD_BYTES = 64 * 1024


class SharedReceive:
    """The ``receive`` handed to the app, plus :meth:`watch` for the middleware."""

    __slots__ = (
        "_busy",
        "_pending",
        "_pending_bytes",
        "_reading",
        "_receive",
        "_released",
        "_taken",
        "_turn",
        "client_gone",
        "disconnected",
        "hold",
        "on_body_complete",
        "resumable",
    )

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        # The app and the watch take turns at the server's receive(): a flag, and an event made
        # only when one of them has to wait.
        self._busy = False
        self._turn: anyio.Event | None = None
        # Made when first needed: every open stream holds one of these objects, and an event or
        # a deque costs more memory than the rest of it (docs/benchmarks.md).
        self._pending: deque[Message] | None = None
        self._pending_bytes = 0
        self._taken: anyio.Event | None = None
        # The client has gone (the server said http.disconnect)...
        self.client_gone = False
        # ...and the app is told so. With ``hold`` (resumable streams) the app is told only at
        # release(), so that the generation runs on while nobody is attached.
        self.disconnected = False
        self.hold = False
        self._released: anyio.Event | None = None
        # A stream that may be held: the app's own wait on the server is cut short by
        # release(), or an app listening for the disconnect would never hear of a stop.
        self.resumable = False
        self._reading: anyio.CancelScope | None = None
        # Called once the whole request body has been read (by the app or the watch).
        self.on_body_complete: Callable[[], None] | None = None

    async def _take_turn(self) -> None:
        while self._busy:
            if self._turn is None:
                self._turn = anyio.Event()
            await self._turn.wait()
        self._busy = True

    def _end_turn(self) -> None:
        self._busy = False
        if self._turn is not None:
            self._turn.set()
            self._turn = None

    async def __call__(self) -> Message:
        await self._take_turn()
        try:
            if self._pending:
                message = self._pending.popleft()
                self._pending_bytes -= len(message.get("body", b""))
                if self._taken is not None:
                    self._taken.set()
                return message
            if self.disconnected:
                return dict(DISCONNECT)
            if self.client_gone:
                message = DISCONNECT
            elif self.resumable:
                message = await self._read_until_released()
            else:
                message = await self._receive()
        finally:
            self._end_turn()
        if message is _RELEASED:
            return dict(DISCONNECT)
        if message["type"] == "http.disconnect":
            self.client_gone = True
            await self._until_released()
            return dict(DISCONNECT)
        elif not message.get("more_body", False) and self.on_body_complete is not None:
            self.on_body_complete()
        return message

    async def _read_until_released(self) -> Message:
        scope = self._reading = anyio.CancelScope()
        try:
            with scope:
                return await self._receive()
        finally:
            self._reading = None
        return _RELEASED

    def close(self) -> None:
        """From now on the app is told the client has gone (the response has ended)."""
        self.release()

    def release(self) -> None:
        """Tell the app the client has gone (now, if it was held back)."""
        self.disconnected = True
        if self._released is not None:
            self._released.set()
        if self._reading is not None:
            self._reading.cancel()

    async def _until_released(self) -> None:
        if self.hold:
            while not self.disconnected:
                if self._released is None:
                    self._released = anyio.Event()
                await self._released.wait()
        self.disconnected = True

    async def watch(self) -> None:
        """Return once the client has disconnected (not merely the app told so: a stopped
        stream still ends its response to a client that is there)."""
        while not self.client_gone:
            if self._pending_bytes >= READ_AHEAD_BYTES:
                self._taken = anyio.Event()
                await self._taken.wait()
                continue
            await self._take_turn()
            try:
                if self.client_gone:
                    break
                message = await self._receive()
            finally:
                self._end_turn()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                if not self.hold:
                    self.release()
            else:
                if self._pending is None:
                    self._pending = deque()
                self._pending.append(message)
                self._pending_bytes += len(message.get("body", b""))
