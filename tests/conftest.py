from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # uvicorn runs apps on asyncio; that is the loop these tests must hold up on.
    return "asyncio"
