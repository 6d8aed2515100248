"""A raw HTTP/1.1 upstream that counts the requests it reads, for request-smuggling tests.

It reads requests the way a plain server does, by the framing each one declares (chunked,
else Content-Length, else no body), keeps its connections alive, and answers each request
with JSON naming the request's number, method, path and body. A proxy that forwarded framing
disagreeing with the body it sent shows up here as an extra request on the same connection,
and as the next client's answer naming someone else's path.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from sse_bridge._testing.loopback import HOST


@dataclass
class Seen:
    """One request as the upstream read it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int = 0


@dataclass
class RawUpstream:
    url: str
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self.fill():
                return None
        data, _, self.buffer = self.buffer.partition(marker)
        return data

    def exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self.fill():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def _read_request(reader: _Reader) -> Seen | None:
    head = reader.until(b"\r\n\r\n")
    if head is None:
        return None
    line, *lines = head.decode("latin-1").split("\r\n")
    method, _, rest = line.partition(" ")
    path = rest.rpartition(" ")[0]
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (item.partition(":") for item in lines)
    ]
    named = dict(headers)
    body = b""
    if named.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = reader.until(b"\r\n")
            if size_line is None:
                return None
            size = int(size_line.split(b";")[0] or b"0", 16)
            chunk = reader.exactly(size + 2)
            if chunk is None:
                return None
            if size == 0:
                break
            body += chunk[:-2]
    elif "content-length" in named:
        data = reader.exactly(int(named["content-length"]))
        if data is None:
            return None
        body = data
    return Seen(method, path, headers, body)


@contextlib.contextmanager
def raw_upstream() -> Iterator[RawUpstream]:
    """Serve on a free loopback port in a thread; yield it with the requests it has read."""
    state: RawUpstream

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(10)
            reader = _Reader(sock)
            with state.lock:
                state.connections += 1
                connection = state.connections
            with contextlib.suppress(OSError, ValueError):
                while (seen := _read_request(reader)) is not None:
                    seen.connection = connection
                    with state.lock:
                        state.requests.append(seen)
                        number = len(state.requests)
                    body = json.dumps(
                        {
                            "n": number,
                            "method": seen.method,
                            "path": seen.path,
                            "body": seen.body.decode("latin-1"),
                        }
                    ).encode()
                    sock.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%b" % (len(body), body)
                    )

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server((HOST, 0), Handler) as server:
        port = server.server_address[1]
        state = RawUpstream(f"http://{HOST}:{port}")
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield state
        finally:
            server.shutdown()
            thread.join(timeout=5)
