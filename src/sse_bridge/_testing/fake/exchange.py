"""One HTTP request and its response, as the fake's handlers see them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sse_bridge._testing.fake.wire import JSON, encode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sse_bridge._testing.fake.records import RecordBook, RequestRecord
    from sse_bridge._types import Message, Receive, Scope, Send


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse_object(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The body as a JSON object, or None and the reason it is not one."""
    if not raw.strip():
        return None, "missing request body"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return None, f"invalid JSON body: {exc}"
    if not isinstance(value, dict):
        return None, "the request body must be a JSON object"
    return value, ""


class Exchange:
    """One HTTP request and response: the ASGI callables, the record and the parsed body.

    Every change to the record goes through `book`, which wakes the tests waiting on it.
    """

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        book: RecordBook,
        record: RequestRecord,
        raw: bytes,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.book = book
        self.record = record
        self.json, self.json_error = _parse_object(raw)
        book.body_read(record, self.json)

    async def start(
        self, status: int, content_type: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        message: Message = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode()), *headers],
        }
        await self.send(message)
        self.book.headers_sent(self.record, status)

    async def body(self, data: bytes, *, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(
        self,
        status: int,
        content_type: str,
        data: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        length = (b"content-length", str(len(data)).encode())
        await self.start(status, content_type, [length, *headers])
        await self.body(data, more=False)

    async def respond_json(
        self, status: int, payload: object, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        await self.respond(status, JSON, encode(payload), headers)
