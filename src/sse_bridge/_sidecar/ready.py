"""``/readyz``: whether the upstream answers, asked at most once a second, on a connection apart.

``/readyz`` is open to everyone (a load balancer asks it without credentials), so its cost must
not grow with its request rate: one answer is kept for ``CACHE_SECONDS``, and requests that come
while the upstream is being asked wait for that one answer. The question goes on a client of its
own, one connection at most, never through the streams' pool, where it would take a connection
a stream could use (or wait behind ``max_streams`` of them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import httpx

CACHE_SECONDS = 1.0
TIMEOUT = 2.0


class Readiness:
    """The upstream's readiness as ``(status, body)`` for ``/readyz``.

    Args:
        upstream: the upstream's base URL, asked with a ``GET``.
        clock: seconds, monotonic (a test's own clock).
    """

    def __init__(self, upstream: httpx.URL, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.clock = clock
        self.answer: tuple[int, dict[str, str]] | None = None
        self.answered_at = -float("inf")
        self.lock: anyio.Lock | None = None
        self.asked = 0

    async def check(self) -> tuple[int, dict[str, str]]:
        if self.lock is None:
            self.lock = anyio.Lock()
        async with self.lock:
            if self.answer is None or self.clock() - self.answered_at >= CACHE_SECONDS:
                self.answer = await self.ask()
                self.answered_at = self.clock()
            return self.answer

    async def ask(self) -> tuple[int, dict[str, str]]:
        self.asked += 1
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=0)
        try:
            async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=TIMEOUT) as client:
                response = await client.get(self.upstream)
        except httpx.HTTPError as exc:
            return 503, {"status": "unavailable", "error": str(exc) or type(exc).__name__}
        if response.status_code >= 500:
            return 503, {
                "status": "unavailable",
                "error": f"upstream answered {response.status_code}",
            }
        return 200, {"status": "ready"}
