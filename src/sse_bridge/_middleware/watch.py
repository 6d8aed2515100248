"""The client watch: keepalives in the silences, and what happens when the client leaves.

One :class:`ClientWatch` per converted request, started once the app has read the request body.
It is the only reader of ``receive`` from then on: when the client leaves, a resumable stream
lingers for the resume grace and then ends for its readers; any other stream stops at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import anyio

from sse_bridge._core.codec import encode_comment
from sse_bridge._core.context import Outcome, StreamContext
from sse_bridge._middleware.receive import SharedReceive
from sse_bridge._resume.store import Recording, ResumeError

PING = encode_comment("ping")


class Watched(Protocol):
    """What the watch reads of the stream it watches, and what it asks of it (the responder)."""

    converting: bool
    ended: bool
    last_write: float
    receive: SharedReceive
    recording: Recording | None
    spawn: Callable[..., object]
    stats: StreamContext

    @property
    def closed(self) -> bool: ...

    async def write(self, events: list[bytes], *, more: bool) -> None: ...

    async def write_bytes(self, payload: bytes, *, more: bool) -> None: ...

    def last_events(self, outcome: Outcome) -> list[bytes]: ...

    def close(self) -> None: ...


class ClientWatch:
    """Watches one client until it leaves, and sends the keepalives meanwhile."""

    __slots__ = ("background", "grace", "keepalive", "pinging", "stream", "wait_scope", "watching")

    def __init__(self, stream: Watched, keepalive: float, grace: float) -> None:
        self.stream = stream
        self.keepalive = keepalive
        self.grace = grace
        self.watching = False
        self.background = anyio.CancelScope()
        self.pinging: anyio.CancelScope | None = None
        # The watch's current wait, cancelled to make it look again (say, at the first byte).
        self.wait_scope: anyio.CancelScope | None = None

    def start(self) -> None:
        if not self.watching:
            self.watching = True
            self.stream.spawn(self.run)

    def stop(self) -> None:
        self.background.cancel()
        if self.pinging is not None:
            self.pinging.cancel()

    def restart_clock(self) -> None:
        """The response has begun: the keepalive clock starts now."""
        if self.wait_scope is not None and self.keepalive:
            self.wait_scope.deadline = anyio.current_time() + self.keepalive

    async def run(self) -> None:
        """Until the client leaves; it also starts the keepalives in the silences."""
        stream = self.stream
        with self.background:
            while True:
                interval = self.keepalive if stream.converting else 0.0
                delay = stream.last_write + interval - time.monotonic()
                if interval and delay <= 0:
                    # A short task per ping, so that this one goes on watching while a slow
                    # client holds the ping's write (a write queued behind it must see the
                    # disconnect).
                    if self.pinging is None:
                        self.pinging = anyio.CancelScope()
                        stream.spawn(self.ping, self.pinging)
                    delay = interval
                with anyio.CancelScope(
                    deadline=anyio.current_time() + delay if interval else math.inf
                ) as self.wait_scope:
                    await stream.receive.watch()
                    break
            self.wait_scope = None
            if stream.recording is not None and not stream.receive.disconnected:
                await self.linger(stream.recording)
                stream.receive.release()
                await stream.write(stream.last_events(Outcome.CLIENT_DISCONNECTED), more=False)
            if stream.stats.on_disconnect is not None:
                stream.stats.on_disconnect()
            if not stream.ended:
                # The client has gone: stop writing at once; the app's receive() says so.
                stream.stats.settle(Outcome.CLIENT_DISCONNECTED)
                stream.close()

    async def linger(self, recording: Recording) -> None:
        """Return once nobody has followed the stream for the grace period."""
        grace = self.grace
        quiet_since = time.monotonic()
        while True:
            left = quiet_since + grace - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(min(left, 1.0))
            try:
                attended = await recording.attended()
            except ResumeError:
                attended = False
            if attended:
                quiet_since = time.monotonic()

    async def ping(self, scope: anyio.CancelScope) -> None:
        stream = self.stream
        with scope:
            await stream.write_bytes(PING, more=True)
            if not stream.closed:
                stream.stats.keepalives += 1
        self.pinging = None
