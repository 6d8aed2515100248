"""`fetch`: the probe's socket reader with the defaults these tests want."""

from __future__ import annotations

from sse_bridge.probe import Stream, read_stream


async def fetch(
    url: str,
    *,
    method: str = "POST",
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    stop_after_events: int | None = None,
    deadline: float = 10.0,
) -> Stream:
    """One request, read as it arrives; a timeout raises TimeoutError, as a test wants."""
    assert url.startswith("http://127."), "tests talk to loopback only"
    stream = await read_stream(
        url,
        method=method,
        body=body,
        headers=list((headers or {}).items()),
        deadline=deadline,
        stop_after_events=stop_after_events,
    )
    if stream.error is not None and stream.error.startswith("timed out"):
        raise TimeoutError(stream.error)
    return stream
