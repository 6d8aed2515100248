"""The AI SDK's side of a request, for ``--dialect ai-sdk``: the chat POST and its resume GET.

The middleware converts responses only; what a ``useChat`` client sends is the sidecar's to
read. ``POST /api/chat`` (or the ``chat_path`` option's path) with UI messages becomes an Ollama
``/api/chat`` body (``ui_messages.py``) asking for an event stream, so the ``ai-sdk`` dialect
answers it. With resume on, each chat id (the body's ``id``) maps to its live stream, and ``GET
/api/chat/<chat id>/stream``, which ``useChat({resume: true})`` calls on load, follows that stream
from its first event through the middleware's resume endpoint; it answers 204 when the chat has
no live stream, as the SDK expects. ``DELETE`` on that path stops the chat's generation.
"""

from __future__ import annotations

from sse_bridge._core.asgi import send_json
from sse_bridge._core.context import STREAM_KEY, StreamContext
from sse_bridge._core.headers import STREAM_ID_HEADER, header
from sse_bridge._resume.binding import Binding, Owner
from sse_bridge._sidecar.ui_messages import MAX_ID, BadChatRequest, chat_request
from sse_bridge._types import ASGIApp, Message, Receive, Scope, Send

# Ollama's chat endpoint, where every rewritten request goes, and useChat's default path.
CHAT_PATH = "/api/chat"
# What the request that goes on carries instead of the client's: the body is a new one.
_REPLACED = frozenset({b"content-length", b"transfer-encoding", b"content-type", b"accept"})


class ChatStreams:
    """Which live stream each chat is answering right now, in this process, and for whom.

    The chat id is chosen by the client, so, like a stream id, it is a bearer capability:
    whoever knows it can follow that chat's answer, unless streams are bound to their owner
    (``resume_owner``, ``--resume-owner-header``). Then each chat records its owner's hash, and
    a resume by anyone else finds nothing: the 204 of a chat with no live stream. Entries live as
    long as their generation: at most one per open stream.
    """

    def __init__(self, owner: Owner | None = None) -> None:
        self._binding = Binding(owner)
        self._live: dict[str, tuple[str, str | None]] = {}

    def bind(self, chat_id: str, stream_id: str, scope: Scope) -> None:
        """The stream ``stream_id`` answers chat ``chat_id`` (a newer one replaces an older)."""
        self._live[chat_id] = (stream_id, self._binding.of(scope))

    def find(self, chat_id: str, scope: Scope) -> str | None:
        """The live stream of ``chat_id``, or None (none, or another owner's)."""
        live = self._live.get(chat_id)
        if live is None or live[1] != self._binding.of(scope):
            return None
        return live[0]

    def release(self, chat_id: str, stream_id: str) -> None:
        """The generation ``stream_id`` has ended; the chat has no live stream unless a newer
        one took its place."""
        live = self._live.get(chat_id)
        if live is not None and live[0] == stream_id:
            del self._live[chat_id]


class UIChat:
    """The front of the middleware under ``--dialect ai-sdk`` (see the module docstring).

    Args:
        app: the middleware and the proxy behind it.
        model: the Ollama model for a request whose body names none; None: the body must.
        max_body: the largest request body read, in bytes; larger ones get 413.
        resume_path: the middleware's resume endpoint when resume is on, else None (and every
            resume GET gets 204).
        path: where useChat posts (its ``api`` option); the chat then goes to Ollama's
            ``/api/chat`` whatever this path is.
        owner: the owner of a request, as the middleware's ``resume_owner``: a chat is resumed
            by its owner only.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        model: str | None,
        max_body: int,
        resume_path: str | None,
        path: str = CHAT_PATH,
        owner: Owner | None = None,
    ) -> None:
        self.app = app
        self.model = model
        self.max_body = max_body
        self.resume_path = None if resume_path is None else resume_path.rstrip("/") + "/"
        self.path = path
        self.prefix = path + "/"
        self.chats = ChatStreams(owner)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == self.path and scope["method"] == "POST":
                await self.chat(scope, receive, send)
                return
            if path.startswith(self.prefix) and path.endswith("/stream"):
                await self.resume(scope, receive, send, path[len(self.prefix) : -len("/stream")])
                return
        await self.app(scope, receive, send)

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(receive, self.max_body)
        except _TooLarge:
            await _refuse(scope, send, 413, f"the request body is over {self.max_body} bytes")
            return
        if body is None:
            return  # the client left before it finished sending
        try:
            chat_id, upstream = chat_request(body, self.model)
        except BadChatRequest as exc:
            await _refuse(scope, send, 400, str(exc))
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _REPLACED]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(upstream)).encode()),
            (b"accept", b"text/event-stream"),
        ]
        scope = {**scope, "path": CHAT_PATH, "raw_path": CHAT_PATH.encode(), "headers": headers}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": upstream, "more_body": False}

        bound: list[str] = []

        async def starting(message: Message) -> None:
            if message["type"] == "http.response.start" and chat_id is not None:
                stream_id = header(message.get("headers", []), STREAM_ID_HEADER)
                if stream_id and self.resume_path is not None:
                    self.chats.bind(chat_id, stream_id, scope)
                    bound.append(stream_id)
            await send(message)

        try:
            await self.app(scope, replay, starting)
        finally:
            # The generation has ended (it outlives its client for the resume grace).
            for stream_id in bound:
                self.chats.release(str(chat_id), stream_id)

    async def resume(self, scope: Scope, receive: Receive, send: Send, chat_id: str) -> None:
        """GET follows the chat's live stream; DELETE stops it (Chat.stop() only disconnects,
        which a resumable stream outlives)."""
        if scope["method"] not in ("GET", "DELETE"):
            allow = [(b"allow", b"GET, DELETE")]
            await _refuse(scope, send, 405, "GET resumes a chat's stream, DELETE stops it", allow)
            return
        if not (0 < len(chat_id) <= MAX_ID and chat_id.isprintable()):
            await _refuse(scope, send, 400, f"a chat id is 1 to {MAX_ID} printable characters")
            return
        stream_id = None if self.resume_path is None else self.chats.find(chat_id, scope)
        if stream_id is None:
            # Nothing live for this chat: the SDK then shows the messages it has (and there is
            # nothing to stop).
            _context(scope).status = 204
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        path = f"{self.resume_path}{stream_id}"
        # From the first event: the SDK replays the whole message (no Last-Event-ID).
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"last-event-id"]
        scope = {
            **scope,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
        }
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client left first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _context(scope: Scope) -> StreamContext:
    context: StreamContext | None = scope.get(STREAM_KEY)
    return context if context is not None else StreamContext()


async def _refuse(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    _context(scope).status = status
    await send_json(send, status, {"error": message}, headers)
