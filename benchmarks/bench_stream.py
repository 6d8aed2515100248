"""Streaming benchmark: direct NDJSON vs SSEBridgeMiddleware vs the sidecar vs a naive proxy.

Run from the repository root::

    .venv/bin/python benchmarks/bench_stream.py            # about 2 minutes
    .venv/bin/python benchmarks/bench_stream.py --quick    # about 25 seconds
    .venv/bin/python benchmarks/bench_stream.py --json results.json

Every server is a separate uvicorn process (uvloop, httptools) started here on a free loopback
port and stopped here, also on Ctrl+C. On a machine with two or more CPUs the bridge processes are
pinned to CPU 1, the upstream and this client to CPU 0. All figures come from this one run, taken
interleaved; compare them only with each other. docs/benchmarks.md explains the method.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import datetime
import itertools
import json
import os
import platform
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import uvloop
from _stream_client import HOST, StreamResult, open_stream, request_bytes
from _stream_servers import DONE_LINE

from sse_bridge.testing import SSEParser, analyse

HERE = Path(__file__).resolve().parent
CLIENT_CPU = 0  # this process and the upstream
BRIDGE_CPU = 1  # the process under test
TICKS = os.sysconf("SC_CLK_TCK")
STARTUP_SECONDS = 20.0
PACE = 20  # events per second per stream in the paced test
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    events: int  # events in the one-stream throughput test
    throughput_rounds: int
    paced_streams: tuple[int, ...]
    paced_seconds: float
    paced_rounds: int
    idle_streams: int
    ttfe_requests: int


FULL = Settings(
    events=20_000,
    throughput_rounds=5,
    paced_streams=(50, 200, 400),
    paced_seconds=3.0,
    paced_rounds=2,
    idle_streams=200,
    ttfe_requests=50,
)
QUICK = Settings(
    events=5_000,
    throughput_rounds=3,
    paced_streams=(20, 100),
    paced_seconds=2.0,
    paced_rounds=1,
    idle_streams=100,
    ttfe_requests=20,
)


@dataclass(frozen=True)
class Target:
    """One configuration under test: which process serves it, under which path prefix."""

    name: str
    role: str
    prefix: str
    sse: bool


DIRECT = Target("direct", "upstream", "", sse=False)
PLAIN = Target("in-process plain", "inprocess", "", sse=False)
MW_RAW = Target("middleware raw", "inprocess", "/raw", sse=True)
MW_OLLAMA = Target("middleware ollama", "inprocess", "/ollama", sse=True)
SIDECAR = Target("sidecar", "sidecar", "", sse=True)
NAIVE = Target("naive", "naive", "", sse=True)
THROUGHPUT_TARGETS = (DIRECT, PLAIN, MW_RAW, MW_OLLAMA, SIDECAR, NAIVE)
TARGETS = (DIRECT, MW_OLLAMA, SIDECAR, NAIVE)


# ---------------------------------------------------------------------------------------------
# Processes


def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        # PR_SET_PDEATHSIG: the server gets SIGTERM if this script dies without cleaning up.
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        if cpu is not None:
            # Set before exec, so that every thread the server ever starts inherits it.
            os.sched_setaffinity(0, {cpu})

    return setup


@dataclass
class Server:
    role: str
    process: subprocess.Popen[str]
    cpu: int | None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the whole process, all threads."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.role} (pid {self.process.pid})")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


class Fleet:
    """The server processes of one run; :meth:`stop` ends every one of them."""

    def __init__(self, *, pin: bool, profile_dir: Path | None) -> None:
        self.pin = pin
        self.profile_dir = profile_dir
        self.servers: dict[str, Server] = {}

    def __getitem__(self, role: str) -> Server:
        return self.servers[role]

    def spawn(self, role: str, cpu: int, upstream: str | None = None) -> Server:
        command = [sys.executable, str(HERE / "_stream_servers.py"), role]
        if upstream is not None:
            command += ["--upstream", upstream]
        if self.profile_dir is not None and role != "upstream":
            command += ["--profile", str(self.profile_dir / f"{role}.prof")]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            # Its own session: Ctrl+C reaches only this script, which then stops the servers
            # in order instead of racing them.
            start_new_session=True,
            preexec_fn=_child_setup(cpu if self.pin else None),
        )
        server = Server(role, process, cpu if self.pin else None)
        self.servers[role] = server
        return server

    def start(self) -> None:
        upstream = self.spawn("upstream", CLIENT_CPU)
        upstream.port = _read_port(upstream)
        for role in ("inprocess", "sidecar", "naive"):
            self.spawn(role, BRIDGE_CPU, upstream.url)
        for server in self.servers.values():
            if not server.port:
                server.port = _read_port(server)
        for server in self.servers.values():
            _wait_ready(server)

    def stop(self) -> None:
        for server in self.servers.values():
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers.values():
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
            if server.process.stdout is not None:
                server.process.stdout.close()


def _read_port(server: Server) -> int:
    """The port the server prints once it has bound its socket, within a deadline."""
    stdout = server.process.stdout
    assert stdout is not None
    deadline = time.monotonic() + STARTUP_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                line = stdout.readline()
                if line.startswith("port "):
                    return int(line.split()[1])
                if not line:
                    break
    code = server.process.poll()
    raise RuntimeError(f"the {server.role} server did not start (exit code {code})")


def _wait_ready(server: Server) -> None:
    """Poll until the server answers an HTTP request: uvicorn listens after its lifespan."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with suppress(OSError), socket.create_connection((HOST, server.port), timeout=1) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            if sock.recv(64).startswith(b"HTTP/1.1 "):
                return
        time.sleep(0.02)
    raise RuntimeError(f"the {server.role} server on port {server.port} never became ready")


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass
class ThroughputSample:
    events_per_second: float
    events_per_chunk: float
    events_per_read: float
    seconds: float
    other_seconds: float  # see Bench.foreign_cpu
    bridge_cpu_us_per_event: float


@dataclass
class PacedSample:
    streams: int
    expected: int
    delivered: int
    bridge_cpu_us_per_event: float
    upstream_cpu_us_per_event: float
    bridge_busy: float  # the bridge's CPU time over the wall time of the test
    other_load: float
    gaps_ms: list[float] = field(repr=False)
    spans: list[float] = field(repr=False)
    coalesced_gaps: float = 0.0  # gaps below a quarter of the pace, by the probe's analyse()


@dataclass
class MemorySample:
    streams: int
    rss_before_kib: int
    rss_after_kib: int

    @property
    def kib_per_stream(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.streams


@dataclass
class Results:
    memory: dict[str, MemorySample] = field(default_factory=dict)
    ttfe_ms: dict[str, list[float]] = field(default_factory=dict)
    throughput: dict[str, list[ThroughputSample]] = field(default_factory=dict)
    paced: dict[int, dict[str, list[PacedSample]]] = field(default_factory=dict)
    seconds: float = 0.0
    other_seconds: float = 0.0  # foreign CPU time on the bridge CPU over the whole run


def _rotated(items: Sequence[T], shift: int) -> list[T]:
    """The order changes every round, so that no configuration always runs first or last."""
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def _generate_request(prefix: str, **fake: float) -> bytes:
    body = {"model": "llama3.2", "prompt": "Why is the sky blue?", "stream": True, "fake": fake}
    return request_bytes("POST", f"{prefix}/api/generate", json.dumps(body).encode())


class Bench:
    def __init__(self, fleet: Fleet, settings: Settings) -> None:
        self.fleet = fleet
        self.settings = settings

    def foreign_cpu(self) -> float:
        """CPU seconds the bridge's CPU so far spent on anything but our bridge processes.

        The machine is shared: this tells a slow figure caused by someone else's load on that
        CPU (or by the hypervisor stealing it) from one the bridge caused. NaN when unpinned.
        """
        if not self.fleet.pin:
            return float("nan")
        ours = sum(s.cpu_seconds() for s in self.fleet.servers.values() if s.cpu == BRIDGE_CPU)
        return _cpu_busy_seconds(BRIDGE_CPU) - ours

    def port(self, target: Target) -> int:
        return self.fleet[target.role].port

    async def stream(
        self, target: Target, request: bytes, *, keep_body: bool = False, timeout: float = 60.0
    ) -> StreamResult:
        protocol = await open_stream(
            self.port(target), request, sse=target.sse, keep_body=keep_body, keep_times=True
        )
        return await asyncio.wait_for(protocol.finished, timeout)

    # a. One stream, as fast as it goes ----------------------------------------------------

    async def throughput(self, target: Target, events: int, *, verify: bool) -> ThroughputSample:
        bridge = self.fleet[target.role]
        request = request_bytes("GET", f"{target.prefix}/burst?n={events}")
        cpu, other = bridge.cpu_seconds(), self.foreign_cpu()
        result = await self.stream(target, request, keep_body=verify)
        cpu, other = bridge.cpu_seconds() - cpu, self.foreign_cpu() - other
        if result.events != events:
            raise RuntimeError(f"{target.name}: counted {result.events} of {events} events")
        if verify:
            _verify_body(target, b"".join(result.body), events)
        assert result.ended is not None
        return ThroughputSample(
            events_per_second=events / (result.ended - result.started),
            events_per_chunk=events / max(1, result.chunks),
            events_per_read=events / result.reads,
            bridge_cpu_us_per_event=cpu / events * 1e6,
            seconds=result.ended - result.started,
            other_seconds=other,
        )

    # b. Many streams paced like a model ------------------------------------------------------

    async def paced(self, target: Target, streams: int) -> PacedSample:
        tokens = round(self.settings.paced_seconds * PACE)
        request = _generate_request(target.prefix, tokens_per_second=PACE, num_tokens=tokens)
        expected = tokens + 1  # the done chunk is one more event
        bridge, upstream = self.fleet[target.role], self.fleet["upstream"]
        interval = 1 / PACE

        async def one(index: int) -> StreamResult:
            # Spread the starts over one pacing interval, as independent users would be, rather
            # than making every stream's tokens fall due at the same instant.
            await asyncio.sleep(index * interval / streams)
            return await self.stream(target, request, timeout=self.settings.paced_seconds * 5 + 30)

        cpu_bridge, cpu_upstream = bridge.cpu_seconds(), upstream.cpu_seconds()
        other, wall = self.foreign_cpu(), time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(streams)))
        other, wall = self.foreign_cpu() - other, time.perf_counter() - wall
        cpu_bridge = bridge.cpu_seconds() - cpu_bridge
        cpu_upstream = upstream.cpu_seconds() - cpu_upstream
        delivered = sum(result.events for result in results)
        gaps = [
            (later - earlier) * 1000
            for result in results
            for earlier, later in itertools.pairwise(result.event_times)
        ]
        # The probe's own verdict function, so that "coalesced" means here what it means to
        # `sse-bridge probe`, the tests and the load tests.
        analysis = analyse([result.event_times for result in results], interval)
        return PacedSample(
            streams=streams,
            expected=expected * streams,
            delivered=delivered,
            bridge_cpu_us_per_event=cpu_bridge / max(1, delivered) * 1e6,
            upstream_cpu_us_per_event=cpu_upstream / max(1, delivered) * 1e6,
            bridge_busy=cpu_bridge / wall,
            other_load=other / wall,
            gaps_ms=gaps,
            # Last minus first arrival over the time the upstream took to pace them out: above 1
            # the bridge fell behind, below 1 it delivered events in bursts.
            spans=[
                (result.event_times[-1] - result.event_times[0]) / ((expected - 1) * interval)
                for result in results
            ],
            coalesced_gaps=analysis.coalesced * len(gaps),
        )

    # c. Idle open streams --------------------------------------------------------------------

    async def idle_memory(self, target: Target, streams: int) -> MemorySample:
        server = self.fleet[target.role]
        request = request_bytes("GET", f"{target.prefix}/idle")
        fds = server.open_fds()
        # A few streams first, so that one-time costs (the proxy's client, lazy imports) are paid
        # before the baseline is read.
        await self.hold_idle(target, request, 5, server, fds)
        before = server.rss_kib()
        after = await self.hold_idle(target, request, streams, server, fds)
        return MemorySample(streams=streams, rss_before_kib=before, rss_after_kib=after)

    async def hold_idle(
        self, target: Target, request: bytes, count: int, server: Server, fds: int
    ) -> int:
        """Open ``count`` streams, wait for each one's first event, read RSS, close them."""
        opened = await asyncio.gather(
            *(open_stream(self.port(target), request, sse=target.sse) for _ in range(count))
        )
        try:
            await asyncio.wait_for(asyncio.gather(*(p.first_event for p in opened)), 30)
            rss = server.rss_kib()
        finally:
            for protocol in opened:
                protocol.close()
        await _until(lambda: server.open_fds() <= fds, f"{target.name} to close its streams")
        return rss

    # d. Time to first event ------------------------------------------------------------------

    async def first_event_ms(self, target: Target) -> float:
        request = _generate_request(target.prefix, tokens_per_second=0, num_tokens=3)
        result = await self.stream(target, request, timeout=10)
        assert result.first_event is not None
        return (result.first_event - result.started) * 1000

    # The run --------------------------------------------------------------------------------

    async def run(self, progress: Callable[[str], None]) -> Results:
        settings = self.settings
        results = Results()
        begun, other = time.perf_counter(), self.foreign_cpu()

        progress(f"memory: {settings.idle_streams} idle streams per configuration")
        memory = {t.name: await self.idle_memory(t, settings.idle_streams) for t in TARGETS}
        results.memory = memory

        progress(f"time to first event: {settings.ttfe_requests} requests per configuration")
        for target in TARGETS:  # warm-up: the sidecar creates its client on first use
            await self.first_event_ms(target)
        ttfe: dict[str, list[float]] = {t.name: [] for t in TARGETS}
        for round_ in range(settings.ttfe_requests):
            for target in _rotated(TARGETS, round_):
                ttfe[target.name].append(await self.first_event_ms(target))
        results.ttfe_ms = ttfe

        progress(f"throughput: {settings.events} events, {settings.throughput_rounds} rounds")
        for target in THROUGHPUT_TARGETS:
            await self.throughput(target, 1000, verify=True)
        throughput: dict[str, list[ThroughputSample]] = {t.name: [] for t in THROUGHPUT_TARGETS}
        for round_ in range(settings.throughput_rounds):
            for target in _rotated(THROUGHPUT_TARGETS, round_):
                sample = await self.throughput(target, settings.events, verify=round_ == 0)
                throughput[target.name].append(sample)
        results.throughput = throughput

        paced: dict[int, dict[str, list[PacedSample]]] = {}
        for streams in settings.paced_streams:
            paced[streams] = {t.name: [] for t in TARGETS}
        for round_ in range(settings.paced_rounds):
            for streams in settings.paced_streams:
                progress(
                    f"paced: {streams} streams x {settings.paced_seconds:g} s at {PACE}/s, "
                    f"round {round_ + 1} of {settings.paced_rounds}"
                )
                for target in _rotated(TARGETS, round_):
                    paced[streams][target.name].append(await self.paced(target, streams))
        results.paced = paced
        results.seconds = time.perf_counter() - begun
        results.other_seconds = self.foreign_cpu() - other
        return results


def _cpu_busy_seconds(cpu: int) -> float:
    """Time one CPU has not been idle since boot (user, nice, system, irq, softirq, steal)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / TICKS
    raise RuntimeError(f"cpu{cpu} is not in /proc/stat")


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _verify_body(target: Target, body: bytes, events: int) -> None:
    """Parse a kept body exactly (as a browser would) and check it is what was sent."""
    if not target.sse:
        lines = body.split(b"\n")
        if len(lines) != events + 1 or lines[-1] or lines[-2] + b"\n" != DONE_LINE:
            raise RuntimeError(f"{target.name}: the NDJSON body is not the {events} lines sent")
        return
    parsed = SSEParser().feed(body)
    if len(parsed) != events:
        raise RuntimeError(f"{target.name}: a browser would see {len(parsed)} of {events} events")
    last = parsed[-1].data
    if target is MW_OLLAMA or target is SIDECAR:
        if json.loads(last).get("finished") is not True:
            raise RuntimeError(f"{target.name}: the stream did not end with finished: {last}")
    elif last.encode() + b"\n" != DONE_LINE:
        raise RuntimeError(f"{target.name}: the last event is not the done chunk: {last}")


# ---------------------------------------------------------------------------------------------
# Report


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _load(cpu_seconds: float, wall_seconds: float) -> float:
    """A share of one CPU, or NaN when the wall time is too short for the CPU clock."""
    return cpu_seconds / wall_seconds if wall_seconds >= 0.5 else float("nan")


def _percent(fraction: float) -> str:
    # NaN: not measured. Small negative values are clock-tick jitter.
    return "-" if fraction != fraction else f"{max(0.0, fraction):.0%}"


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference else "-"


def machine_facts(pinned: bool) -> dict[str, Any]:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    packages = ("sse-bridge", "uvicorn", "uvloop", "httptools", "httpx", "starlette", "anyio")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "pinning": (
            f"bridge processes on CPU {BRIDGE_CPU}; upstream and client on CPU {CLIENT_CPU}"
            if pinned
            else "none"
        ),
        "versions": {name: version(name) for name in packages},
    }


def summarize(results: Results, settings: Settings) -> dict[str, Any]:
    """Medians and ratios from the raw samples."""
    summary: dict[str, Any] = {}

    throughput: dict[str, dict[str, float]] = {}
    for name, samples in results.throughput.items():
        rates = [s.events_per_second for s in samples]
        throughput[name] = {
            "events_per_second": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "events_per_chunk": statistics.median(s.events_per_chunk for s in samples),
            "events_per_read": statistics.median(s.events_per_read for s in samples),
            # Summed over the rounds: one fast round is too short for 10 ms CPU clock ticks.
            "other_load": _load(
                sum(s.other_seconds for s in samples), sum(s.seconds for s in samples)
            ),
            "bridge_cpu_us_per_event": statistics.median(
                s.bridge_cpu_us_per_event for s in samples
            ),
        }
    direct = throughput[DIRECT.name]["events_per_second"]
    naive = throughput[NAIVE.name]["events_per_second"]
    for row in throughput.values():
        row["vs_direct"] = row["events_per_second"] / direct
        row["vs_naive"] = row["events_per_second"] / naive
    summary["throughput"] = throughput

    paced: dict[str, dict[str, dict[str, float]]] = {}
    for streams, by_target in results.paced.items():
        paced[str(streams)] = {}
        for name, rounds in by_target.items():
            gaps = [gap for s in rounds for gap in s.gaps_ms]
            paced[str(streams)][name] = {
                "delivered": sum(s.delivered for s in rounds),
                "expected": sum(s.expected for s in rounds),
                "bridge_cpu_us_per_event": statistics.median(
                    s.bridge_cpu_us_per_event for s in rounds
                ),
                "upstream_cpu_us_per_event": statistics.median(
                    s.upstream_cpu_us_per_event for s in rounds
                ),
                "bridge_busy": max(s.bridge_busy for s in rounds),
                "other_load_max": max(s.other_load for s in rounds),
                "gap_p50_ms": _percentile(gaps, 0.5),
                "gap_p99_ms": _percentile(gaps, 0.99),
                "gap_max_ms": max(gaps, default=float("nan")),
                "coalesced": sum(s.coalesced_gaps for s in rounds) / max(1, len(gaps)),
                "span_p50": _percentile([x for s in rounds for x in s.spans], 0.5),
                "span_max": max(x for s in rounds for x in s.spans),
            }
    summary["paced"] = paced

    memory: dict[str, dict[str, float]] = {}
    for name, sample in results.memory.items():
        memory[name] = {
            "streams": sample.streams,
            "rss_before_kib": sample.rss_before_kib,
            "rss_after_kib": sample.rss_after_kib,
            "kib_per_stream": sample.kib_per_stream,
        }
    summary["memory"] = memory

    ttfe: dict[str, dict[str, float]] = {}
    for name, values in results.ttfe_ms.items():
        ttfe[name] = {"p50_ms": _percentile(values, 0.5), "p90_ms": _percentile(values, 0.9)}
    for row in ttfe.values():
        row["added_p50_ms"] = row["p50_ms"] - ttfe[DIRECT.name]["p50_ms"]
    summary["ttfe"] = ttfe
    summary["other_load_whole_run"] = _load(results.other_seconds, results.seconds)
    summary["ratios"] = _ratios(throughput, paced, memory)
    summary["settings"] = asdict(settings)
    return summary


def _ratios(
    throughput: dict[str, dict[str, float]],
    paced: dict[str, dict[str, dict[str, float]]],
    memory: dict[str, dict[str, float]],
) -> dict[str, float]:
    def rate(target: Target) -> float:
        return throughput[target.name]["events_per_second"]

    def per_stream(target: Target) -> float:
        return memory[target.name]["kib_per_stream"]

    ratios = {
        "throughput sidecar / naive": rate(SIDECAR) / rate(NAIVE),
        "throughput sidecar / direct": rate(SIDECAR) / rate(DIRECT),
        "throughput naive / direct": rate(NAIVE) / rate(DIRECT),
        "throughput middleware raw / same app without it": rate(MW_RAW) / rate(PLAIN),
        "throughput middleware ollama / same app without it": rate(MW_OLLAMA) / rate(PLAIN),
    }
    for streams, by_target in paced.items():
        cpu = {name: row["bridge_cpu_us_per_event"] for name, row in by_target.items()}
        ratios[f"paced CPU per event sidecar / naive, {streams} streams"] = (
            cpu[SIDECAR.name] / cpu[NAIVE.name]
        )
    ratios["idle memory per stream sidecar / naive"] = per_stream(SIDECAR) / per_stream(NAIVE)
    ratios["idle memory per stream sidecar / uvicorn alone"] = per_stream(SIDECAR) / per_stream(
        DIRECT
    )
    ratios["idle memory per stream naive / uvicorn alone"] = per_stream(NAIVE) / per_stream(DIRECT)
    return ratios


def report(summary: dict[str, Any], facts: dict[str, Any]) -> str:
    settings = summary["settings"]
    out = [
        "Machine: {cpus} CPUs ({cpu_model}), Linux {kernel}, Python {python}, {date}".format(
            **facts
        ),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items()),
        f"Pinning: {facts['pinning']}; load average at start {facts['load_average_at_start']}",
        "Other load on the bridge CPU (not ours) over the whole run: "
        + _percent(summary["other_load_whole_run"]),
        "",
        f"a. Throughput, one stream of {settings['events']} events "
        f"(median of {settings['throughput_rounds']} interleaved rounds)",
    ]
    rows = []
    for name, row in summary["throughput"].items():
        rows.append(
            [
                name,
                f"{row['events_per_second']:,.0f}",
                f"{row['min']:,.0f}-{row['max']:,.0f}",
                f"{row['vs_direct']:.3f}",
                f"{row['vs_naive']:.2f}",
                f"{row['events_per_chunk']:.1f}",
                f"{row['events_per_read']:.1f}",
                f"{row['bridge_cpu_us_per_event']:.1f}",
                _percent(row["other_load"]),
            ]
        )
    headers = [
        "config",
        "events/s",
        "range",
        "x direct",
        "x naive",
        "ev/chunk",
        "ev/read",
        "CPU us/ev",
        "other",
    ]
    out += [_table(headers, rows), ""]

    out.append(
        f"b. Paced load: {PACE} events/s per stream for {settings['paced_seconds']:g} s "
        f"({settings['paced_rounds']} round(s): CPU is the median, busy the highest, gaps pooled)"
    )
    rows = []
    for streams, by_target in summary["paced"].items():
        for name, row in by_target.items():
            bridge = "-" if name == DIRECT.name else f"{row['bridge_cpu_us_per_event']:.0f}"
            busy = "-" if name == DIRECT.name else f"{row['bridge_busy']:.0%}"
            rows.append(
                [
                    f"{streams} x {name}",
                    f"{row['delivered']}/{row['expected']}",
                    bridge,
                    busy,
                    f"{row['upstream_cpu_us_per_event']:.0f}",
                    f"{row['gap_p50_ms']:.1f}",
                    f"{row['gap_p99_ms']:.1f}",
                    f"{row['gap_max_ms']:.1f}",
                    f"{row['coalesced']:.3f}",
                    f"{row['span_p50']:.3f}",
                    f"{row['span_max']:.3f}",
                    _percent(row["other_load_max"]),
                ]
            )
    headers = [
        "streams x config",
        "events",
        "bridge us/ev",
        "busy",
        "upstream us/ev",
        "gap p50 ms",
        "p99",
        "max",
        "coalesced",
        "span p50",
        "span max",
        "other max",
    ]
    out += [_table(headers, rows), ""]

    memory = summary["memory"]
    alone = memory[DIRECT.name]["kib_per_stream"]
    out.append(f"c. Memory per idle open stream ({settings['idle_streams']} streams, VmRSS)")
    rows = [
        [
            name,
            f"{row['rss_before_kib'] / 1024:.1f}",
            f"{row['rss_after_kib'] / 1024:.1f}",
            f"{row['kib_per_stream']:.1f}",
            _ratio(row["kib_per_stream"], alone),
        ]
        for name, row in memory.items()
    ]
    headers = ["process", "RSS before MiB", "after MiB", "KiB/stream", "x uvicorn alone"]
    out += [_table(headers, rows), ""]

    out.append(
        f"d. Time to first event, fresh connection ({settings['ttfe_requests']} requests each)"
    )
    rows = [
        [name, f"{row['p50_ms']:.2f}", f"{row['p90_ms']:.2f}", f"{row['added_p50_ms']:+.2f}"]
        for name, row in summary["ttfe"].items()
    ]
    out += [_table(["config", "p50 ms", "p90 ms", "added p50 ms"], rows), ""]

    out.append("Ratios")
    width = max(map(len, summary["ratios"]))
    out += [f"  {name.ljust(width)}  {value:.3f}" for name, value in summary["ratios"].items()]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Main


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl+C, so that the servers are stopped either way."""

    def handler(signum: int, frame: FrameType | None) -> None:
        # As SIGINT, it reaches asyncio's runner, which cancels the run cleanly; raising here
        # instead could surface inside a transport callback.
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller run, under a minute")
    parser.add_argument(
        "--json", metavar="FILE", help="also write the results as JSON ('-': stdout)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--paced-streams",
        metavar="N,N,...",
        type=_stream_counts,
        help="concurrent streams for the paced test (default: 50,200,400; with --quick 20,100)",
    )
    parser.add_argument(
        "--profile-dir",
        metavar="DIR",
        type=Path,
        help="run each bridge under cProfile and write ROLE.prof here (skews every figure)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.paced_streams:
        settings = dataclasses.replace(settings, paced_streams=args.paced_streams)
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {CLIENT_CPU})
    facts = machine_facts(pin)
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - begun:5.1f} s] {message}", file=sys.stderr, flush=True)

    begun = time.monotonic()
    fleet = Fleet(pin=pin, profile_dir=args.profile_dir)
    try:
        with _terminate_as_interrupt():
            progress("starting servers")
            fleet.start()
            results = uvloop.run(Bench(fleet, settings).run(progress))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        fleet.stop()
    progress("done")
    summary = summarize(results, settings)
    print(report(summary, facts))
    if args.json:
        document = {"facts": facts, "summary": summary, "raw": _raw(results)}
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


def _stream_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(item) for item in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 50,200: {text!r}")
    return counts


def _raw(results: Results) -> dict[str, Any]:
    """The samples as JSON (gap lists left out: they are large)."""

    def plain(value: Any) -> Any:
        if isinstance(value, PacedSample):
            return {k: v for k, v in asdict(value).items() if k not in ("gaps_ms", "spans")}
        if isinstance(value, ThroughputSample | MemorySample):
            return asdict(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(results, f.name)) for f in dataclasses.fields(results)}


if __name__ == "__main__":
    sys.exit(main())
