"""The SIGUSR1 stats line: what it counts, and that it is logged when the signal comes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from types import SimpleNamespace

import pytest

from sse_bridge._resume.memory import MemoryStore
from sse_bridge._sidecar import stats


def test_the_figures_of_a_process_and_its_stores() -> None:
    async def figures() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        memory = MemoryStore()
        memory.record(lambda: None)
        pool = SimpleNamespace(_available_connections=[1, 2], _in_use_connections={3})
        redis_like = SimpleNamespace(
            live={"a": 1, "b": 2},
            backlog=SimpleNamespace(bytes=77),
            redis=SimpleNamespace(connection_pool=pool),
        )
        return stats.figures(3, memory), stats.figures(0, redis_like), stats.figures(0, None)

    memory, redis_like, none = asyncio.run(figures())
    assert memory["streams"] == 3
    assert memory["store_streams"] == 1
    assert memory["tasks"] >= 1
    assert memory["rss_kib"] > 1000
    assert memory["fds"] > 2
    assert redis_like["store_streams"] == 2
    assert redis_like["store_pending_bytes"] == 77
    assert redis_like["store_connections"] == 3
    assert "store_streams" not in none


def test_sigusr1_logs_the_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sse_bridge")

    async def signalled() -> bool:
        loop = asyncio.get_running_loop()
        installed = stats.install(loop, lambda: 5, None)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(100):
                if caplog.records:
                    break
                await asyncio.sleep(0.01)
        finally:
            stats.uninstall(loop)
        return installed

    assert asyncio.run(signalled())
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("sse_bridge: stats rss_kib=")
    assert " streams=5" in line


def test_off_the_main_thread_nothing_is_installed() -> None:
    async def elsewhere() -> bool:
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(
            lambda: stats.install(loop, lambda: 0, None)  # add_signal_handler refuses here
        )

    assert asyncio.run(elsewhere()) is False
