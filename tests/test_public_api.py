"""The public names: every one importable from the module users import it from, whatever the tree.

The table is the contract: a name leaves it only through ``_moved.py`` (importable from the old
module for a release, with a warning). Importing the package stays light: the Redis client, the
Prometheus client and the fake are loaded only by those who use them.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

PUBLIC = {
    "sse_bridge": {
        "DialectFunc",
        "LineDecoder",
        "LineTooLongError",
        "SSEBridgeMiddleware",
        "ServerSentEvent",
        "SidecarApp",
        "Translator",
        "create_proxy",
    },
    "sse_bridge.resume": {
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
    },
    "sse_bridge.metrics": {"BUCKETS", "BridgeMetrics"},
    "sse_bridge.probe": {
        "Analysis",
        "ProbeResult",
        "Stream",
        "analyse",
        "format_report",
        "probe",
        "read_stream",
    },
    "sse_bridge.testing": {
        "FakeOllama",
        "FakeOllamaAbort",
        "FakeOllamaConfig",
        "ParsedEvent",
        "RequestRecord",
        "SSEParser",
        "answer_tokens",
        "parse_sse",
        "serve_in_thread",
    },
}
# Moved to sse_bridge.probe; still importable from sse_bridge.testing, with a warning.
MOVED = {"Analysis", "ProbeResult", "Stream", "analyse", "probe", "read_stream"}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_imports_from_its_module(module: str) -> None:
    imported = importlib.import_module(module)
    assert sorted(imported.__all__) == sorted(PUBLIC[module])
    for name in PUBLIC[module]:
        assert getattr(imported, name) is not None, f"{module}.{name}"


def test_the_redis_store_is_the_one_sse_bridge_resume_names() -> None:
    from sse_bridge.resume import RedisStore

    assert RedisStore.__name__ == "RedisStore"
    assert callable(RedisStore.record)


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_still_import_from_the_old_module(name: str) -> None:
    import sse_bridge.probe
    import sse_bridge.testing

    with pytest.warns(DeprecationWarning, match=f"use 'from sse_bridge.probe import {name}'"):
        found = getattr(sse_bridge.testing, name)
    assert found is getattr(sse_bridge.probe, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    import sse_bridge.testing

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'nothing'"):
            _ = sse_bridge.testing.nothing


def test_importing_the_package_loads_no_optional_part() -> None:
    code = (
        "import sys, sse_bridge, sse_bridge.resume, sse_bridge.probe\n"
        "heavy = ['redis', 'prometheus_client', 'sse_bridge._testing.fake',\n"
        "         'sse_bridge._resume.redis.store', 'sse_bridge._cli.main']\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
