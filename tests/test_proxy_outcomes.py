"""How the proxy names what went wrong upstream, as an operator reads it: the outcome in the
access log and the kind of upstream error in the metrics, one failure at a time."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sse_bridge import create_proxy
from tests._servers import serve
from tests._wire import fetch
from tests.test_metrics import samples, until, value
from tests.test_proxy import access_lines, upstream_app

pytestmark = pytest.mark.anyio

KINDS = ("unreachable", "timeout", "broken", "status")


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(upstream_app) as url:
        yield url


async def failure(
    upstream: str, caplog: pytest.LogCaptureFixture, path: str, **options: object
) -> tuple[int, str, dict[str, float]]:
    """The status, the access log's outcome and the upstream errors counted, for one request."""
    app = create_proxy(upstream=upstream, metrics=True, **options)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="sse_bridge.access"), serve(app) as url:
        response = await fetch(f"{url}{path}", method="GET", body=b"")
        await until(lambda: bool(access_lines(caplog, f"path={path} ")))
        found = samples((await fetch(f"{url}/metrics", method="GET", body=b"")).body.decode())
    [line] = access_lines(caplog, f"path={path} ")
    outcome = line.split("outcome=")[1].split()[0]
    errors = {kind: value(found, "sse_bridge_upstream_errors_total", kind=kind) for kind in KINDS}
    return response.status, outcome, errors


async def test_an_upstream_timeout_is_counted_as_a_timeout(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    status, outcome, errors = await failure(upstream, caplog, "/slow", read_timeout=0.2)
    assert (status, outcome) == (504, "upstream_error")
    assert errors == {"unreachable": 0, "timeout": 1, "broken": 0, "status": 0}


async def test_a_broken_stream_of_another_format_is_truncated(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    status, outcome, errors = await failure(upstream, caplog, "/broken-text")
    # The client got a 200 and part of the body, then a transfer that did not finish.
    assert (status, outcome) == (200, "upstream_truncated")
    assert errors == {"unreachable": 0, "timeout": 0, "broken": 1, "status": 0}
