"""Redis faults under live resumable streams, counted: what clients got, what resumes got.

Run from the repository root::

    .venv/bin/python benchmarks/redis_faults.py                 # all three faults
    .venv/bin/python benchmarks/redis_faults.py --only kill,empty

``sse-bridge serve --resume redis://... --event-ids --dialect ollama`` in front of the fake, and
a real ``redis-server`` this script starts. 20 streams of 60 tokens at 20 tokens/s run; one
second in, Redis meets one fault:

- ``kill``: ``kill -9``, then started again on its port with its append-only file (fsync on
  every write), as a Redis with persistence restarts;
- ``pause``: ``SIGSTOP`` for 10 s, then ``SIGCONT``;
- ``empty``: stopped without saving, then started again empty.

The live clients read on to the end. Once every stream has ended and the bridge has had time to
write what it held, each stream is resumed from its start (``GET /streams/<id>``), on the same
bridge. Printed per fault: live clients with every token and the final event; resumes that got
every token and the final event; resumes refused, and with which status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.stack import fake_ollama, free_port, running
from sse_bridge.testing import SSEParser

STREAMS, TOKENS, PACE = 20, 60, 20


class Redis:
    """One redis-server on a fixed port, started again after each fault."""

    def __init__(self, workdir: str) -> None:
        self.binary = shutil.which("redis-server") or "redis-server"
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, persist: bool) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persist else []
        self.process = subprocess.Popen(
            [
                *(self.binary, "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--dir", self.workdir, *persistence),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.command("PING") != b"+PONG\r\n":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def command(self, *words: str) -> bytes:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), 1) as sock,
        ):
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(65536)
        return b""

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def wait(self) -> None:
        assert self.process is not None
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


async def live(client: httpx.AsyncClient, url: str, n: int) -> tuple[str, list[dict[str, Any]]]:
    body = {"model": "llama3.2", "prompt": f"f{n}", "fake": {"num_tokens": TOKENS}}
    events: list[dict[str, Any]] = []
    parser = SSEParser()
    async with client.stream(
        "POST", f"{url}/api/generate", json=body, headers={"accept": "text/event-stream"}
    ) as response:
        stream_id = response.headers["x-stream-id"]
        async for chunk in response.aiter_raw():
            events += [json.loads(e.data) for e in parser.feed(chunk)]
    return stream_id, events


async def resume(client: httpx.AsyncClient, url: str, stream_id: str) -> tuple[int, list[Any]]:
    events: list[dict[str, Any]] = []
    parser = SSEParser()
    async with client.stream(
        "GET", f"{url}/streams/{stream_id}", headers={"accept": "text/event-stream"}
    ) as response:
        if response.status_code != 200:
            return response.status_code, []
        async for chunk in response.aiter_raw():
            events += [json.loads(e.data) for e in parser.feed(chunk)]
    return 200, events


def whole(events: list[dict[str, Any]]) -> bool:
    return (
        sum("token" in e for e in events) == TOKENS
        and bool(events)
        and events[-1].get("done_reason") == "stop"
    )


def fault(redis: Redis, kind: str) -> None:
    if kind == "kill":
        redis.signal(signal.SIGKILL)
        redis.wait()
        redis.start(persist=True)
    elif kind == "pause":
        redis.signal(signal.SIGSTOP)
        time.sleep(10)
        redis.signal(signal.SIGCONT)
    else:
        redis.command("SHUTDOWN", "NOSAVE")
        redis.wait()
        redis.start(persist=False)


@contextlib.contextmanager
def stack(kind: str) -> Iterator[tuple[str, Redis]]:
    with (
        tempfile.TemporaryDirectory(prefix="sse-bridge-faults-") as workdir,
        fake_ollama("--tokens-per-second", str(PACE)) as upstream,
    ):
        redis = Redis(workdir)
        redis.start(persist=kind == "kill")
        try:
            with running(
                *("serve", "--upstream", upstream, "--dialect", "ollama", "--event-ids"),
                *("--resume", redis.url, "--log-level", "warning"),
            ) as (url, _):
                yield url, redis
        finally:
            redis.stop()


async def scenario(url: str, redis: Redis, kind: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as client:
        streams = [asyncio.create_task(live(client, url, n)) for n in range(STREAMS)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(fault, redis, kind)
        done = await asyncio.gather(*streams)
        # The bridge's writer sends what it held once Redis answers again (at its heartbeat).
        await asyncio.sleep(3.0)
        resumed = [await resume(client, url, stream_id) for stream_id, _ in done]
    statuses = Counter(status for status, _ in resumed if status != 200)
    partial = sum(1 for status, events in resumed if status == 200 and not whole(events))
    return {
        "fault": kind,
        "live_whole": f"{sum(whole(events) for _, events in done)}/{STREAMS}",
        "resumed_whole": f"{sum(whole(events) for _, events in resumed)}/{STREAMS}",
        "resumed_partial": partial,
        "resume_refused": dict(statuses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="kill,pause,empty")
    args = parser.parse_args()
    for kind in args.only.split(","):
        with stack(kind) as (url, redis):
            result = asyncio.run(scenario(url, redis, kind))
        print(
            " ".join(
                f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in result.items()
            )
        )


if __name__ == "__main__":
    main()
