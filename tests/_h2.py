"""A real HTTP/2 server for tests: hypercorn on a free loopback port, TLS with a throwaway cert."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import h2.config
import h2.connection
import h2.events
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

STARTUP_TIMEOUT = 10.0


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid for a day, and its key (openssl)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@contextlib.contextmanager
def serve_hypercorn(app: Any, cert: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Serve `app` with hypercorn in a thread; yield its base URL; stop it on exit.

    With `cert` (certificate, key) it serves https:// and offers h2 and http/1.1 by ALPN;
    without, http:// where HTTP/2 comes by prior knowledge (h2c). The socket listens before
    the server starts, so connections wait in its backlog: no readiness poll is needed.
    hypercorn's own event loop runs in the thread (it does not need the test's).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    host, port = sock.getsockname()
    config = Config()
    # hypercorn takes the descriptor over (and closes it when it stops).
    config.bind = [f"fd://{sock.detach()}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    config.errorlog = None
    if cert is not None:
        config.certfile, config.keyfile = str(cert[0]), str(cert[1])
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"{'https' if cert else 'http'}://{host}:{port}"
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=STARTUP_TIMEOUT)
    assert not thread.is_alive(), "hypercorn did not stop"
    assert not failure, failure


def paced_sse(events: int, interval: float, *, together: bool = False, fail: bool = False) -> Any:
    """An ASGI app that answers any request with `events` SSE events, one every `interval` s.

    Each event's data is "<number> HTTP/<version the server saw> <request body bytes>". With
    `together`, all of them come in one body message after the whole time (a buffering hop);
    with `fail`, the app raises after the first event.
    """

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        version = scope["http_version"]
        chunks = [f"data: {i} HTTP/{version} {size}\n\n".encode() for i in range(events)]
        if together:
            await asyncio.sleep(events * interval)
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
        else:
            for index, chunk in enumerate(chunks):
                if index:
                    await asyncio.sleep(interval)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if fail:
                    raise RuntimeError("the app failed mid-stream")
        await send({"type": "http.response.body", "body": b""})

    return app


@contextlib.contextmanager
def misbehaving_h2c(
    fault: Literal["mute", "close", "reset", "goaway", "garbage"],
) -> Iterator[str]:
    """A one-connection HTTP/2 server (prior knowledge, no TLS) that breaks its one answer.

    mute: reads the request and closes the connection without a word of HTTP/2; close: closes
    it after the settings, before any response; reset: sends one event and resets the stream;
    goaway: one event, then GOAWAY with an error code HTTP/2 does not define; garbage: one
    event, then a frame HTTP/2 forbids.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(STARTUP_TIMEOUT)
    host, port = sock.getsockname()
    failure: list[BaseException] = []

    def answer(conn: socket.socket) -> None:
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        preface = server.data_to_send()
        if fault != "mute":
            conn.sendall(preface)
        stream_id = None
        while stream_id is None:
            data = conn.recv(65536)
            if not data:
                return
            for event in server.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    stream_id = event.stream_id
        if fault != "mute":
            conn.sendall(server.data_to_send())
        if fault in ("reset", "goaway", "garbage"):
            server.send_headers(
                stream_id, [(":status", "200"), ("content-type", "text/event-stream")]
            )
            server.send_data(stream_id, b"data: 1\n\n")
            if fault == "reset":
                server.reset_stream(stream_id, error_code=2)
            elif fault == "goaway":
                server.close_connection(error_code=0x99)
            conn.sendall(server.data_to_send())
        if fault == "garbage":
            # A DATA frame on stream 0, which only carries connection frames.
            conn.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        # Half-closed, then read until the client hangs up: what the client sends meanwhile
        # (a SETTINGS ACK) is read, so the connection ends with a FIN and never a reset.
        conn.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):  # a client that left unread data
            while conn.recv(65536):
                pass

    def run() -> None:
        try:
            conn, _ = sock.accept()
            with conn:
                conn.settimeout(STARTUP_TIMEOUT)
                answer(conn)
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        thread.join(timeout=STARTUP_TIMEOUT)
        sock.close()
    assert not thread.is_alive(), "the HTTP/2 server did not stop"
    assert not failure, failure
