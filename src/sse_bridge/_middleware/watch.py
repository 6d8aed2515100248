"""The client watch: keepalives in the silences, and what happens when the client leaves.

One :class:`ClientWatch` per converted request, started once the app has read the request body.
It is the only reader of ``receive`` from then on: when the client leaves, a resumable stream
lingers for the resume grace and then ends for its readers; any other stream stops at once.
It also times every write: a client that accepts no bytes for ``send_timeout`` seconds (a full
socket buffer makes ``await send()`` block) is cut off as if it had left, with outcome
``client_stalled``.
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

    abort: Callable[[], object] | None
    converting: bool
    ended: bool
    last_write: float
    # (bytes the client has not acknowledged, bytes it has), from the server, if it says.
    progress: Callable[[], tuple[int, int]] | None
    sending_since: float
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

    __slots__ = (
        "acked",
        "acked_at",
        "background",
        "grace",
        "keepalive",
        "pinging",
        "send_timeout",
        "stalled",
        "stream",
        "wait_scope",
        "watching",
    )

    def __init__(
        self, stream: Watched, keepalive: float, grace: float, send_timeout: float = 0.0
    ) -> None:
        self.stream = stream
        self.keepalive = keepalive
        self.grace = grace
        self.send_timeout = send_timeout
        self.stalled = False
        # The client's acknowledged byte count when last seen to move (progress()).
        self.acked = 0
        self.acked_at = time.monotonic()
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
        looks = [seconds for seconds in (self.keepalive, self.send_timeout) if seconds]
        if self.wait_scope is not None and looks:
            self.wait_scope.deadline = anyio.current_time() + min(looks)

    async def run(self) -> None:
        """Until the client leaves; it also starts the keepalives in the silences."""
        stream = self.stream
        with self.background:
            while True:
                delay = self.next_look()
                if self.stalled and stream.abort is None:
                    # Nothing can unblock the stalled write but the app's own end.
                    await self.cut_off()
                    return
                with anyio.CancelScope(
                    deadline=anyio.current_time() + delay if delay < math.inf else math.inf
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

    def next_look(self) -> float:
        """Send a keepalive or cut off a stalled client if it is time; return the seconds
        until the next look (math.inf: only the client's leaving)."""
        stream = self.stream
        if self.stalled:
            return math.inf
        now = time.monotonic()
        interval = self.keepalive if stream.converting else 0.0
        delay = stream.last_write + interval - now if interval else math.inf
        if interval and delay <= 0:
            # A short task per ping, so that this one goes on watching while a slow client
            # holds the ping's write (a write queued behind it must see the disconnect).
            if self.pinging is None:
                self.pinging = anyio.CancelScope()
                stream.spawn(self.ping, self.pinging)
            delay = interval
        timeout = self.send_timeout
        if timeout:
            since = stream.sending_since
            # A write that began after this look is seen at the next one, at most a timeout
            # away: it is cut off no later than that write's own deadline.
            left = since + timeout - now if since else timeout
            if stream.progress is not None:
                left = min(left, self.acknowledged(stream.progress, now))
            if left <= 0:
                self.stall()
                return math.inf
            delay = min(delay, left)
        return delay

    def acknowledged(self, progress: Callable[[], tuple[int, int]], now: float) -> float:
        """Seconds left before the client counts as stalled by what the kernel says: bytes
        wait for it and its acknowledged count has not moved since ``acked_at``."""
        waiting, acked = progress()
        if not waiting or acked != self.acked:
            self.acked = acked
            self.acked_at = now
            return self.send_timeout
        return self.acked_at + self.send_timeout - now

    def stall(self) -> None:
        """The client has accepted no bytes for send_timeout seconds: cut it off."""
        self.stalled = True
        stream = self.stream
        stream.stats.settle(Outcome.CLIENT_STALLED)
        if stream.abort is not None:
            # The server drops the connection: the blocked write returns, and the server
            # reports the disconnect, which this watch then handles as any other.
            stream.abort()

    async def cut_off(self) -> None:
        """A stalled client on a server that cannot drop it: end the stream here and now.
        The app is told the client left (the proxy cancels the upstream, and with it the
        blocked write); resumable readers get the terminal event, without a grace, since the
        generation cannot go on past the write it is blocked in."""
        stream = self.stream
        recording = stream.recording
        events = stream.last_events(Outcome.CLIENT_STALLED)
        if recording is not None and events:
            recording.append(events)
        stream.receive.release()
        if stream.stats.on_disconnect is not None:
            stream.stats.on_disconnect()
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
