"""On SIGUSR1, one log line of what the process holds: for a soak run, or an operator's look.

``stats rss_kib=... fds=... tasks=... streams=... store_streams=... store_pending_bytes=...``:
resident memory and open file descriptors (from ``/proc``, on Linux), asyncio tasks, open
streams, and the resume store's streams, the bytes waiting for Redis and the Redis client's
pooled connections (``store_connections``). A signal rather than an
endpoint: nothing to guard, and only the process's owner can send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sized

logger = logging.getLogger("sse_bridge")

STATS_SIGNAL = signal.SIGUSR1


def figures(streams: int, store: object) -> dict[str, int]:
    """What the line says, in order."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        with open("/proc/self/statm") as statm:
            found["rss_kib"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        found["fds"] = len(os.listdir("/proc/self/fd"))
    found["tasks"] = len(asyncio.all_tasks())
    found["streams"] = streams
    if store is not None:
        kept = getattr(store, "streams", None)
        if kept is None:
            kept = getattr(store, "live", None)
        if isinstance(kept, Sized):
            found["store_streams"] = len(kept)
        backlog = getattr(store, "backlog", None)
        if backlog is not None:
            found["store_pending_bytes"] = backlog.bytes
        # The Redis client's pooled connections: fds of their own, kept idle once made.
        pool = getattr(getattr(store, "redis", None), "connection_pool", None)
        if pool is not None:
            found["store_connections"] = len(getattr(pool, "_available_connections", ())) + len(
                getattr(pool, "_in_use_connections", ())
            )
    return found


def install(loop: asyncio.AbstractEventLoop, streams: Callable[[], int], store: object) -> bool:
    """Log the line on SIGUSR1 from now on; False where signals cannot be handled here."""

    def report() -> None:
        line = " ".join(f"{key}={value}" for key, value in figures(streams(), store).items())
        # Asked for: logged whatever the level.
        logger.warning("sse_bridge: stats %s", line)

    try:
        loop.add_signal_handler(STATS_SIGNAL, report)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        return False
    return True


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.remove_signal_handler(STATS_SIGNAL)
