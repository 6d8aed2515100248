"""Idle capacity: one bridge process holding 10,000 open, silent streams, keepalives every 15 s.

Run from the repository root::

    .venv/bin/python benchmarks/bench_idle.py                          # 10,000 streams
    .venv/bin/python benchmarks/bench_idle.py --streams 1000 --keepalive 2 --periods 2

The bridge process is uvicorn (httptools, uvloop) serving ``SSEBridgeMiddleware`` in front of an
app that answers ``200 application/x-ndjson`` and then says nothing: every stream is one the
bridge holds open with keepalives only, and no upstream socket (a sidecar holds two sockets per
stream, and the machine's hard limit of open files may not allow 20,000 of them). The client is
this process: one asyncio protocol per stream, each read timestamped. Printed: the bridge's RSS
per open stream (its growth from before the first stream to all of them open, over the count),
and how late the keepalives came: for each stream, each gap between two keepalives minus the
keepalive period; the p50, p99 and the worst, over ``--periods`` periods after all were open.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from functools import partial
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _proc import rss_bytes

from loadtests.stack import free_port, wait_port

PING = b": ping\n\n"
REQUEST = b"GET /stream HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n"


def serve_role(port: int, keepalive: float) -> None:
    """The bridge process: the middleware over an app that never says a word."""
    import uvicorn

    from sse_bridge import SSEBridgeMiddleware

    async def silent(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        await receive()
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while (await receive())["type"] != "http.disconnect":
            pass

    app = SSEBridgeMiddleware(silent, keepalive=keepalive)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        backlog=4096,
        limit_concurrency=None,
    )


class Stream(asyncio.Protocol):
    def __init__(self, opened: asyncio.Future[None]) -> None:
        self.opened = opened
        self.pings: list[float] = []
        self.buffer = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.opened.done() and b"\r\n\r\n" in data:
            self.opened.set_result(None)
        self.pings += [now] * data.count(PING)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("the bridge closed a stream"))


async def hold(port: int, count: int, keepalive: float, periods: int, pid: int) -> None:
    loop = asyncio.get_running_loop()
    before = rss_bytes(pid)
    streams: list[Stream] = []
    opening = time.monotonic()
    batch = 200
    for start in range(0, count, batch):
        waits = []
        for _ in range(min(batch, count - start)):
            opened: asyncio.Future[None] = loop.create_future()
            _, stream = await loop.create_connection(partial(Stream, opened), "127.0.0.1", port)
            streams.append(stream)
            waits.append(opened)
        await asyncio.gather(*waits)
    opened_in = time.monotonic() - opening
    all_open = time.monotonic()
    await asyncio.sleep(keepalive * (periods + 1) + 1)
    after = rss_bytes(pid)
    lateness = []
    for stream in streams:
        times = [t for t in stream.pings if t >= all_open]
        lateness += [b - a - keepalive for a, b in pairwise(times)]
    lateness.sort()
    closed = sum(stream.closed for stream in streams)

    def at(q: float) -> float:
        return (
            lateness[min(len(lateness) - 1, int(q * len(lateness)))] if lateness else float("nan")
        )

    print(
        f"streams={count} opened_in={opened_in:.1f}s closed={closed} "
        f"rss_before={before / 2**20:.1f}MiB rss_after={after / 2**20:.1f}MiB "
        f"per_stream={(after - before) / count / 1000:.1f}KB "
        f"keepalive={keepalive:g}s gaps={len(lateness)} lateness_p50={at(0.5):.3f}s "
        f"p99={at(0.99):.3f}s worst={lateness[-1] if lateness else float('nan'):.3f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--keepalive", type=float, default=15.0)
    parser.add_argument("--periods", type=int, default=3)
    parser.add_argument("--serve-role", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve_role:
        serve_role(args.serve_role, args.keepalive)
        return
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-role", str(port), "--keepalive", str(args.keepalive)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        text=True,
    )
    try:
        wait_port(port, process)
        import uvloop

        uvloop.run(hold(port, args.streams, args.keepalive, args.periods, process.pid))
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
