"""Focused probes of one cost each, used while profiling (docs/benchmarks.md, "The speed work").

``bench_stream.py`` compares configurations side by side; these measure one thing of one server
at a time, quickly, so that a change can be tried and measured in seconds:

- ``middleware``: the middleware's own cost per body message, on a no-op ``send``;
- ``setup``: CPU per stream of a server while N streams open at once (1,000 by default);
- ``steady``: CPU per event, user and system, of a server holding N paced streams;
- ``memory``: Python memory per open idle sidecar stream, by tracemalloc, with its biggest sources;
- ``resume``: CPU per event with resume off, ``"memory"`` and Redis side by side, and the memory
  per retained stream (``_resume_probe.py``).

``setup`` and ``steady`` take the server role of ``_stream_servers.py`` (``sidecar-ollama``,
``tutorial``...) and pin it to CPU 1, the upstream and this client to CPU 0, as the benchmark does.
Absolute figures move with the machine's load: compare a change with a run of the code before it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import linecache
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import _resume_probe
import uvloop
from _stream_client import StreamProtocol, StreamResult, request_bytes
from _stream_servers import DONE_LINE, TOKEN_LINES

from sse_bridge import SSEBridgeMiddleware, create_proxy
from sse_bridge._testing.loopback import accepts, serve_in_task, wait_until
from sse_bridge._types import Message, Receive, Scope, Send

HERE = Path(__file__).parent
HOST = "127.0.0.1"


def _spawn(role: str, *args: str, cpu: int | None) -> tuple[subprocess.Popen[str], int]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    command = [*pin, sys.executable, str(HERE / "_stream_servers.py"), role, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline().split()[1])


def _cpu(process: subprocess.Popen[str]) -> tuple[float, float]:
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _ready(port: int) -> None:
    # Before any stream is open: blocking the event loop holds nothing up.
    wait_until(lambda: accepts(port, HOST), timeout=20.0, interval=0.05, what=f"port {port}")


async def _stream(port: int, request: bytes, delay: float = 0.0) -> StreamResult:
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    _, protocol = await loop.create_connection(
        lambda: StreamProtocol(
            request, terminator=b"\n\n", keep_body=False, keep_times=True, started=started
        ),
        HOST,
        port,
    )
    return await asyncio.wait_for(protocol.finished, 120)


def _generate(tokens_per_second: float, tokens: int) -> bytes:
    fake = {"tokens_per_second": tokens_per_second, "num_tokens": tokens}
    body = json.dumps({"model": "m", "prompt": "p", "fake": fake}).encode()
    return request_bytes("POST", "/api/generate", body)


async def _with_servers(
    role: str, run: Callable[[subprocess.Popen[str], int], Awaitable[None]]
) -> None:
    upstream, upstream_port = _spawn("upstream", cpu=0)
    bridge, port = _spawn(role, "--upstream", f"http://{HOST}:{upstream_port}", cpu=1)
    try:
        _ready(port)
        await asyncio.gather(*(_stream(port, _generate(0, 2)) for _ in range(10)))  # warm-up
        await run(bridge, port)
    finally:
        for process in (bridge, upstream):
            process.terminate()
            process.wait(10)


async def setup(role: str, streams: int) -> None:
    async def run(bridge: subprocess.Popen[str], port: int) -> None:
        user, system = _cpu(bridge)
        begun = time.perf_counter()
        results = await asyncio.gather(*(_stream(port, _generate(0, 3)) for _ in range(streams)))
        wall = time.perf_counter() - begun
        cpu = sum(_cpu(bridge)) - user - system
        first = sorted(((r.first_event or r.started) - r.started) * 1000 for r in results)
        p50, p99 = first[len(first) // 2], first[int(len(first) * 0.99)]
        print(
            f"{role}: {streams} streams opened at once in {wall:.2f} s; its CPU "
            f"{cpu / streams * 1e6:.0f} us per stream; "
            f"first event p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        )

    await _with_servers(role, run)


async def steady(role: str, streams: int, seconds: float) -> None:
    async def run(bridge: subprocess.Popen[str], port: int) -> None:
        request = _generate(20, round(seconds * 20))
        tasks = [
            asyncio.ensure_future(_stream(port, request, i * 0.05 / streams))
            for i in range(streams)
        ]
        await asyncio.sleep(seconds * 0.3)  # past the opening burst
        user, system = _cpu(bridge)
        begun = time.perf_counter()
        await asyncio.sleep(seconds * 0.4)
        wall = time.perf_counter() - begun
        user2, system2 = _cpu(bridge)
        results = await asyncio.gather(*tasks)
        events = streams * 20 * wall
        gaps = sorted(
            (later - earlier) * 1000
            for r in results
            for earlier, later in itertools.pairwise(r.event_times[len(r.event_times) // 3 :])
        )
        print(
            f"{role}: {streams} streams at 20 events/s, middle {wall:.1f} s: "
            f"{(user2 - user) / wall:.2f} + {(system2 - system) / wall:.2f} CPU (user + system), "
            f"{(user2 - user) / events * 1e6:.0f} + {(system2 - system) / events * 1e6:.0f} us per "
            f"event; gap p99 {gaps[int(len(gaps) * 0.99)]:.1f} ms"
        )

    await _with_servers(role, run)


async def memory(streams: int, top: int) -> None:
    upstream, upstream_port = _spawn("upstream", cpu=None)
    try:
        _ready(upstream_port)
        app = create_proxy(upstream=f"http://{HOST}:{upstream_port}", dialect="ollama")
        async with serve_in_task(app, http="httptools", startup_timeout=20.0) as url:
            await _idle_memory(int(url.rsplit(":", 1)[1]), streams, top)
    finally:
        upstream.terminate()
        upstream.wait(10)


async def _idle_memory(port: int, streams: int, top: int) -> None:
    request = request_bytes("GET", "/idle")

    async def open_one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        data = b""
        while b"data:" not in data:
            data += await reader.read(4096)
        return writer

    for writer in [await open_one() for _ in range(5)]:  # one-time costs first
        writer.close()
    await asyncio.sleep(0.5)
    gc.collect()
    tracemalloc.start(12)
    before = tracemalloc.take_snapshot()
    writers = await asyncio.gather(*(open_one() for _ in range(streams)))
    await asyncio.sleep(0.3)
    gc.collect()
    after = tracemalloc.take_snapshot()
    # The client side of the streams (this process's asyncio streams) is not the sidecar's.
    ignore = [
        tracemalloc.Filter(False, "*/asyncio/streams.py"),
        tracemalloc.Filter(False, __file__),
        tracemalloc.Filter(False, tracemalloc.__file__),
    ]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    total = sum(stat.size_diff for stat in stats)
    print(f"sidecar ollama: {total / streams / 1024:.1f} KiB of Python memory per idle stream")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        code = linecache.getline(frame.filename, frame.lineno).strip()
        where = frame.filename.split("site-packages/")[-1]
        print(f"{stat.size_diff / streams:8.0f} B  {where}:{frame.lineno}  {code[:70]}")
    for writer in writers:
        writer.close()


async def middleware(messages: int) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(messages - 1):
            body = TOKEN_LINES[i % len(TOKEN_LINES)]
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": DONE_LINE, "more_body": False})

    async def receive() -> Message:
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async def send(message: Message) -> None:
        pass

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"accept", b"text/event-stream")],
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    configs: list[tuple[str, Any]] = [("no middleware", app)]
    configs += [
        (d, SSEBridgeMiddleware(app, dialect=d)) for d in ("raw", "ollama", "openai", "ai-sdk")
    ]
    best = {name: float("inf") for name, _ in configs}
    for _ in range(5):  # rounds, interleaved: the best of each configuration counts
        for name, served in configs:
            best[name] = min(best[name], await _timed(served, dict(scope), receive, send))
    for name, seconds in best.items():
        print(f"{name:14s} {seconds / messages * 1e6:5.2f} us per body message")


async def _timed(app: Any, scope: Scope, receive: Receive, send: Send) -> float:
    begun = time.perf_counter()
    await app(scope, receive, send)
    return time.perf_counter() - begun


def _resume_options(args: argparse.Namespace) -> _resume_probe.Options:
    options = _resume_probe.Options.quick() if args.quick else _resume_probe.Options()
    for name in vars(options):
        value = getattr(args, name, None)
        if value is not None:
            setattr(options, name, value)
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    probes = parser.add_subparsers(dest="probe", required=True)
    probes.add_parser("middleware").add_argument("--messages", type=int, default=50_000)
    for name in ("setup", "steady"):
        probe = probes.add_parser(name)
        probe.add_argument("role", nargs="?", default="sidecar-ollama")
        probe.add_argument("--streams", type=int, default=1000 if name == "setup" else 800)
        if name == "steady":
            probe.add_argument("--seconds", type=float, default=10.0)
    memory_parser = probes.add_parser("memory")
    memory_parser.add_argument("--streams", type=int, default=200)
    memory_parser.add_argument("--top", type=int, default=20)
    resume = probes.add_parser("resume", help=_resume_probe.__doc__.split("\n\n")[0])
    defaults = _resume_probe.Options()
    resume.add_argument("--quick", action="store_true", help="small counts (run by the tests)")
    resume.add_argument("--streams", type=int, help=f"fast streams (default {defaults.streams})")
    resume.add_argument("--tokens", type=int, help=f"tokens per stream ({defaults.tokens})")
    resume.add_argument("--rounds", type=int, help=f"fast rounds ({defaults.rounds})")
    resume.add_argument("--paced-streams", type=int, help=f"({defaults.paced_streams})")
    resume.add_argument("--paced-tokens", type=int, help=f"({defaults.paced_tokens})")
    resume.add_argument("--interval-ms", type=float, help=f"pacing ({defaults.interval_ms:g})")
    resume.add_argument("--paced-rounds", type=int, help=f"({defaults.paced_rounds})")
    resume.add_argument("--retained", type=int, help=f"retained streams ({defaults.retained})")
    resume.add_argument(
        "--profile",
        choices=("off", "memory", "redis"),
        help="only this store, fast then paced, under cProfile",
    )
    resume.add_argument("--json", dest="json_path", help="also write the figures here (-: stdout)")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.probe in ("setup", "steady") and len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {0})
    runs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "middleware": lambda: middleware(args.messages),
        "setup": lambda: setup(args.role, args.streams),
        "steady": lambda: steady(args.role, args.streams, getattr(args, "seconds", 10.0)),
        "memory": lambda: memory(args.streams, args.top),
        "resume": lambda: _resume_probe.run(_resume_options(args)),
    }
    uvloop.install()
    asyncio.run(runs[args.probe]())


if __name__ == "__main__":
    main()
