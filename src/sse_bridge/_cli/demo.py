"""``sse-bridge demo``: the fake Ollama and the bridge on loopback, and one answer streamed live."""

from __future__ import annotations

import errno
import json
import logging
import shlex
import signal
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx

from sse_bridge._core.asgi import send_json
from sse_bridge._core.headers import header
from sse_bridge._core.sse_parser import SSEParser
from sse_bridge._sidecar.app import SidecarApp, create_proxy
from sse_bridge._testing.fake import FakeOllama, FakeOllamaConfig
from sse_bridge._testing.loopback import base_url, listening_socket, serve_in_task
from sse_bridge._types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("sse_bridge")

STARTUP_TIMEOUT = 10.0
PAGE = (Path(__file__).parent / "static" / "demo.html").read_bytes()
DEFAULT_MODEL = "llama3.2"
# Where the demo's bridge resumes (GET) and stops (DELETE) streams: the middleware's default.
RESUME_PATH = "/streams"


class DemoApp:
    """The bridge, plus the demo page at ``/`` and a GET twin of ``/api/chat`` for EventSource.

    ``GET /api/chat/events?prompt=...&model=...&fake={...}`` becomes the same ``POST /api/chat``
    a page would send with fetch(), handed to the bridge in-process, because EventSource can
    only do GET.

    With resume on, a client that leaves no longer stops its generation. The page resumes its
    fetch() streams after a reload and stops them with ``DELETE /streams/<id>``, but it cannot
    read an EventSource's response headers, so it never learns that stream's id: when an
    EventSource client leaves before its stream has ended, the twin stops the generation itself.
    """

    def __init__(self, bridge: ASGIApp) -> None:
        self.bridge = bridge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            if scope["path"] == "/":
                await self.page(scope, send)
                return
            if scope["path"] == "/api/chat/events" and scope["method"] == "GET":
                await self.events(scope, receive, send)
                return
        await self.bridge(scope, receive, send)

    def drain(self) -> None:
        """End every open stream now, generations running on for a resume included."""
        if isinstance(self.bridge, SidecarApp):
            self.bridge.drain()

    async def page(self, scope: Scope, send: Send) -> None:
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(PAGE)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else PAGE
        await send({"type": "http.response.body", "body": body})

    async def events(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"))
        body: dict[str, Any] = {
            "model": query.get("model", [DEFAULT_MODEL])[0],
            "messages": [{"role": "user", "content": query.get("prompt", [""])[0]}],
        }
        try:
            fake = json.loads(query.get("fake", ["{}"])[0])
        except ValueError:
            fake = None
        if not isinstance(fake, dict):
            await send_json(send, 400, {"error": "fake must be a JSON object"})
            return
        if fake:
            body["fake"] = fake
        payload = json.dumps(body).encode()
        headers = [
            (k, v)
            for k, v in scope["headers"]
            if k.lower() not in (b"content-length", b"content-type", b"accept")
        ]
        post = {
            **scope,
            "method": "POST",
            "path": "/api/chat",
            "raw_path": b"/api/chat",
            "query_string": b"",
            "headers": [
                *headers,
                (b"accept", b"text/event-stream"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
        sent = False
        stream_id = ""
        ended = False

        async def post_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            message = await receive()
            if message["type"] == "http.disconnect" and stream_id and not ended:
                await self.stop(scope, stream_id)
            return message

        async def post_send(message: Message) -> None:
            nonlocal stream_id, ended
            if message["type"] == "http.response.start":
                stream_id = header(message.get("headers", []), b"x-stream-id")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        await self.bridge(post, post_receive, post_send)

    async def stop(self, scope: Scope, stream_id: str) -> None:
        """``DELETE /streams/<id>``, handed to the bridge in-process like the POST."""
        path = f"{RESUME_PATH}/{stream_id}"
        delete = {
            **scope,
            "method": "DELETE",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(k, v) for k, v in scope["headers"] if k.lower() == b"authorization"],
        }

        async def delete_receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def delete_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] != 204:
                logger.warning(
                    "sse_bridge demo: could not stop stream %s: status %d",
                    stream_id,
                    message["status"],
                )

        await self.bridge(delete, delete_receive, delete_send)


def demo_app(upstream: str) -> DemoApp:
    """The demo's bridge to ``upstream``, with the page and the EventSource twin."""
    # Resumable streams: the page picks its answer up again after a reload, and Stop ends the
    # generation with DELETE /streams/<id>.
    return DemoApp(
        create_proxy(upstream=upstream, dialect="ollama", resume="memory", resume_path=RESUME_PATH)
    )


def bind(host: str, port: int) -> tuple[socket.socket, bool]:
    """A listening socket on ``port``, or on a free port if that one is taken (then True)."""
    try:
        return listening_socket(host, port), False
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
    return listening_socket(host, 0), True


@dataclass
class Answer:
    tokens: int
    first_token: float | None
    total: float
    error: str | None


async def stream_answer(url: str, body: dict[str, Any], out: TextIO) -> Answer:
    """POST ``body`` asking for SSE and print each token the moment its event arrives."""
    parser = SSEParser()
    tokens = 0
    first: float | None = None
    error: str | None = None
    started = time.monotonic()
    headers = {"accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), trust_env=False) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            error = f"the bridge answered {response.status_code}: {response.text}"
            return Answer(0, None, time.monotonic() - started, error)
        async for chunk in response.aiter_raw():
            for event in parser.feed(chunk):
                data = json.loads(event.data)
                if data.get("token"):
                    if first is None:
                        first = time.monotonic() - started
                    tokens += 1
                    out.write(data["token"])
                    out.flush()
                if "error" in data:
                    error = data["error"]
    return Answer(tokens, first, time.monotonic() - started, error)


async def run_demo(
    *,
    host: str,
    port: int,
    upstream_port: int,
    model: str,
    prompt: str,
    tokens_per_second: float,
    once: bool,
    out: TextIO,
) -> Answer:
    """Serve the fake Ollama and the bridge, stream one answer, then serve until interrupted."""
    fake = FakeOllama(FakeOllamaConfig(tokens_per_second=tokens_per_second))
    upstream_sock, _ = bind(host, upstream_port)
    bridge_sock, moved = bind(host, port)
    bridge = demo_app(base_url(upstream_sock))
    # uvicorn closes the sockets when it stops.
    async with (
        serve_in_task(fake, sock=upstream_sock, startup_timeout=STARTUP_TIMEOUT) as upstream_url,
        serve_in_task(bridge, sock=bridge_sock, startup_timeout=STARTUP_TIMEOUT) as bridge_url,
    ):
        try:
            if moved:
                out.write(f"Port {port} is taken; using {bridge_url} instead.\n")
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
            out.write(
                f"Fake Ollama upstream: {upstream_url}\n"
                f"sse_bridge (dialect ollama): {bridge_url}\n"
                f"Demo page: {bridge_url}/  (open it in a browser)\n\n"
                "Try it yourself:\n"
                f"  curl -N -H 'Accept: text/event-stream' -d {shlex.quote(json.dumps(body))} "
                f"{bridge_url}/api/chat\n\n"
                f"Streaming one answer from {bridge_url}/api/chat:\n\n"
            )
            answer = await stream_answer(f"{bridge_url}/api/chat", body, out)
            out.write("\n\n")
            if answer.error:
                out.write(f"The stream ended with an error: {answer.error}\n")
            rate = answer.tokens / answer.total if answer.total else 0.0
            first = "-" if answer.first_token is None else f"{answer.first_token * 1000:.0f} ms"
            out.write(
                f"time to first token: {first}; {answer.tokens} tokens in "
                f"{answer.total:.2f} s ({rate:.1f} tokens/s)\n"
            )
            if not once:
                out.write("\nServing until Ctrl+C.\n")
                out.flush()
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
        finally:
            out.flush()
            # uvicorn waits for open streams before it exits, and a generation whose client
            # left runs on for the resume grace (30 s): end them all now, with a final error.
            bridge.drain()
    return answer
