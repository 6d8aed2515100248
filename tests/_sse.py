"""Parse SSE bodies with httpx-sse, an independent implementation of the spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from httpx_sse._decoders import SSEDecoder, SSELineDecoder

FIXTURES = Path(__file__).parent / "fixtures" / "ollama"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def httpx_sse_data(body: bytes) -> list[str]:
    """The data of every event httpx-sse dispatches from `body`."""
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    out: list[str] = []
    for line in [*lines.decode(body.decode("utf-8")), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            out.append(event.data)
    return out


def httpx_sse_json(body: bytes) -> list[Any]:
    return [json.loads(data) for data in httpx_sse_data(body)]
