"""``probe.py resume``: what resumable streams cost, per event and per retained stream.

Side by side in one run, in this process, on a no-op ``send`` (as ``probe.py middleware``):

- **fast**: one stream at a time, each ``--tokens`` Ollama generate chunks (one body message
  each, as Ollama writes them) and the done chunk, as fast as the middleware takes them: the hot
  path alone. A store that writes in the background gets the events of a stream in one go.
- **paced**: ``--paced-streams`` streams at once, each sending a chunk every ``--interval-ms``
  on an absolute schedule: each event reaches the store on its own, as a model's tokens do.

for the app alone (``no middleware``), ``SSEBridgeMiddleware(dialect="ollama")`` with resume off,
``resume="memory"`` and ``resume="redis://127.0.0.1:PORT/0"``: CPU of this process per event
(``time.process_time``, so waiting for Redis is not counted, its client's work is), and for Redis
the CPU of ``redis-server`` per event too. The store opens and closes through the ASGI lifespan,
as under a server; its close (where the Redis store sends what it still holds) is timed.

First (while this process has grown little), the memory one finished, retained stream of
``--tokens`` events takes: in the memory store (tracemalloc, and RSS growth in a separate pass),
and in Redis (``used_memory`` growth).

Redis: a ``redis-server --save '' --appendonly no`` is started on a free loopback port (pinned to
CPU 0, this process to CPU 1, on a machine with two CPUs). Without redis-server, the redis
package or the Redis store in this checkout, the Redis rows are left out with a printed note.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import importlib.util
import json
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _stream_servers import DONE_LINE, TOKEN_LINES
from prometheus_client import CollectorRegistry

from sse_bridge import SSEBridgeMiddleware
from sse_bridge._testing.loopback import free_port, wait_until
from sse_bridge._types import ASGIApp, Message, Receive, Scope, Send
from sse_bridge.metrics import BridgeMetrics

HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
OFF, MEMORY, REDIS, APP = "resume off", "resume memory", "resume redis", "no middleware"
# Not resume: what --metrics costs per event, measured in the same rounds (docs/operations.md).
METRICS = "metrics on"
REDIS_DEADLINE = 10.0


@dataclass
class Options:
    streams: int = 100
    tokens: int = 200
    rounds: int = 5
    paced_streams: int = 20
    paced_tokens: int = 200
    interval_ms: float = 20.0
    paced_rounds: int = 3
    retained: int = 500
    profile: str | None = None
    json_path: str | None = None

    @classmethod
    def quick(cls) -> Options:
        return cls(
            streams=10, rounds=2, paced_streams=10, paced_tokens=50, paced_rounds=1, retained=50
        )


# -- the app, the client side and the lifespan ----------------------------------------------


async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """Ollama's generate stream: ``tokens`` chunks and the done chunk, every ``interval`` s."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    tokens, interval = scope["probe"]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/x-ndjson")],
        }
    )
    if interval:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(tokens):
            await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
            body = TOKEN_LINES[i % len(TOKEN_LINES)]
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await asyncio.sleep(max(0.0, start + tokens * interval - loop.time()))
    else:
        for i in range(tokens):
            body = TOKEN_LINES[i % len(TOKEN_LINES)]
            await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": DONE_LINE, "more_body": False})


class Sink:
    """The client: counts the events and bytes it is sent, and nothing else."""

    def __init__(self, terminator: bytes) -> None:
        self.terminator = terminator
        self.events = 0
        self.bytes = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            self.events += body.count(self.terminator)
            self.bytes += len(body)


async def never() -> Message:
    await asyncio.sleep(3600)
    raise AssertionError("not reached")


def request(tokens: int, interval: float) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/api/generate",
        "headers": [(b"accept", b"text/event-stream")],
        "http_version": "1.1",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "probe": (tokens, interval),
    }


class Lifespan:
    """Drive an app's ASGI lifespan, as a server does: the resume store opens and closes here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self.task = asyncio.ensure_future(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.reply()
        if reply["type"] != "lifespan.startup.complete":
            with contextlib.suppress(Exception):
                await self.task
            raise RuntimeError(reply.get("message", reply["type"]))

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.reply()
        assert self.task is not None
        await self.task

    async def reply(self) -> Message:
        """The app's answer; what it raised instead, if it raised (say, its store's close)."""
        assert self.task is not None
        getter = asyncio.ensure_future(self.outbox.get())
        either: list[asyncio.Future[Any]] = [getter, self.task]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        self.task.result()
        raise RuntimeError("the app ended its lifespan without an answer")


# -- Redis ----------------------------------------------------------------------------------


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, nothing kept on disk."""

    def __init__(self, binary: str, workdir: str, cpu: int | None) -> None:
        self.port = free_port(HOST)
        pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
        command = [binary, "--bind", HOST, "--port", str(self.port), "--save", ""]
        command += ["--appendonly", "no", "--daemonize", "no", "--dir", workdir]
        self.process = subprocess.Popen(
            [*pin, *command], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        never = RuntimeError(f"redis-server did not answer PING on port {self.port}")

        def answers() -> bool:
            if self.process.poll() is not None:
                raise never
            with contextlib.suppress(OSError):
                return self.command("PING").startswith(b"+PONG")
            return False

        try:
            wait_until(answers, timeout=REDIS_DEADLINE)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise never from None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self, *words: str) -> bytes:
        """One command in Redis's inline form; the whole reply (a bulk string's payload)."""
        with socket.create_connection((HOST, self.port), timeout=REDIS_DEADLINE) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            reply = sock.recv(65536)
            if reply.startswith(b"$"):
                header, _, rest = reply.partition(b"\r\n")
                while len(rest) < int(header[1:]) + 2:
                    rest += sock.recv(65536)
                return rest[: int(header[1:])]
            return reply

    def used_memory(self) -> int:
        for line in self.command("INFO", "memory").decode().splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise RuntimeError("INFO memory has no used_memory")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(REDIS_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(REDIS_DEADLINE)


def redis_missing() -> str | None:
    """Why the Redis rows cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return "the redis package is not installed (pip install 'redis>=5')"
    if importlib.util.find_spec("sse_bridge._resume.redis.store") is None:
        return "this checkout has no Redis store (sse_bridge._resume.redis.store)"
    return None


@contextlib.contextmanager
def maybe_redis(notes: list[str], cpu: int | None) -> Iterator[RedisServer | None]:
    reason = redis_missing()
    if reason is not None:
        notes.append(f"redis: left out: {reason}")
        yield None
        return
    binary = shutil.which("redis-server")
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="sse-bridge-probe-redis-") as workdir:
        try:
            server = RedisServer(binary, workdir, cpu)
        except (OSError, RuntimeError) as exc:
            notes.append(f"redis: left out: {exc}")
            yield None
            return
        try:
            yield server
        finally:
            server.stop()


# -- the measurements -----------------------------------------------------------------------


@dataclass
class Config:
    name: str
    build: Callable[[], ASGIApp]
    terminator: bytes = b"\n\n"
    redis: RedisServer | None = None
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    redis_cpu: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.cpu.clear()
        self.wall.clear()
        self.redis_cpu.clear()


def configs(redis: RedisServer | None) -> list[Config]:
    def bridge(resume: str | None) -> Callable[[], ASGIApp]:
        return lambda: SSEBridgeMiddleware(upstream, dialect="ollama", resume=resume)

    def with_metrics() -> ASGIApp:
        # The sidecar's --metrics, as middleware: every stream recorded, its gaps counted.
        recorder = BridgeMetrics(CollectorRegistry())
        return SSEBridgeMiddleware(upstream, dialect="ollama", metrics=recorder)

    found = [
        Config(APP, lambda: upstream, terminator=b"\n"),
        Config(OFF, bridge(None)),
        Config(MEMORY, bridge("memory")),
        Config(METRICS, with_metrics),
    ]
    if redis is not None:
        found.append(Config(REDIS, bridge(redis.url), redis=redis))
    return found


async def run_round(config: Config, streams: int, tokens: int, interval: float) -> int:
    """One round: ``streams`` streams (one after the other if unpaced, else all at once) on a
    fresh app and store; its CPU, wall time and redis-server CPU; the events delivered."""
    app = config.build()
    lifespan = Lifespan(app)
    await lifespan.startup()
    sink = Sink(config.terminator)
    gc.collect()
    redis_before = config.redis.cpu_seconds() if config.redis else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    if interval:
        # Starts spread over one interval, as independent users' streams are.
        async def paced(i: int) -> None:
            await asyncio.sleep(i * interval / streams)
            await app(request(tokens, interval), never, sink.send)

        await asyncio.gather(*(paced(i) for i in range(streams)))
    else:
        for _ in range(streams):
            await app(request(tokens, 0.0), never, sink.send)
    await lifespan.shutdown()
    config.cpu.append(time.process_time() - cpu)
    config.wall.append(time.perf_counter() - wall)
    if config.redis:
        config.redis_cpu.append(config.redis.cpu_seconds() - redis_before)
    return sink.events


async def measure(
    found: list[Config],
    streams: int,
    tokens: int,
    interval: float,
    rounds: int,
    notes: list[str],
) -> dict[str, dict[str, float]]:
    """Every configuration of ``found`` for ``rounds`` rounds. A Redis configuration that fails
    is dropped from ``found`` with a note (its store may be work in progress); others raise."""
    expected = streams * (tokens + 1)
    timeout = 60 + 2 * tokens * interval

    async def one(config: Config, streams: int, tokens: int) -> None:
        try:
            delivered = await asyncio.wait_for(
                run_round(config, streams, tokens, interval), timeout
            )
            if delivered != streams * (tokens + 1):
                raise RuntimeError(f"{delivered} events, not {streams * (tokens + 1)}")
        except Exception as exc:
            if config.name != REDIS:
                raise
            found.remove(config)
            note = f"redis: left out: the Redis store failed: {exc!r}"
            notes.append(note)
            print(note)

    for config in list(found):  # warm-up: imports, first connections, caches
        await one(config, min(streams, 5), min(tokens, 20))
        config.reset()
    for r in range(rounds):
        # Interleaved and rotated, so that no configuration always runs first.
        for config in found[r % len(found) :] + found[: r % len(found)]:
            if config in found:
                await one(config, streams, tokens)
    results: dict[str, dict[str, float]] = {}
    for config in found:
        row = {
            "us_per_event": min(config.cpu) / expected * 1e6,
            "median_us_per_event": statistics.median(config.cpu) / expected * 1e6,
            "wall_us_per_event": min(config.wall) / expected * 1e6,
            "busy": max(c / w for c, w in zip(config.cpu, config.wall, strict=True)),
        }
        if config.redis_cpu:
            row["redis_server_us_per_event"] = statistics.median(config.redis_cpu) / expected * 1e6
        results[config.name] = row
    off = results[OFF]["us_per_event"]
    for row in results.values():
        row["x_resume_off"] = row["us_per_event"] / off
    return results


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(
        f"{'config':15s} {'CPU us/ev':>9s} {'median':>7s} {'x off':>6s} {'added':>7s}"
        f" {'busy':>5s} {'redis-server us/ev':>18s}"
    )
    off = results[OFF]["us_per_event"]
    for name, row in results.items():
        added = f"{row['us_per_event'] - off:+7.2f}" if name not in (APP, OFF) else ""
        server = row.get("redis_server_us_per_event")
        print(
            f"{name:15s} {row['us_per_event']:9.2f} {row['median_us_per_event']:7.2f}"
            f" {row['x_resume_off']:6.2f} {added:>7s} {row['busy']:5.2f}"
            f" {'' if server is None else f'{server:18.2f}'}"
        )


async def retained_memory(streams: int, tokens: int) -> dict[str, float]:
    """Memory per finished stream the memory store keeps: Python allocations and RSS."""
    expected = streams * (tokens + 1)

    async def fill(trace: bool) -> tuple[float, Sink]:
        app = SSEBridgeMiddleware(upstream, dialect="ollama", resume="memory")
        lifespan = Lifespan(app)
        await lifespan.startup()
        for _ in range(5):  # one-time costs first
            await app(request(tokens, 0.0), never, Sink(b"\n\n").send)
        sink = Sink(b"\n\n")
        gc.collect()
        if trace:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
        else:
            rss = rss_bytes()
        for _ in range(streams):
            await app(request(tokens, 0.0), never, sink.send)
        gc.collect()
        if trace:
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
            stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
            grown = float(sum(stat.size_diff for stat in stats))
        else:
            grown = float(rss_bytes() - rss)
        await lifespan.shutdown()
        if sink.events != expected:
            raise RuntimeError(f"memory store: {sink.events} events, not {expected}")
        del app, lifespan
        gc.collect()
        return grown, sink

    rss, _ = await fill(trace=False)
    python, sink = await fill(trace=True)
    return {
        "streams": streams,
        "events_per_stream": tokens + 1,
        "event_bytes_per_stream": sink.bytes / streams,
        "python_bytes_per_stream": python / streams,
        "rss_bytes_per_stream": rss / streams,
    }


async def redis_retained(redis: RedisServer, streams: int, tokens: int) -> dict[str, float]:
    """``used_memory`` growth of redis-server per finished stream it keeps."""
    redis.command("FLUSHALL")
    app = SSEBridgeMiddleware(upstream, dialect="ollama", resume=redis.url)
    lifespan = Lifespan(app)
    await lifespan.startup()
    before = redis.used_memory()
    sink = Sink(b"\n\n")
    for _ in range(streams):
        await app(request(tokens, 0.0), never, sink.send)
    await lifespan.shutdown()  # sends what the store still holds
    grown = redis.used_memory() - before
    keys = int(redis.command("DBSIZE").strip().lstrip(b":"))
    return {
        "streams": streams,
        "event_bytes_per_stream": sink.bytes / streams,
        "used_memory_bytes_per_stream": grown / streams,
        "keys": keys,
    }


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def profile(name: str, options: Options, redis: RedisServer | None) -> None:
    """One configuration under cProfile, fast (all rounds) then paced (one round): the top of
    each by own time."""
    found = [c for c in configs(redis) if c.name.endswith(name)]
    if not found:
        print(f"resume {name}: left out, nothing to profile")
        return
    config = found[0]
    interval = options.interval_ms / 1000
    await run_round(config, 5, min(options.tokens, 20), interval)
    for label, rounds, streams, tokens, pace in (
        ("fast", options.rounds, options.streams, options.tokens, 0.0),
        ("paced", 1, options.paced_streams, options.paced_tokens, interval),
    ):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(rounds):
            await run_round(config, streams, tokens, pace)
        profiler.disable()
        events = rounds * streams * (tokens + 1)
        print(f"{config.name}: cProfile of {events} events ({label}), by own time")
        pstats.Stats(profiler).strip_dirs().sort_stats("tottime").print_stats(25)
        pstats.Stats(profiler).strip_dirs().sort_stats("cumtime").print_stats("_resume", 8)


async def run(options: Options) -> None:
    notes: list[str] = []
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    if two_cpus:
        os.sched_setaffinity(0, {1})
    with maybe_redis(notes, 0 if two_cpus else None) as redis:
        if redis is not None:
            try:  # the store must open and keep a stream before its figures mean anything
                await run_round(configs(redis)[-1], 1, 2, 0.0)
            except Exception as exc:  # any failure of an unmerged or broken store: a note
                notes.append(f"redis: left out: the Redis store failed: {exc!r}")
                redis = None
        if options.profile is not None:
            await profile(options.profile, options, redis)
            return
        layout = "this process on CPU 1, redis-server on CPU 0" if two_cpus else "not pinned"
        print(f"resume probe: ollama dialect, one chunk per body message; {layout}")
        for note in notes:
            print(note)
        # First, while this process has asked the OS for little: its RSS growth means something.
        retained = await retained_memories(options, redis)
        found = configs(redis)
        fast = await measure(found, options.streams, options.tokens, 0.0, options.rounds, notes)
        print_table(
            f"fast: {options.streams} streams one after the other, {options.tokens} tokens + "
            f"done each, best of {options.rounds} rounds",
            fast,
        )
        for config in found:
            config.reset()
        interval = options.interval_ms / 1000
        paced = await measure(
            found,
            options.paced_streams,
            options.paced_tokens,
            interval,
            options.paced_rounds,
            notes,
        )
        print_table(
            f"paced: {options.paced_streams} streams at once, one chunk every "
            f"{options.interval_ms:g} ms each, {options.paced_tokens} tokens + done, "
            f"best of {options.paced_rounds} rounds",
            paced,
        )
    print("\nratios")
    for label, results in (("fast", fast), ("paced", paced)):
        for name in (MEMORY, REDIS, METRICS):
            if name in results:
                added = results[name]["us_per_event"] - results[OFF]["us_per_event"]
                print(
                    f"  {label:5s} {name} / resume off: {results[name]['x_resume_off']:.2f}x "
                    f"({added:+.2f} us per event)"
                )
    if options.json_path:
        summary = {"fast": fast, "paced": paced, "retained": retained, "notes": notes}
        summary["options"] = vars(options)
        write_json(options.json_path, summary)


async def retained_memories(options: Options, redis: RedisServer | None) -> dict[str, Any]:
    memory = await retained_memory(options.retained, options.tokens)
    print(
        f"\nmemory per retained finished stream of {options.tokens} tokens + done "
        f"({options.retained} streams kept):"
    )
    print(
        f"  memory store: {memory['python_bytes_per_stream'] / 1024:.1f} KiB of Python memory "
        f"(tracemalloc; RSS +{memory['rss_bytes_per_stream'] / 1024:.1f} KiB) for "
        f"{memory['event_bytes_per_stream'] / 1024:.1f} KiB of events"
    )
    retained: dict[str, Any] = {"memory": memory}
    if redis is None:
        print("  redis store:  left out (see the note above)")
        return retained
    try:
        kept = await asyncio.wait_for(redis_retained(redis, options.retained, options.tokens), 120)
    except Exception as exc:  # as in measure(): the Redis store may be work in progress
        print(f"  redis store:  left out: the Redis store failed: {exc!r}")
        return retained
    retained["redis"] = kept
    print(
        f"  redis store:  {kept['used_memory_bytes_per_stream'] / 1024:.1f} KiB of redis-server "
        f"used_memory, {kept['keys'] / options.retained:.1f} keys"
    )
    return retained


def write_json(path: str, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, indent=2)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text)
