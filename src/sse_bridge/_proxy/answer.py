"""The upstream's answer as the proxy reads it, from either transport, and what its failures say.

:class:`Answer` is the one shape both transports answer in: httpx's response through
:class:`HttpxAnswer`, and the httptools transport's own response as it is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Protocol

import httpx


class Answer(Protocol):
    """The upstream's answer as the proxy reads it, from either transport."""

    @property
    def status_code(self) -> int: ...

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); b"" at the end."""
        ...

    async def aclose(self) -> None: ...


class HttpxAnswer:
    """An ``httpx.Response`` in the shape of :class:`Answer`."""

    __slots__ = ("chunks", "response")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks: AsyncIterator[bytes] | None = None

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self.response.headers.raw

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self.response.aiter_raw()

    async def read(self) -> bytes:
        if self.chunks is None:
            self.chunks = self.response.aiter_raw()
        async for chunk in self.chunks:
            if chunk:
                return chunk
        return b""

    async def aclose(self) -> None:
        await self.response.aclose()


async def read_some(response: Answer, limit: int) -> bytes:
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


def error_message(status: int, raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", errors="replace").strip()[:500]
        return f"upstream answered {status}: {text}" if text else f"upstream answered {status}"
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else json.dumps(error)


def reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
