"""Resumable streams: the stores, their protocol and their errors (docs/resume.md).

Pass a store as ``resume=`` to :class:`~sse_bridge.SSEBridgeMiddleware` or
:func:`~sse_bridge.create_proxy` to set its bounds, or a string (``"memory"``, a Redis URL) for
the defaults. ``RedisStore`` needs the ``resume`` extra (redis-py) and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sse_bridge._resume.memory import MemoryStore
from sse_bridge._resume.store import (
    BadPositionError,
    EventsGoneError,
    Follower,
    OwnerLostError,
    Recording,
    ResumeError,
    ResumeStore,
    StoreUnavailableError,
    UnknownStreamError,
)

if TYPE_CHECKING:
    from sse_bridge._resume.redis.store import RedisStore

__all__ = [
    "BadPositionError",
    "EventsGoneError",
    "Follower",
    "MemoryStore",
    "OwnerLostError",
    "Recording",
    "RedisStore",
    "ResumeError",
    "ResumeStore",
    "StoreUnavailableError",
    "UnknownStreamError",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from sse_bridge._resume.redis.store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
