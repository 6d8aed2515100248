"""uvicorn's HTTP protocols, offering the one thing the bridge needs that ASGI has no word for.

A stalled client (one that stops reading) makes ``await send()`` block once the connection's
write buffer passes its high-water mark; the middleware notices after ``send_timeout``. To cut
the client off it needs to drop the connection: returning from the app makes uvicorn call
``transport.close()``, which waits for the unsent bytes to leave, that is forever. These
subclasses put the transport's ``abort`` in each request's scope (``ABORT_EXTENSION``); an
abort calls ``connection_lost``, so uvicorn unblocks the write and reports ``http.disconnect``.

They offer ``progress`` too: the kernel's send buffer (megabytes on loopback, with Linux's
autotuning) hides a stalled reader of a slow stream, or of keepalives alone, for an hour or more
before any write blocks. ``progress()`` says how many bytes the client has not acknowledged yet
and how many it has acknowledged in all (``TCP_INFO``): bytes waiting while the count stands
still is a client that accepts nothing, whatever the buffers hold.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from collections.abc import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is in the speed extra
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from sse_bridge._core.context import ABORT_EXTENSION
from sse_bridge._types import Scope

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 at this offset (Linux 4.1 and later).
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120
_TCP_INFO_SIZE = _BYTES_ACKED_AT + _BYTES_ACKED.size
_INT = struct.Struct("i")


def _offer_abort(scope: Scope, transport: asyncio.Transport) -> None:
    extensions = scope.setdefault("extensions", {})
    extensions[ABORT_EXTENSION] = {"abort": transport.abort, "progress": _progress(transport)}


def _progress(transport: asyncio.Transport) -> Callable[[], tuple[int, int]] | None:
    """``progress()`` for this connection: (bytes not acknowledged, bytes acknowledged), or
    None where the kernel does not say (not Linux, not TCP)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    if _read_progress(transport, sock) is None:
        return None

    def progress() -> tuple[int, int]:
        return _read_progress(transport, sock) or (0, 0)

    return progress


def _read_progress(transport: asyncio.Transport, sock: socket.socket) -> tuple[int, int] | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        # Bytes in the kernel's send queue: not sent yet, or sent and not acknowledged.
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _INT.pack(0))
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < _TCP_INFO_SIZE:
        return None
    (acked,) = _BYTES_ACKED.unpack_from(raw, _BYTES_ACKED_AT)
    return transport.get_write_buffer_size() + _INT.unpack(queued)[0], acked


# The transport's write buffer before uvicorn's send() waits (asyncio's default: 64 KiB). A
# stalled client's connection holds this plus the write that crossed it.
WRITE_HIGH_WATER = 16 * 1024
# The kernel's send buffer of a client connection, fixed rather than autotuned to 4 MB: what a
# stalled client pins in kernel memory, and what a fast stream writes before a stall shows. Ample
# for event streams (about 1 MB/s at 100 ms of round trip).
SEND_BUFFER = 128 * 1024


def _bound_buffers(transport: asyncio.Transport) -> None:
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


class H11WithAbort(H11Protocol):
    """uvicorn's h11 protocol; each request's scope offers ``ABORT_EXTENSION``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _bound_buffers(transport)
        super().connection_made(transport)

    def handle_events(self) -> None:
        super().handle_events()
        # The request's task was made above and runs later: its scope can still gain a key.
        cycle = self.cycle
        if cycle is not None and ABORT_EXTENSION not in cycle.scope.get("extensions", {}):
            _offer_abort(cycle.scope, self.transport)  # type: ignore[arg-type]


if HttpToolsProtocol is not None:

    class HttpToolsWithAbort(HttpToolsProtocol):
        """uvicorn's httptools protocol; each request's scope offers ``ABORT_EXTENSION``."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            _bound_buffers(transport)
            super().connection_made(transport)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            _offer_abort(self.scope, self.transport)  # type: ignore[arg-type]


def protocol_class(http: str) -> type[asyncio.Protocol]:
    """The protocol for ``--http`` (auto: httptools when installed, as uvicorn chooses)."""
    if http == "h11" or HttpToolsProtocol is None:
        if http == "httptools":
            raise ValueError("--http httptools needs httptools: pip install 'sse-bridge[speed]'")
        return H11WithAbort
    return HttpToolsWithAbort
