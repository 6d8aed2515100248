from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtests.stack import bridges as two_bridges
from loadtests.stack import fake_ollama


@pytest.fixture
def anyio_backend() -> str:
    # uvicorn runs apps on asyncio; that is the loop these tests must hold up on.
    return "asyncio"


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    """The fake Ollama as a process of its own (``sse-bridge fake-ollama``): its URL.

    Modules that want the fake in-process define a ``fake`` fixture of their own instead.
    """
    with fake_ollama() as url:
        yield url


@pytest.fixture(scope="module")
def bridges(fake: str) -> Iterator[list[int]]:
    """Two ``sse-bridge serve`` processes in front of ``fake``: their ports."""
    with two_bridges(fake) as ports:
        yield ports
