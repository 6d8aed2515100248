"""retry_jitter: each stream's retry: value spread by a fraction, so a herd spreads out."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sse_bridge import SSEBridgeMiddleware
from tests.test_middleware import Client, call, ndjson_app

pytestmark = pytest.mark.anyio


async def retry_of_one_stream(**options: Any) -> int:
    client = Client()
    await call(ndjson_app([b'{"n":1}\n']), client, **options)
    found = re.match(rb"retry: (\d+)\n\n", client.body_bytes)
    assert found is not None, client.body_bytes
    return int(found.group(1))


async def test_without_jitter_every_stream_gets_retry_exactly() -> None:
    assert {await retry_of_one_stream(retry=3000) for _ in range(5)} == {3000}


async def test_jitter_spreads_each_streams_retry_within_the_fraction() -> None:
    values = [await retry_of_one_stream(retry=3000, retry_jitter=0.2) for _ in range(40)]
    assert all(2400 <= value <= 3600 for value in values), values
    # Spread, not one value: 40 draws from 1,201 values all alike would be a broken jitter.
    assert len(set(values)) > 10


async def test_a_resumed_stream_gets_a_spread_retry_too() -> None:
    middleware = SSEBridgeMiddleware(ndjson_app([]), retry=1000, retry_jitter=0.5)
    assert len({middleware.retry for _ in range(40)}) > 10
    assert all(
        500 <= int(field.split()[1]) <= 1500
        for field in {middleware.retry for _ in range(40)}
        if field is not None
    )


@pytest.mark.parametrize("jitter", [-0.1, 1.5, True, "0.2", float("nan")])
def test_a_jitter_that_is_not_a_fraction_is_refused(jitter: object) -> None:
    with pytest.raises(ValueError, match="retry_jitter must be a fraction from 0 to 1"):
        SSEBridgeMiddleware(ndjson_app([]), retry=1000, retry_jitter=jitter)  # type: ignore[arg-type]
