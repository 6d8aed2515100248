"""SIGTERM under load: ``sse-bridge serve --grace 5`` with 300 open streams.

Run from the repository root::

    .venv/bin/python benchmarks/bench_sigterm.py                 # --resume off
    .venv/bin/python benchmarks/bench_sigterm.py --resume redis  # a redis-server it starts
    .venv/bin/python benchmarks/bench_sigterm.py --streams 30 --grace 2   # the quick form

Half the streams are short (they end within the grace), half are long. Once every stream has
its first event the bridge gets SIGTERM. Printed: how many short streams arrived whole (every
token of the fake's answer, in order, and its final event), how many long ones ended with the
dialect's shutdown event (``done_reason: "shutdown"`` for ollama), the time from SIGTERM to the
process's exit; with ``--resume redis``, how many long streams a second bridge on the same
Redis resumes from the start with every token their client got and the shutdown event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _resume_probe import RedisServer

from loadtests.stack import fake_ollama, running
from sse_bridge.testing import SSEParser

PACE = 10  # tokens per second of every stream
SHORT, LONG = 15, 2000  # tokens: 1.5 s, and 200 s


@dataclass
class Stream:
    tokens: int
    events: list[dict[str, Any]] = field(default_factory=list)
    stream_id: str | None = None
    first: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


async def follow(client: httpx.AsyncClient, url: str, stream: Stream, n: int) -> None:
    body = {"model": "llama3.2", "prompt": f"p{n}", "fake": {"num_tokens": stream.tokens}}
    parser = SSEParser()
    try:
        async with client.stream(
            "POST", f"{url}/api/generate", json=body, headers={"accept": "text/event-stream"}
        ) as response:
            stream.stream_id = response.headers.get("x-stream-id")
            async for chunk in response.aiter_raw():
                for event in parser.feed(chunk):
                    stream.events.append(json.loads(event.data))
                    stream.first.set()
    except httpx.HTTPError as exc:
        stream.error = repr(exc)
    finally:
        stream.first.set()


def tokens(events: list[dict[str, Any]]) -> list[str]:
    return [event["token"] for event in events if "token" in event]


async def reference(url: str, count: int) -> list[str]:
    """The fake's answer of ``count`` tokens, read whole before any shutdown."""
    stream = Stream(count)
    async with httpx.AsyncClient(timeout=60) as client:
        await follow(client, url, stream, -1)
    return tokens(stream.events)


async def load(
    url: str, count: int
) -> tuple[list[Stream], list[asyncio.Task[None]], httpx.AsyncClient]:
    streams = [Stream(SHORT if n % 2 else LONG) for n in range(count)]
    limits = httpx.Limits(max_connections=count + 10)
    client = httpx.AsyncClient(timeout=httpx.Timeout(60, read=None), limits=limits)
    tasks = [asyncio.create_task(follow(client, url, s, n)) for n, s in enumerate(streams)]
    await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in streams)), 60)
    return streams, tasks, client


async def resumed(url: str, stream_id: str) -> list[dict[str, Any]]:
    parser = SSEParser()
    events: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "GET", f"{url}/streams/{stream_id}", headers={"accept": "text/event-stream"}
        ) as response,
    ):
        if response.status_code != 200:
            return [{"status": response.status_code}]
        async for chunk in response.aiter_raw():
            events += [json.loads(e.data) for e in parser.feed(chunk)]
    return events


def run(count: int, grace: float, resume: str) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as workdir,
        fake_ollama("--tokens-per-second", str(PACE)) as upstream,
    ):
        redis = None
        if resume == "redis":
            redis = RedisServer(shutil.which("redis-server") or "redis-server", workdir, None)
        store = "off" if redis is None else redis.url
        try:
            return measure(upstream, count, grace, store)
        finally:
            if redis is not None:
                redis.stop()


def measure(upstream: str, count: int, grace: float, store: str) -> dict[str, Any]:
    args = ["serve", "--upstream", upstream, "--dialect", "ollama", "--grace", str(grace)]
    args += ["--resume", store, "--max-streams", str(count + 50), "--log-level", "warning"]
    with running(*args) as (url, process):
        expected_short = asyncio.run(reference(url, SHORT))

        async def drive() -> tuple[list[Stream], float]:
            streams, tasks, client = await load(url, count)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*tasks), grace + 30)
            await client.aclose()
            return streams, sent

        streams, sent = asyncio.run(drive())
        process.wait(timeout=grace + 30)
        exited = time.monotonic() - sent
        stderr = process.communicate()[1]
    short = [s for s in streams if s.tokens == SHORT]
    long = [s for s in streams if s.tokens == LONG]
    whole = sum(
        1
        for s in short
        if tokens(s.events) == expected_short and s.events[-1].get("done_reason") == "stop"
    )
    shut = sum(1 for s in long if s.events and s.events[-1].get("done_reason") == "shutdown")
    figures: dict[str, Any] = {
        "streams": count,
        "grace_s": grace,
        "short_whole": f"{whole}/{len(short)}",
        "long_ended_with_shutdown_event": f"{shut}/{len(long)}",
        "exit_after_sigterm_s": round(exited, 2),
        "client_errors": sum(1 for s in streams if s.error),
        "tracebacks": stderr.count("Traceback"),
    }
    if store != "off":
        with running(*args[:-4], "--log-level", "warning") as (url2, _):

            async def resume_all() -> int:
                good = 0
                for s in long:
                    assert s.stream_id is not None
                    events = await resumed(url2, s.stream_id)
                    got = tokens(s.events)
                    if (
                        tokens(events)[: len(got)] == got
                        and events[-1].get("done_reason") == "shutdown"
                    ):
                        good += 1
                return good

            figures["long_resumed_elsewhere"] = f"{asyncio.run(resume_all())}/{len(long)}"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--resume", choices=("off", "redis"), default="off")
    args = parser.parse_args()
    figures = run(args.streams, args.grace, args.resume)
    print(" ".join(f"{key}={value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
