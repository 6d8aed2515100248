"""The Redis store as its parts see it: what the writer, the readers and the instance share.

:class:`~sse_bridge._resume.redis.store.RedisStore` is the one implementation. Each part adds to
:class:`Shared` the view of the live streams it needs (``writer.py``, ``reader.py``,
``instance.py``), so that no part imports the store that composes them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from sse_bridge._resume.redis.backlog import Backlog
from sse_bridge._resume.redis.client import Redis
from sse_bridge._resume.redis.keys import Keys
from sse_bridge._resume.store import StoreUnavailableError


class Shared(Protocol):
    """This instance's connection to Redis, its timings, and whether Redis answers."""

    @property
    def keys(self) -> Keys: ...

    @property
    def instance_id(self) -> str: ...

    @property
    def heartbeat(self) -> float:
        """Seconds between this instance's signs of life."""

    @property
    def refresh_every(self) -> float:
        """Seconds between refreshes of the live streams' keys."""

    @property
    def instance_ms(self) -> int:
        """How long this instance's key outlives its last heartbeat."""

    @property
    def live_ms(self) -> int:
        """How long a live stream's keys outlive their last refresh."""

    @property
    def ttl_ms(self) -> int:
        """How long a finished stream's keys are kept."""

    @property
    def attended_seconds(self) -> float: ...

    @property
    def max_stream_bytes(self) -> int: ...

    @property
    def backlog(self) -> Backlog:
        """The events waiting for Redis over all streams, and their bound."""

    @property
    def flush_window(self) -> float: ...

    @property
    def available(self) -> bool:
        """Whether Redis answered the last time it was asked."""

    @property
    def up(self) -> asyncio.Event:
        """Set while Redis answers; waited on while it does not."""

    @property
    def outages(self) -> int:
        """How many times Redis went away (a writer's pending events know which outage)."""

    @property
    def readers(self) -> dict[str, int]:
        """This instance's readers of each of its own streams."""

    def client(self) -> Redis: ...

    def went_down(self, error: BaseException) -> None: ...

    def came_back(self) -> None: ...

    def check_available(self) -> None:
        """Raise :class:`StoreUnavailableError` while Redis is away."""

    def unavailable(self, error: BaseException) -> StoreUnavailableError:
        """Record ``error`` and return the error for the caller to raise."""
