"""A bounded soak of ``sse-bridge serve`` against the fake Ollama: ``scripts/soak --minutes N``.

Mixed traffic for N minutes, with resume in memory or in a redis-server this script starts and
stops: paced streams read to their end; about 10 % leave mid-stream and resume with
``Last-Event-ID``; about 5 % are stopped with ``DELETE``; about 10 % meet an upstream fault from
the fake's menu (an error line, a dropped connection, bad lines, a silence). Every 5 s it records
the bridge's RSS and open fds (from ``/proc``) and, through the bridge's SIGUSR1 line, its asyncio
tasks, open streams and the store's size; it writes them as JSON and as an SVG picture.

It fails (exit status 1) when a stream read to its end or resumed has other tokens than the
fake's answer (lost, repeated or out of order); when a stopped or faulty stream's tokens are not
a prefix of it; when fds or tasks are not back at their baseline once traffic stops; or when RSS
grows, after the warm-up, faster than ``--rss-slope`` MiB per minute (docs/reliability.md says
why 8). Its phases: warm-up, a pause at idle for the baseline, the traffic, a pause at idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.soak_svg import svg
from loadtests.stack import BIN, free_port, wait_http
from sse_bridge.testing import SSEParser

SAMPLE_EVERY = 5.0
WORKERS = 12
PACE = 40  # tokens per second
RESUME_GRACE, RESUME_TTL = 2.0, 10.0
# What an idle bridge may hold beyond its baseline: the upstream pool's idle connections
# expire after 4 s; waited for below.
SETTLE_SECONDS = 45.0
FLOW_TIMEOUT = 60.0
# The flow a reader belongs to (its worker's number), for the report of a hang.
FLOW: contextvars.ContextVar[int] = contextvars.ContextVar("flow", default=-1)
STATS = re.compile(r"sse_bridge: stats (.*)$")


@dataclass
class Tally:
    kinds: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@dataclass
class Bridge:
    process: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str]

    def stats(self, timeout: float = 5.0) -> dict[str, int]:
        """The bridge's SIGUSR1 line, parsed."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.lines.get_nowait()
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            found = STATS.search(line)
            if found:
                return {k: int(v) for k, v in (item.split("=") for item in found[1].split())}
        raise RuntimeError("the bridge did not answer SIGUSR1 with its stats line")


@contextlib.contextmanager
def serve(upstream: str, resume: str) -> Iterator[Bridge]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN),
            *("serve", "--upstream", upstream, "--port", str(port), "--dialect", "ollama"),
            *("--resume", resume, "--event-ids", "--keepalive", "0.5"),
            *("--resume-grace", str(RESUME_GRACE), "--resume-ttl", str(RESUME_TTL)),
            *("--log-level", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
            log.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", process)
        yield Bridge(process, url, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        tracebacks = sum(1 for line in log if line.startswith("Traceback"))
        if tracebacks:
            print(f"soak: the bridge logged {tracebacks} traceback(s):", file=sys.stderr)
            print("".join(log[-80:]), file=sys.stderr)


@contextlib.contextmanager
def fake(workdir: Path) -> Iterator[str]:
    """The fake Ollama, its log in a file: through a pipe nobody reads, its warnings (one per
    fault) fill the pipe after a minute or two, and then its event loop blocks on the write."""
    port = free_port()
    with (workdir / "soak-fake.log").open("w") as log:
        process = subprocess.Popen(
            [
                *(str(BIN), "fake-ollama", "--port", str(port)),
                *("--tokens-per-second", str(PACE), "--log-level", "warning"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/", process)  # type: ignore[arg-type]
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("soak: --store redis needs redis-server (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sse-bridge-soak-") as workdir:
        process = subprocess.Popen(
            [
                *(binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""),
                *("--appendonly", "no", "--dir", workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while redis_command(port, "PING") != b"+PONG\r\n":
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("soak: redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def redis_command(port: int, command: str) -> bytes:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as sock:
        sock.sendall(command.encode() + b"\r\n")
        return sock.recv(1024)
    return b""


def process_figures(pid: int) -> dict[str, int]:
    statm = Path(f"/proc/{pid}/statm").read_text().split()
    return {
        "rss_kib": int(statm[1]) * os.sysconf("SC_PAGE_SIZE") // 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


# -- traffic --------------------------------------------------------------------------------


class Traffic:
    def __init__(self, url: str, answers: dict[int, list[str]], tally: Tally) -> None:
        self.url = url
        self.answers = answers
        self.tally = tally
        self.running = True
        # What each worker's flow is reading: the report of a hang.
        self.current: dict[int, list[EventReader]] = {}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(30), limits=httpx.Limits(max_connections=4 * WORKERS)
        )

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running:
            roll = rng.random()
            count = rng.choice(list(self.answers))
            if roll < 0.10:
                flow = self.leave_and_resume(count, rng)
            elif roll < 0.15:
                flow = self.stop(count, rng)
            elif roll < 0.25:
                flow = self.fault(count, rng)
            else:
                flow = self.whole(count)
            FLOW.set(seed)
            name = getattr(flow, "__name__", "flow")
            try:
                # A stream of at most 40 tokens at 40/s: a minute is a hang, reported as one.
                await asyncio.wait_for(flow, FLOW_TIMEOUT)
            except (httpx.HTTPError, AssertionError, KeyError, ValueError) as exc:
                self.fail(f"{name}: {type(exc).__name__}: {exc}")
            except asyncio.TimeoutError:
                hung = [r.describe() for r in self.current.pop(seed, [])]
                self.fail(f"{name} hung for {FLOW_TIMEOUT:g} s: {hung}")
            self.current.pop(seed, None)

    def fail(self, message: str) -> None:
        self.tally.failures.append(message)
        self.tally.kinds["failed"] += 1

    def body(self, count: int, fake: dict[str, Any] | None = None) -> dict[str, Any]:
        options = {"num_tokens": count, "tokens_per_second": PACE, **(fake or {})}
        return {"model": "llama3.2", "prompt": "soak", "fake": options}

    async def events(
        self, method: str, path: str, *, json_body: Any = None, headers: Any = None
    ) -> Any:
        return self.client.stream(
            method,
            self.url + path,
            json=json_body,
            headers={"accept": "text/event-stream", **(headers or {})},
        )

    async def read(self, response: httpx.Response, until: int | None = None) -> list[Any]:
        """Events as (id, data); all of them, or until ``until`` token events (the rest of
        the response can be read by a later call)."""
        reader: EventReader = getattr(response, "_soak_reader", None) or EventReader(response)
        response._soak_reader = reader  # type: ignore[attr-defined]
        readers = self.current.setdefault(FLOW.get(), [])
        if reader not in readers:
            readers.append(reader)
        return await reader.read(until)

    async def whole(self, count: int) -> None:
        async with await self.events("POST", "/api/generate", json_body=self.body(count)) as r:
            events = await self.read(r)
        self.expect(tokens(events) == self.answers[count], "a whole stream", events, count)
        self.expect(events[-1][1].get("done_reason") == "stop", "its final event", events, count)
        self.tally.kinds["whole"] += 1

    async def leave_and_resume(self, count: int, rng: random.Random) -> None:
        until = rng.randint(1, count - 1)
        async with await self.events("POST", "/api/generate", json_body=self.body(count)) as r:
            stream_id = r.headers["x-stream-id"]
            first = await self.read(r, until)
        await asyncio.sleep(rng.uniform(0, RESUME_GRACE / 2))
        last = first[-1][0]
        headers = {"last-event-id": last}
        async with await self.events("GET", f"/streams/{stream_id}", headers=headers) as r:
            assert r.status_code == 200, f"resume answered {r.status_code}"
            rest = await self.read(r)
        events = first + rest
        self.expect(tokens(events) == self.answers[count], "a resumed stream", events, count)
        self.tally.kinds["resumed"] += 1

    async def stop(self, count: int, rng: random.Random) -> None:
        until = rng.randint(1, count - 1)
        async with await self.events("POST", "/api/generate", json_body=self.body(count)) as r:
            stream_id = r.headers["x-stream-id"]
            events = await self.read(r, until)
            stopped = await self.client.delete(f"{self.url}/streams/{stream_id}")
            assert stopped.status_code in (202, 204, 404), f"DELETE answered {stopped.status_code}"
            events += await self.read(r)
        got = tokens(events)
        self.expect(got == self.answers[count][: len(got)], "a stopped stream", events, count)
        self.tally.kinds["stopped"] += 1

    async def fault(self, count: int, rng: random.Random) -> None:
        menu: list[tuple[str, dict[str, Any], bool]] = [
            ("error line", {"fail_after": rng.randint(1, count - 1), "failure": "error"}, False),
            ("dropped", {"fail_after": rng.randint(1, count - 1), "failure": "close"}, False),
            ("bad lines", {"malformed_every": 5}, True),
            ("silence", {"stall_after": 2, "stall_seconds": 1.0}, True),
        ]
        name, fake, whole = rng.choice(menu)
        body = self.body(count, fake)
        async with await self.events("POST", "/api/generate", json_body=body) as r:
            events = await self.read(r)
        got = tokens(events)
        expected = self.answers[count] if whole else self.answers[count][: len(got)]
        self.expect(got == expected, f"a stream with an upstream fault ({name})", events, count)
        self.expect(events[-1][1].get("finished") is True, f"its end ({name})", events, count)
        self.tally.kinds[f"fault: {name}"] += 1

    def expect(self, ok: bool, what: str, events: list[Any], count: int) -> None:
        if not ok:
            raise AssertionError(
                f"{what} of {count} tokens got {tokens(events)[:8]}... {events[-2:]}"
            )

    async def run(self, seconds: float, seed: int) -> None:
        self.running = True
        workers = [asyncio.create_task(self.worker(seed + n)) for n in range(WORKERS)]
        await asyncio.sleep(seconds)
        self.running = False
        await asyncio.wait_for(asyncio.gather(*workers), 60)


class EventReader:
    """One response's events, read in as many calls as a flow needs."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks = response.aiter_raw()
        self.parser = SSEParser()
        self.ready: list[Any] = []
        self.seen: list[Any] = []
        self.started = time.monotonic()
        self.done = False

    def describe(self) -> str:
        request = self.response.request
        body = request.content.decode(errors="replace")[:200]
        return (
            f"{request.method} {request.url.path} {body} "
            f"status={self.response.status_code} headers={dict(self.response.headers)} "
            f"events={self.seen[-5:]} ({len(self.seen)} in all)"
        )

    async def read(self, until: int | None) -> list[Any]:
        found: list[Any] = []
        tokens = 0
        while True:
            while self.ready:
                item = self.ready.pop(0)
                found.append(item)
                self.seen.append(item)
                tokens += "token" in item[1]
                if until is not None and tokens >= until:
                    return found
            try:
                chunk = await self.chunks.__anext__()
            except StopAsyncIteration:
                self.done = True
                return found
            self.ready = [(e.id, json.loads(e.data)) for e in self.parser.feed(chunk)]


def tokens(events: list[Any]) -> list[str]:
    return [data["token"] for _, data in events if "token" in data]


async def fake_answers(upstream: str, counts: list[int]) -> dict[int, list[str]]:
    """The fake's answer of each length, read from the fake itself (no bridge between)."""
    answers = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for count in counts:
            body = {"model": "llama3.2", "prompt": "soak", "fake": {"num_tokens": count}}
            response = await client.post(upstream + "/api/generate", json=body)
            chunks = [json.loads(line) for line in response.text.splitlines() if line]
            answers[count] = [c["response"] for c in chunks if c.get("response")]
    return answers


# -- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    bridge: Bridge
    started: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, phase: str) -> dict[str, Any]:
        row: dict[str, Any] = {"t": round(time.monotonic() - self.started, 2), "phase": phase}
        row.update(process_figures(self.bridge.process.pid))
        stats = self.bridge.stats()
        for key in (
            "tasks",
            "streams",
            "store_streams",
            "store_pending_bytes",
            "store_connections",
        ):
            if key in stats:
                row[key] = stats[key]
        self.samples.append(row)
        return row

    async def sampling(self, phase: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.to_thread(self.sample, phase)
            await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, end - time.monotonic())))

    async def traffic(self, traffic: Traffic, phase: str, seconds: float, seed: int) -> None:
        sampler = asyncio.create_task(self.sampling(phase, seconds))
        await traffic.run(seconds, seed)
        await sampler

    async def idle(self, phase: str, *, at_most: float, baseline: dict[str, Any] | None) -> Any:
        """Sample at idle until nothing is open and, given a baseline, fds and tasks are back
        to it (or ``at_most`` seconds); return the last sample."""
        end = time.monotonic() + at_most
        quiet_since = None
        row = None
        while time.monotonic() < end:
            row = await asyncio.to_thread(self.sample, phase)
            if row["streams"] == 0 and quiet_since is None:
                quiet_since = time.monotonic()
            settled = quiet_since is not None and time.monotonic() - quiet_since > 6
            if settled and (baseline is None or back(row, baseline)):
                break
            await asyncio.sleep(1.0)
        return row


def own_fds(row: dict[str, Any]) -> int:
    """The bridge's fds but the Redis client's pooled connections: the pool keeps what it made,
    up to its bound, and may have made one more in the traffic than by the baseline."""
    return int(row["fds"]) - int(row.get("store_connections", 0))


def back(row: dict[str, Any], baseline: dict[str, Any]) -> bool:
    return own_fds(row) <= own_fds(baseline) and row["tasks"] <= baseline["tasks"]


def rss_slope_mib_per_minute(rows: list[dict[str, Any]]) -> float:
    """Least squares over the traffic phase's samples."""
    points = [(r["t"] / 60, r["rss_kib"] / 1024) for r in rows if r["phase"] == "traffic"]
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (r - mean_r) for t, r in points) / var if var else 0.0


async def soak(bridge: Bridge, upstream: str, minutes: float, seed: int) -> dict[str, Any]:
    total = minutes * 60
    warm = max(10.0, 0.15 * total)
    answers = await fake_answers(upstream, [12, 25, 40])
    tally = Tally()
    run = Run(bridge)
    traffic = Traffic(bridge.url, answers, tally)
    try:
        await run.traffic(traffic, "warm-up", warm, seed)
        baseline = await run.idle("baseline", at_most=SETTLE_SECONDS, baseline=None)
        await run.traffic(traffic, "traffic", max(10.0, total - warm), seed + 1000)
        final = await run.idle("after", at_most=SETTLE_SECONDS + RESUME_TTL, baseline=baseline)
    finally:
        await traffic.client.aclose()
    slope = rss_slope_mib_per_minute(run.samples)
    return {
        "streams": dict(tally.kinds),
        "failures": tally.failures[:50],
        "baseline": baseline,
        "final": final,
        "rss_slope_mib_per_minute": round(slope, 3),
        "samples": run.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--store", choices=("memory", "redis"), default="memory")
    parser.add_argument("--out", default="soak", help="writes <out>-<store>.json and .svg")
    parser.add_argument("--rss-slope", type=float, default=8.0, help="MiB per minute at most")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(fake(workdir=Path(args.out).parent))
        resume = "memory" if args.store == "memory" else stack.enter_context(redis_server())
        bridge = stack.enter_context(serve(upstream, resume))
        result = asyncio.run(soak(bridge, upstream, args.minutes, args.seed))
    result["store"] = args.store
    result["minutes"] = args.minutes
    problems = verdict(result, args.rss_slope)
    result["problems"] = problems
    out = Path(f"{args.out}-{args.store}")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".svg").write_text(svg(result))
    served = sum(v for k, v in result["streams"].items() if k != "failed")
    print(
        f"soak store={args.store} minutes={args.minutes:g} streams={served} "
        f"kinds={json.dumps(result['streams'], sort_keys=True)} "
        f"baseline={json.dumps(result['baseline'])} final={json.dumps(result['final'])} "
        f"rss_slope={result['rss_slope_mib_per_minute']} MiB/min "
        f"-> {out.with_suffix('.json')}, {out.with_suffix('.svg')}"
    )
    for problem in problems:
        print(f"soak: FAILED: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


def verdict(result: dict[str, Any], rss_slope: float) -> list[str]:
    problems = [f"a stream failed: {failure}" for failure in result["failures"][:10]]
    baseline, final = result["baseline"], result["final"]
    if not back(final, baseline):
        problems.append(
            f"not back at the baseline after traffic: fds {final['fds']} (was {baseline['fds']}; "
            f"the bridge's own {own_fds(final)}, was {own_fds(baseline)}), "
            f"tasks {final['tasks']} (was {baseline['tasks']})"
        )
    if final["streams"]:
        problems.append(f"{final['streams']} stream(s) still open after traffic")
    if result["rss_slope_mib_per_minute"] > rss_slope:
        problems.append(
            f"RSS grew {result['rss_slope_mib_per_minute']} MiB/min after warm-up "
            f"(bound {rss_slope})"
        )
    if not result["streams"].get("whole"):
        problems.append("no stream was served")
    return problems


if __name__ == "__main__":
    main()
