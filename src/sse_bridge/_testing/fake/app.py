"""`FakeOllama`: the ASGI app, its routes, the lifespan protocol and the records it keeps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from typing import TYPE_CHECKING

from sse_bridge._testing.fake.config import FakeOllamaConfig
from sse_bridge._testing.fake.exchange import Exchange, read_body
from sse_bridge._testing.fake.generation import Generation
from sse_bridge._testing.fake.job import (
    Reject,
    canonical,
    plan_chat,
    plan_generate,
    plan_openai_chat,
    read_request,
)
from sse_bridge._testing.fake.records import RecordBook, RequestRecord
from sse_bridge._testing.fake.wire import (
    JSON,
    ChatFraming,
    Framing,
    GenerateFraming,
    OpenAIChatFraming,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sse_bridge._testing.fake.job import Job, Request
    from sse_bridge._types import Receive, Scope, Send

OLLAMA_VERSION = "0.12.0"

_CHAT = ChatFraming()
_GENERATE = GenerateFraming()
_OPENAI_CHAT = OpenAIChatFraming()


async def _lifespan(receive: Receive, send: Send) -> None:
    # The protocol is exactly one startup, then one shutdown; nothing to set up or tear down.
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


class FakeOllama:
    """An Ollama-compatible upstream that streams a canned answer, paced and with faults on demand.

    Serves ``POST /api/chat``, ``POST /api/generate``, ``POST /v1/chat/completions``,
    ``GET /api/tags``, ``GET /api/version`` and ``GET /`` like Ollama, plus ``GET`` and ``DELETE
    /_fake/requests`` to read and clear `records` from another process.

    Args:
        config: the defaults for every request; each request may override them with a top-level
            ``"fake": {...}`` object in its JSON body.

    Attributes:
        config: the defaults in force.
        records: a `RecordBook` of one `RequestRecord` per request (``/_fake/`` paths excepted),
            in arrival order. Read it from any thread, and wait for a record with
            ``await fake.records.wait_for(...)`` (or ``wait_for_blocking`` in a thread); it only
            grows but for ``DELETE /_fake/requests``.
    """

    def __init__(self, config: FakeOllamaConfig | None = None) -> None:
        self.config = config if config is not None else FakeOllamaConfig()
        self.records = RecordBook()
        self._routes: dict[str, dict[str, Callable[[Exchange], Awaitable[None]]]] = {
            "/": {"GET": self._root},
            "/api/version": {"GET": self._version},
            "/api/tags": {"GET": self._tags},
            "/api/chat": {"POST": self._chat},
            "/api/generate": {"POST": self._generate},
            "/v1/chat/completions": {"POST": self._openai_chat},
            "/_fake/requests": {"GET": self._list_records, "DELETE": self._clear_records},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI connection: HTTP requests and the lifespan protocol."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # A websocket that is never accepted gets a 403 from the server.
        path: str = scope["path"]
        methods = self._routes.get(path)
        handler = self._not_found if methods is None else methods.get(scope["method"])
        record = self._new_record(scope, keep=not path.startswith("/_fake/"))
        raw = await read_body(receive)
        if raw is None:
            self.records.finish(record, "cancelled", "before_headers")
            return
        exchange = Exchange(scope, receive, send, self.records, record, raw)
        await (handler or self._method_not_allowed)(exchange)
        if record.outcome is None:
            self.records.finish(record, "completed")

    def _new_record(self, scope: Scope, *, keep: bool) -> RequestRecord:
        """A record for the request, kept in `records` unless it is a /_fake/ control request."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        record = RequestRecord(
            id=0,
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            started_at=time.monotonic(),
        )
        if keep:
            self.records.add(record)
        return record

    async def _root(self, exchange: Exchange) -> None:
        await exchange.respond(200, "text/plain; charset=utf-8", b"Ollama is running")

    async def _version(self, exchange: Exchange) -> None:
        await exchange.respond_json(200, {"version": OLLAMA_VERSION})

    async def _tags(self, exchange: Exchange) -> None:
        models = []
        for model in self.config.models:
            name = canonical(model)
            family = re.sub(r"[^a-z].*", "", name.rsplit("/", 1)[-1].lower()) or "fake"
            details = {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": "fake",
                "quantization_level": "Q4_K_M",
            }
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": 2_019_393_189,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": details,
                }
            )
        await exchange.respond_json(200, {"models": models})

    async def _not_found(self, exchange: Exchange) -> None:
        await exchange.respond_json(404, {"error": "not found"})

    async def _method_not_allowed(self, exchange: Exchange) -> None:
        allow = ", ".join(self._routes[exchange.scope["path"]])
        await exchange.respond_json(
            405, {"error": "method not allowed"}, [(b"allow", allow.encode())]
        )

    async def _list_records(self, exchange: Exchange) -> None:
        records = [dataclasses.asdict(record) for record in self.records]
        await exchange.respond(200, JSON, json.dumps(records).encode())

    async def _clear_records(self, exchange: Exchange) -> None:
        self.records.clear()
        await exchange.start(204, JSON)
        await exchange.body(b"", more=False)

    async def _run(
        self, exchange: Exchange, framing: Framing, plan: Callable[[Request], Job]
    ) -> None:
        try:
            request = read_request(
                exchange.json,
                exchange.json_error,
                self.config,
                record_id=exchange.record.id,
                stream_default=framing.stream_default,
            )
            job = plan(request)
        except Reject as reject:
            await exchange.respond_json(reject.status, framing.error(reject.message, reject.status))
            return
        await Generation(exchange, framing, job).run()

    async def _chat(self, exchange: Exchange) -> None:
        await self._run(exchange, _CHAT, plan_chat)

    async def _generate(self, exchange: Exchange) -> None:
        await self._run(exchange, _GENERATE, plan_generate)

    async def _openai_chat(self, exchange: Exchange) -> None:
        await self._run(exchange, _OPENAI_CHAT, plan_openai_chat)
